"""Raw file rows -> bronze rows: the record as received plus where it came from."""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from core.tables import EVENTS_RAW, select_contract

# raw_format of the one bronze row that stands for a file no reader could open (a truncated
# Parquet file): refine quarantines it as unreadable_file.
UNREADABLE = "unreadable"
META = ("source_file", "block_start")


def parquet_records(df: DataFrame) -> DataFrame:
    """Typed Parquet rows -> (``value``, source_file, block_start): each row as JSON text, so
    files whose column types disagree (schema drift) still union into one bronze batch."""
    return df.select(F.to_json(F.struct(*[F.col(c) for c in df.columns if c not in META])).alias("value"),
                     *META)


def decoded(lines: DataFrame, charset: str) -> DataFrame:
    """Text lines read byte for byte (Spark's text reader does not decode) as text in
    ``charset`` (a Java name); UTF-8 lines stay as they are, so refine can still tell bad
    UTF-8 apart."""
    if charset.upper() == "UTF-8":
        return lines
    return lines.withColumn("value", F.decode(F.col("value").cast("binary"), charset))


def whole_file_lines(files: DataFrame, charset: str) -> DataFrame:
    """Files read whole (``content`` bytes and ``source_file``) as (``value``, source_file,
    block_start) lines: for encodings such as UTF-16, whose line breaks are not the byte
    0x0A and which a line reader would cut mid-character. ``block_start`` is the line's
    index, so the numbering in :func:`to_bronze` follows the file."""
    text = F.decode(F.col("content"), charset)
    return (files.select("source_file", F.posexplode(F.split(text, "\r?\n")).alias("block_start", "value"))
                 .select("value", "source_file", F.col("block_start").cast("long")))


def unreadable_files(spark, files: list[str]) -> DataFrame:
    """(value = NULL, source_file, block_start = -1) for files that could not be read at all:
    one bronze row each, at source_position 0, with raw_format ``unreadable``."""
    return spark.createDataFrame([(None, f, -1) for f in files], "value string, source_file string, block_start long")


def header_text(line: Column) -> Column:
    """A CSV line reduced for comparison with the mapping's header: lower case, no spaces or quotes."""
    return F.lower(F.regexp_replace(line, "[\\s\"']", ""))


def header_text_of(header: str) -> str:
    return "".join(c for c in header.lower() if not c.isspace() and c not in "\"'")


def to_bronze(raw: DataFrame, platform: str, raw_format: str, batch_id: str, ingested_at: dt.datetime,
              csv_header: str | None = None, partitions: int | None = None) -> DataFrame:
    """Bronze rows from a raw read.

    ``raw`` has ``source_file``, ``block_start`` (the split's byte offset, from Spark's file
    metadata) and ``value``: a text line, or a Parquet row as JSON (:func:`parquet_records`).
    ``source_position`` is the 1-based line (or row) number within the file; a row with
    ``block_start`` -1 stands for an unreadable file (:func:`unreadable_files`) and gets
    position 0. A byte-order mark is stripped. Blank lines, and a first line that is the
    mapping's CSV header (ignoring case, spaces and quotes), are not records and are left out;
    positions still count them, so they name the file's own line numbers.

    Numbering sorts each file's rows in one task. ``partitions`` (the job passes the number of
    files) spreads the files over that many tasks; left to the shuffle default, a handful of
    tasks each sorted a quarter of 10^8 lines and the local driver ran out of memory.
    """
    order = Window.partitionBy("source_file").orderBy("block_start", "row_in_split")
    unreadable = F.col("block_start") < 0
    bom = F.col("value").startswith("\uFEFF")
    df = (raw.withColumn("row_in_split", F.monotonically_increasing_id())
             .select("source_file", "block_start", "row_in_split",
                     F.when(bom, F.expr("substring(value, 2)")).otherwise(F.col("value")).alias("raw")))
    if partitions:
        df = df.repartition(partitions, "source_file")  # the window below keeps this partitioning
    df = (df.withColumn("source_position", F.when(unreadable, F.lit(0))
                                             .otherwise(F.row_number().over(order)).cast("long")))
    df = df.where(unreadable | (F.btrim(F.col("raw"), F.lit(" \t\r\n")) != F.lit("")))
    if csv_header is not None:
        df = df.where(~((F.col("source_position") == 1) & (header_text(F.col("raw")) == F.lit(header_text_of(csv_header)))))
    return select_contract(
        df.withColumn("platform", F.lit(platform))
          .withColumn("raw_format", F.when(unreadable, F.lit(UNREADABLE)).otherwise(F.lit(raw_format)))
          .withColumn("ingest_batch_id", F.lit(batch_id))
          .withColumn("ingested_at", F.lit(ingested_at).cast("timestamp")),
        EVENTS_RAW,
    )
