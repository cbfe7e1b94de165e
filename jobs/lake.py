"""Storage I/O: the Delta tables declared in transforms.schemas, and plain files.

Files go through Hadoop's FileSystem, so the same code reaches a local disk, HDFS or S3.

Every write here is idempotent: MERGE on the table's keys, or replaceWhere on the slice
a run owns. Nothing appends blindly.
"""
from __future__ import annotations

import logging

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from jobs.config import Settings
from transforms.schemas import Table

log = logging.getLogger(__name__)


def hadoop_path(spark: SparkSession, path: str):
    return spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)


def filesystem(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Path) for any location Spark's configuration reaches."""
    hpath = hadoop_path(spark, path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def read_text(spark: SparkSession, path: str) -> str | None:
    """A small text file's content, or None if it does not exist."""
    fs, hpath = filesystem(spark, path)
    if not fs.exists(hpath):
        return None
    stream = fs.open(hpath)
    try:
        return spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, hpath = filesystem(spark, path)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def path_of(settings: Settings, table: Table) -> str:
    return settings.table_path(table.layer, table.name)


def exists(spark: SparkSession, settings: Settings, table: Table) -> bool:
    return DeltaTable.isDeltaTable(spark, path_of(settings, table))


def register(spark: SparkSession, settings: Settings, table: Table) -> None:
    """Make ``<layer>.<name>`` resolvable in Spark SQL for this session."""
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {table.layer}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {table.qualified} USING DELTA LOCATION '{path_of(settings, table)}'")


def ensure(spark: SparkSession, settings: Settings, table: Table) -> DeltaTable:
    """Create the table (schema, partitioning, CHECK constraints) if it is not there yet."""
    path = path_of(settings, table)
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(table.schema)
    if table.partition_by:
        builder = builder.partitionedBy(*table.partition_by)
    for key, value in table.properties.items():
        builder = builder.property(key, value)
    delta = builder.execute()
    properties = delta.detail().select("properties").first()["properties"]
    present = {k.split(".")[-1] for k in properties if k.startswith("delta.constraints.")}
    for name, expr in table.checks.items():
        if name.lower() not in present:
            spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {name} CHECK ({expr})")
    missing = {k: v for k, v in table.properties.items() if properties.get(k) != v}
    if missing:  # a table created by an older release
        pairs = ", ".join(f"'{k}' = '{v}'" for k, v in missing.items())
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({pairs})")
    register(spark, settings, table)
    return delta


def read(spark: SparkSession, settings: Settings, table: Table, as_of_version: int | None = None) -> DataFrame:
    """The table (at ``as_of_version`` if given: a pinned snapshot that later commits cannot change)."""
    if not exists(spark, settings, table):
        raise FileNotFoundError(
            f"table {table.qualified} not found at {path_of(settings, table)}: run the job that writes it first"
        )
    reader = spark.read.format("delta")
    if as_of_version is not None:
        reader = reader.option("versionAsOf", as_of_version)
    return reader.load(path_of(settings, table))


def changes(spark: SparkSession, settings: Settings, table: Table, start: int, end: int) -> DataFrame:
    """Delta's change data feed of versions start..end: changed rows with ``_change_type``.

    Raises AnalysisException when the feed was not enabled for part of that range."""
    return (spark.read.format("delta").option("readChangeFeed", "true")
            .option("startingVersion", start).option("endingVersion", end).load(path_of(settings, table)))


def version(spark: SparkSession, settings: Settings, table: Table) -> int:
    return DeltaTable.forPath(spark, path_of(settings, table)).history(1).first()["version"]


def _last_metrics(delta: DeltaTable) -> tuple[int, dict]:
    row = delta.history(1).first()
    return row["version"], dict(row["operationMetrics"] or {})


def merge_insert(spark: SparkSession, settings: Settings, table: Table, df: DataFrame) -> tuple[int, int]:
    """Insert the rows whose keys are not in the table yet. Returns (version, rows inserted)."""
    delta = ensure(spark, settings, table)
    before, _ = _last_metrics(delta)
    cond = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)
    delta.alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll().execute()
    after, metrics = _last_metrics(delta)
    # A MERGE that inserts nothing commits nothing: the last commit is then an older one.
    return after, int(metrics.get("numTargetRowsInserted", 0)) if after != before else 0


def upsert(spark: SparkSession, settings: Settings, table: Table, df: DataFrame) -> int:
    """Insert new keys and update existing ones."""
    delta = ensure(spark, settings, table)
    cond = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)
    delta.alias("t").merge(df.alias("s"), cond).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    return _last_metrics(delta)[0]


def update_from(spark: SparkSession, settings: Settings, table: Table, df: DataFrame,
                on: list[str], columns: list[str]) -> int:
    """Set ``columns`` of the rows that match ``df`` on ``on`` to df's values (rows that
    already agree are left alone, so the update is idempotent)."""
    cond = " AND ".join(f"t.{k} = s.{k}" for k in on)
    differs = " OR ".join(f"NOT (t.{c} <=> s.{c})" for c in columns)
    delta = DeltaTable.forPath(spark, path_of(settings, table))
    (delta.alias("t").merge(df.alias("s"), cond)
          .whenMatchedUpdate(condition=differs, set={c: f"s.{c}" for c in columns}).execute())
    return _last_metrics(delta)[0]


def delete_where(spark: SparkSession, settings: Settings, table: Table, condition: str) -> int:
    """Delete the rows matching ``condition`` (e.g. to withdraw a bad delivery before a replay)."""
    DeltaTable.forPath(spark, path_of(settings, table)).delete(condition)
    return version(spark, settings, table)


def replace_where(spark: SparkSession, settings: Settings, table: Table, df: DataFrame, condition: str) -> int:
    """Atomically replace the rows matching ``condition`` (the slice a run owns) with ``df``.

    Delta rejects the commit if ``df`` holds a row outside the slice."""
    ensure(spark, settings, table)
    df.write.format("delta").mode("overwrite").option("replaceWhere", condition).save(path_of(settings, table))
    return version(spark, settings, table)


def overwrite(spark: SparkSession, settings: Settings, table: Table, df: DataFrame) -> int:
    """Replace the whole table in one commit (for small derived tables such as ground truth)."""
    ensure(spark, settings, table)
    df.write.format("delta").mode("overwrite").save(path_of(settings, table))
    return version(spark, settings, table)
