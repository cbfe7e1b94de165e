"""Copy one lake table out as a CSV file or Parquet, for tools other than Spark.

    ipsynergy export gold.synergy_scores --format csv --out synergy.csv
    ipsynergy export silver.events --format parquet --out events/

TABLE is <layer>.<name> (docs/tables.md). --format csv writes ONE file: a header line, then the
rows, UTF-8, comma-separated, quoted as spreadsheets expect ("" inside a quoted value); arrays,
maps and structs become JSON text. One file means one task writes every row: meant for the
tables that fit a file (gold's, silver.refine_log ...), not for silver.events at 10^8 rows.
--format parquet writes a folder of Parquet files (any size; pandas, DuckDB and Arrow read the
folder), with the table's types. Both copy the table's latest version. An existing --out is
replaced only with --force, and only when it is an earlier export (a file, or a folder of Parquet
parts): never a Delta table or a folder of other files.
"""
from __future__ import annotations

import argparse
import sys
import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, MapType, StructType

from core import lake
from core.errors import ConfigError, InputRejected
from core.settings import Settings
from core.tables import ALL_TABLES, Table
from jobs.cli import Summary, run_job

FORMATS = ("csv", "parquet")


def table_named(name: str) -> Table:
    """The lake table called ``<layer>.<name>``; a ConfigError listing the valid names otherwise."""
    for table in ALL_TABLES:
        if table.qualified == name.strip().lower():
            return table
    raise ConfigError(f"unknown table {name!r}: expected <layer>.<name>, one of "
                      f"{', '.join(t.qualified for t in ALL_TABLES)}")


def csv_ready(df: DataFrame) -> DataFrame:
    """CSV has no arrays, maps or structs: those columns become their JSON text."""
    nested = (ArrayType, MapType, StructType)
    return df.select(*[F.to_json(F.col(f.name)).alias(f.name) if isinstance(f.dataType, nested) else F.col(f.name)
                       for f in df.schema.fields])


def _check_out(spark: SparkSession, out: str, fmt: str, force: bool) -> None:
    """Refuse an --out whose replacement could lose something: --force replaces an earlier
    export (a file, or a folder of Parquet parts), never a table or a folder of other files."""
    fs, path = lake.filesystem(spark, out)
    if not fs.exists(path):
        return
    if fs.exists(lake.hadoop_path(spark, f"{out.rstrip('/')}/_delta_log")):
        raise InputRejected(f"--out {out} is a Delta table: export writes a copy elsewhere, it never replaces a table")
    if not force:
        raise InputRejected(f"--out {out} exists: give another path, or --force to replace it")
    if fs.getFileStatus(path).isDirectory():
        names = [s.getPath().getName() for s in fs.listStatus(path)]
        others = [n for n in names if not (n.startswith(("part-", ".part-", "_SUCCESS", "._SUCCESS")))]
        if fmt == "csv" or others:
            raise InputRejected(f"--out {out} is a folder{' holding ' + ', '.join(others[:5]) if others else ''}: "
                                f"--force replaces an earlier export only; give another path")


def write_csv(spark: SparkSession, df: DataFrame, out: str) -> None:
    """One CSV file at ``out``: Spark writes a folder of part files, so the one part of a
    single-partition write goes beside ``out`` first and is then moved to it."""
    scratch = f"{out.rstrip('/')}.export-{uuid.uuid4().hex[:8]}"
    (csv_ready(df).coalesce(1).write.mode("overwrite")
     .option("header", "true").option("escape", '"').option("encoding", "UTF-8").csv(scratch))
    fs, scratch_path = lake.filesystem(spark, scratch)
    try:
        parts = [s.getPath() for s in fs.listStatus(scratch_path) if s.getPath().getName().startswith("part-")]
        if len(parts) != 1:
            raise RuntimeError(f"expected one CSV part file in {scratch}, found {len(parts)}")
        target = lake.hadoop_path(spark, out)
        if fs.exists(target):  # --force was given (checked before the write)
            fs.delete(target, True)
        if not fs.rename(parts[0], target):
            raise RuntimeError(f"could not move {parts[0]} to {out}")
        # A local disk's Hadoop file system keeps a .<name>.crc beside each file and moves it
        # along: not wanted beside a file for other tools (it would fail Hadoop reads once edited).
        checksum = lake.hadoop_path(spark, f"{target.getParent().toString()}/.{target.getName()}.crc")
        if fs.exists(checksum):
            fs.delete(checksum, False)
    finally:
        fs.delete(scratch_path, True)


def execute(spark: SparkSession, settings: Settings, summary: Summary, table: str = "", fmt: str = "csv",
            out: str = "", force: bool = False) -> Summary:
    contract = table_named(table)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}: expected one of {', '.join(FORMATS)}")
    # One version throughout: a commit during the export changes neither the rows nor the count.
    version = lake.version(spark, settings, contract)  # MissingInput, naming the table, if this lake has none
    _check_out(spark, out, fmt, force)
    df = lake.read(spark, settings, contract, as_of_version=version)
    if fmt == "csv":
        write_csv(spark, df, out)
    else:
        df.write.mode("overwrite").parquet(out)
    summary.count("rows exported", df.count())  # from the Delta log's statistics, no data read
    summary.table(contract.qualified, version)
    summary.note(f"wrote {out} ({fmt})")
    return summary


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", metavar="TABLE", help="the table, <layer>.<name>, e.g. gold.synergy_scores")
    parser.add_argument("--format", choices=FORMATS, default="csv",
                        help="csv: one file with a header (tables that fit a file); parquet: a folder (default csv)")
    parser.add_argument("--out", required=True, metavar="PATH", help="the file (csv) or folder (parquet) to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.export", __doc__, argv, execute, add_arguments=_arguments,
                   options=lambda a: {"table": a.table, "fmt": a.format, "out": a.out, "force": a.force})


if __name__ == "__main__":
    sys.exit(main())
