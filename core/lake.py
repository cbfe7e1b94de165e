"""Storage I/O: the Delta tables declared in core.tables, and plain files.

Files go through Hadoop's FileSystem, so the same code reaches a local disk, HDFS or S3.

Every write here is idempotent: MERGE on the table's keys, or replaceWhere on the slice
a run owns. Nothing appends blindly. That is also what makes a retry safe: a write that
loses a race with a concurrent writer (Delta's optimistic concurrency raises
ConcurrentAppendException and friends) is run again, up to ``COMMIT_ATTEMPTS`` times, and
then fails with :class:`ConcurrentWriteError` naming the table. A rejected or interrupted
write commits nothing: the table stays at its previous version.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from delta.exceptions import DeltaConcurrentModificationException
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from core.errors import MissingInput
from core.settings import Settings
from core.tables import ALL_TABLES, Table

log = logging.getLogger(__name__)
T = TypeVar("T")

# Tries of one write against concurrent commits, and the pause before the first retry
# (doubled at each further one).
COMMIT_ATTEMPTS = 4
RETRY_PAUSE_S = 0.5
# Delta's conflict classes, by name too: an error can reach Python unconverted (raw py4j).
_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
              "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
              "ProtocolChangedException", "DELTA_CONCURRENT_")


class ConcurrentWriteError(RuntimeError):
    """A write kept losing to concurrent commits on the same table; nothing of it was committed."""


def is_conflict(err: BaseException) -> bool:
    """Whether ``err`` is Delta refusing a commit because another writer committed first."""
    if isinstance(err, DeltaConcurrentModificationException):
        return True
    text = f"{type(err).__name__}: {err}"[:2000]
    return any(name in text for name in _CONFLICTS)


def with_retry(table: "Table", action: str, write: Callable[[], T]) -> T:
    """Run ``write`` (an idempotent Delta write) and run it again when a concurrent commit
    wins the race; after ``COMMIT_ATTEMPTS`` lost races raise :class:`ConcurrentWriteError`."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return write()
        except Exception as err:  # noqa: BLE001 - only conflicts are retried, the rest re-raised
            if not is_conflict(err):
                raise
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            if attempt == COMMIT_ATTEMPTS:
                raise ConcurrentWriteError(
                    f"{table.qualified}: {action} lost to a concurrent writer {attempt} times in a row "
                    f"(last: {first}); nothing of this write was committed, the table is unchanged. "
                    f"Run the job again once the other writer has finished.") from err
            log.warning("%s: %s conflicted with a concurrent commit (%s); retrying (attempt %d of %d)",
                        table.qualified, action, first, attempt + 1, COMMIT_ATTEMPTS)
            time.sleep(RETRY_PAUSE_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


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


@dataclass(frozen=True)
class Registration:
    """What the session's catalog holds under a ``<layer>.<name>``: where, and whether it is an
    external (LOCATION) table, the only kind whose DROP leaves the files alone."""
    location: str
    external: bool


def _qualified_location(spark: SparkSession, path: str) -> str:
    """``path`` as the catalog writes locations (``file:/...``, ``s3a://bucket/...``)."""
    fs, hpath = filesystem(spark, path)
    return str(fs.makeQualified(hpath).toString()).rstrip("/")


def _registrations(spark: SparkSession, layer: str, name: str = "*") -> dict[str, Registration]:
    """The catalog's tables in schema ``layer`` (``name``: one, or every one), by qualified name.

    SHOW TABLE EXTENDED answers from the catalog alone (DESCRIBE would load each Delta table:
    it fails on a table whose files are gone), so this costs no read of the lake."""
    if not spark.catalog.databaseExists(layer):
        return {}
    found = {}
    for row in spark.sql(f"SHOW TABLE EXTENDED IN {layer} LIKE '{name}'").collect():
        if row["isTemporary"]:
            continue
        info = dict(line.split(": ", 1) for line in row["information"].splitlines() if ": " in line)
        if "Location" in info:
            found[f"{layer}.{row['tableName']}"] = Registration(info["Location"].rstrip("/"),
                                                                info.get("Type", "").upper() == "EXTERNAL")
    return found


def _point(spark: SparkSession, table: Table, path: str, current: Registration | None) -> bool:
    """Make ``table.qualified`` name the Delta table at ``path``; returns whether it does."""
    if current is not None and current.location == _qualified_location(spark, path):
        return True
    if current is not None and not current.external:
        # A managed table's DROP deletes its data; it is not one of ours, so it is left alone.
        log.warning("%s is a managed table at %s, not the lake's %s: left as it is; read the lake's "
                    "table with delta.`%s`", table.qualified, current.location, path, path)
        return False
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {table.layer}")
    if current is not None:
        log.info("%s: now the table at %s (was %s)", table.qualified, path, current.location)
        # External: only the catalog entry goes; the other lake's files stay as they are.
        spark.sql(f"DROP TABLE {table.qualified}")
    location = path.replace("\\", "\\\\").replace("'", "\\'")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {table.qualified} USING DELTA LOCATION '{location}'")
    return True


def register(spark: SparkSession, settings: Settings, table: Table) -> None:
    """Make ``<layer>.<name>`` in Spark SQL name this settings' table, re-pointing the name if it
    named another lake's: the lake written or opened last wins, so bare names mean the lake in use.
    Costs a catalog look-up when the name is right already (every write calls it)."""
    # Not spark.catalog.tableExists: it loads the Delta table, and fails when the name still
    # points at a lake whose files are gone (a lake deleted to start afresh).
    current = _registrations(spark, table.layer, table.name).get(table.qualified)
    _point(spark, table, path_of(settings, table), current)


def register_lake(spark: SparkSession, settings: Settings) -> list[str]:
    """Name every table of this settings' lake in the session's catalog; returns the names.

    One CREATE TABLE ... LOCATION per table that exists (Delta reads the table's log for its
    schema, no data file), none for a name that is right already. A name whose table this lake
    lacks is dropped if it names another lake's, so that a query fails rather than read the other
    lake (its files stay)."""
    layers = dict.fromkeys(t.layer for t in ALL_TABLES)
    current: dict[str, Registration] = {}
    for layer in layers:
        current.update(_registrations(spark, layer))
    named = []
    for table in ALL_TABLES:
        path = path_of(settings, table)
        fs, log_dir = filesystem(spark, f"{path}/_delta_log")
        registration = current.get(table.qualified)
        if fs.exists(log_dir):
            try:
                if _point(spark, table, path, registration):
                    named.append(table.qualified)
            except AnalysisException as err:  # a damaged table: the job that reads it says so
                log.warning("%s at %s not registered: %s", table.qualified, path, str(err).splitlines()[0][:300])
        elif registration is not None and registration.external:
            log.info("%s: dropped from the catalog (it named %s; this lake has no such table)",
                     table.qualified, registration.location)
            spark.sql(f"DROP TABLE {table.qualified}")
    return named


def ensure(spark: SparkSession, settings: Settings, table: Table) -> DeltaTable:
    """Create the table (schema, partitioning, CHECK constraints) if it is not there yet."""
    return with_retry(table, "create", lambda: _ensure(spark, settings, table))


def _ensure(spark: SparkSession, settings: Settings, table: Table) -> DeltaTable:
    path = path_of(settings, table)
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(table.schema)
    if table.partition_by:
        builder = builder.partitionedBy(*table.partition_by)
    for key, value in table.properties.items():
        builder = builder.property(key, value)
    delta = builder.execute()
    _add_new_columns(spark, path, table, delta)
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


def _add_new_columns(spark: SparkSession, path: str, table: Table, delta: DeltaTable) -> None:
    """A table written by an older release gains the columns its contract has since added (one
    ALTER TABLE, a new version; its older rows read null there). A contract column that is not
    nullable cannot be added to rows that exist: that is a mistake in the contract."""
    have = set(delta.toDF().columns)
    new = [f for f in table.schema.fields if f.name not in have]
    if not new:
        return
    strict = [f.name for f in new if not f.nullable]
    if strict:
        raise ValueError(f"{table.qualified}: columns {strict} were added to the contract as NOT NULL; a column "
                         f"added after a table exists must be nullable (its older rows have no value)")
    columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in new)
    log.info("%s: adding columns %s (written by an older release)", table.qualified, [f.name for f in new])
    spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")


def _require(spark: SparkSession, settings: Settings, table: Table) -> None:
    if not exists(spark, settings, table):
        raise MissingInput(
            f"table {table.qualified} not found at {path_of(settings, table)}: run the job that writes it first"
        )


def read(spark: SparkSession, settings: Settings, table: Table, as_of_version: int | None = None) -> DataFrame:
    """The table (at ``as_of_version`` if given: a pinned snapshot that later commits cannot change)."""
    _require(spark, settings, table)
    reader = spark.read.format("delta")
    if as_of_version is not None:
        reader = reader.option("versionAsOf", as_of_version)
    return reader.load(path_of(settings, table))


def changes(spark: SparkSession, settings: Settings, table: Table, start: int, end: int) -> DataFrame:
    """Delta's change data feed of versions start..end: changed rows with ``_change_type``.

    Raises AnalysisException when the feed was not enabled for part of that range."""
    return (spark.read.format("delta").option("readChangeFeed", "true")
            .option("startingVersion", start).option("endingVersion", end).load(path_of(settings, table)))


def row_count(spark: SparkSession, settings: Settings, table: Table) -> int:
    """The table's rows, from the Delta log: every file's statistics carry its row count, and
    Delta answers an unfiltered count from them (the plan is a LocalTableScan) without reading
    a data file, so the pipeline's closing counts cost the same at 10^8 events as at 10^5."""
    return read(spark, settings, table).count()


def version(spark: SparkSession, settings: Settings, table: Table) -> int:
    """The table's latest version; MissingInput, naming it, if the lake has no such table."""
    try:
        delta = DeltaTable.forPath(spark, path_of(settings, table))
    except AnalysisException:  # checked only when it failed: every write asks for the version
        _require(spark, settings, table)
        raise
    return delta.history(1).first()["version"]


def _merge_metrics(result: DataFrame | None) -> dict:
    """The row of metrics Delta's MERGE returns (num_inserted_rows, ...); {} if none."""
    row = result.first() if result is not None else None
    return row.asDict() if row is not None else {}


def merge_insert(spark: SparkSession, settings: Settings, table: Table, df: DataFrame) -> tuple[int, int]:
    """Insert the rows whose keys are not in the table yet. Returns (version, rows inserted).

    The version is the table's latest after the write (a MERGE that inserts nothing commits
    nothing); the count is this MERGE's own, from the metrics it returns, so a concurrent
    commit cannot be mistaken for it."""
    ensure(spark, settings, table)
    cond = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)

    def write() -> dict:
        delta = DeltaTable.forPath(spark, path_of(settings, table))  # the latest snapshot on every try
        return _merge_metrics(delta.alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll().execute())

    metrics = with_retry(table, "MERGE (insert new keys)", write)
    return version(spark, settings, table), int(metrics.get("num_inserted_rows") or 0)


def upsert(spark: SparkSession, settings: Settings, table: Table, df: DataFrame) -> int:
    """Insert new keys and update existing ones."""
    ensure(spark, settings, table)
    cond = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)
    with_retry(table, "MERGE (upsert)", lambda: DeltaTable.forPath(spark, path_of(settings, table)).alias("t")
               .merge(df.alias("s"), cond).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    return version(spark, settings, table)


def update_from(spark: SparkSession, settings: Settings, table: Table, df: DataFrame,
                on: list[str], columns: list[str]) -> int:
    """Set ``columns`` of the rows that match ``df`` on ``on`` to df's values (rows that
    already agree are left alone, so the update is idempotent)."""
    cond = " AND ".join(f"t.{k} = s.{k}" for k in on)
    differs = " OR ".join(f"NOT (t.{c} <=> s.{c})" for c in columns)
    with_retry(table, "MERGE (update)", lambda: DeltaTable.forPath(spark, path_of(settings, table)).alias("t")
               .merge(df.alias("s"), cond)
               .whenMatchedUpdate(condition=differs, set={c: f"s.{c}" for c in columns}).execute())
    return version(spark, settings, table)


def delete_keys(spark: SparkSession, settings: Settings, table: Table, keys: DataFrame) -> int:
    """Delete the rows whose keys are in ``keys`` (one MERGE; deleting again deletes nothing)."""
    cond = " AND ".join(f"t.{k} = s.{k}" for k in table.keys)
    with_retry(table, "MERGE (delete keys)", lambda: DeltaTable.forPath(spark, path_of(settings, table)).alias("t")
               .merge(keys.select(*table.keys).distinct().alias("s"), cond).whenMatchedDelete().execute())
    return version(spark, settings, table)


def delete_where(spark: SparkSession, settings: Settings, table: Table, condition: str) -> int:
    """Delete the rows matching ``condition`` (e.g. to withdraw a bad delivery before a replay)."""
    with_retry(table, "DELETE", lambda: DeltaTable.forPath(spark, path_of(settings, table)).delete(condition))
    return version(spark, settings, table)


def replace_where(spark: SparkSession, settings: Settings, table: Table, df: DataFrame, condition: str) -> int:
    """Atomically replace the rows matching ``condition`` (the slice a run owns) with ``df``.

    Delta rejects the commit if ``df`` holds a row outside the slice."""
    ensure(spark, settings, table)
    with_retry(table, f"replaceWhere {condition}", lambda: df.write.format("delta").mode("overwrite")
               .option("replaceWhere", condition).save(path_of(settings, table)))
    return version(spark, settings, table)


def overwrite(spark: SparkSession, settings: Settings, table: Table, df: DataFrame) -> int:
    """Replace the whole table in one commit (for small derived tables such as ground truth)."""
    ensure(spark, settings, table)
    with_retry(table, "overwrite", lambda: df.write.format("delta").mode("overwrite").save(path_of(settings, table)))
    return version(spark, settings, table)
