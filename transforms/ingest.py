"""Raw file rows -> bronze rows: the record as received plus where it came from."""
from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from transforms.schemas import EVENTS_RAW, select_contract

# raw_format of the one bronze row that stands for a file no reader could open (a truncated
# Parquet file): refine quarantines it as unreadable_file.
UNREADABLE = "unreadable"
META = ("source_file", "block_start")


def parquet_records(df: DataFrame) -> DataFrame:
    """Typed Parquet rows -> (``value``, source_file, block_start): each row as JSON text, so
    files whose column types disagree (schema drift) still union into one bronze batch."""
    return df.select(F.to_json(F.struct(*[F.col(c) for c in df.columns if c not in META])).alias("value"),
                     *META)


def unreadable_files(spark, files: list[str]) -> DataFrame:
    """(value = NULL, source_file, block_start = -1) for files that could not be read at all:
    one bronze row each, at source_position 0, with raw_format ``unreadable``."""
    return spark.createDataFrame([(None, f, -1) for f in files], "value string, source_file string, block_start long")


def to_bronze(raw: DataFrame, platform: str, raw_format: str, batch_id: str, ingested_at: dt.datetime,
              csv_header: str | None = None, partitions: int | None = None) -> DataFrame:
    """Bronze rows from a raw read.

    ``raw`` has ``source_file``, ``block_start`` (the split's byte offset, from Spark's file
    metadata) and ``value``: a text line, or a Parquet row as JSON (:func:`parquet_records`).
    ``source_position`` is the 1-based line (or row) number within the file; a row with
    ``block_start`` -1 stands for an unreadable file (:func:`unreadable_files`) and gets
    position 0. A CSV header line equal to the mapping's header (ignoring a UTF-8 byte-order
    mark) is not a record and is left out.

    Numbering sorts each file's rows in one task. ``partitions`` (the job passes the number of
    files) spreads the files over that many tasks; left to the shuffle default, a handful of
    tasks each sorted a quarter of 10^8 lines and the local driver ran out of memory.
    """
    order = Window.partitionBy("source_file").orderBy("block_start", "row_in_split")
    unreadable = F.col("block_start") < 0
    df = (raw.withColumn("row_in_split", F.monotonically_increasing_id())
             .select("source_file", "block_start", "row_in_split", F.col("value").alias("raw")))
    if partitions:
        df = df.repartition(partitions, "source_file")  # the window below keeps this partitioning
    df = (df.withColumn("source_position", F.when(unreadable, F.lit(0))
                                             .otherwise(F.row_number().over(order)).cast("long")))
    if csv_header is not None:
        line = F.trim(F.regexp_replace(F.col("raw"), "^\uFEFF", ""))
        df = df.where(~((F.col("source_position") == 1) & (line == F.lit(csv_header))))
    return select_contract(
        df.withColumn("platform", F.lit(platform))
          .withColumn("raw_format", F.when(unreadable, F.lit(UNREADABLE)).otherwise(F.lit(raw_format)))
          .withColumn("ingest_batch_id", F.lit(batch_id))
          .withColumn("ingested_at", F.lit(ingested_at).cast("timestamp")),
        EVENTS_RAW,
    )
