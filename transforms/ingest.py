"""Raw file rows -> bronze rows: the record as received plus where it came from."""
from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from transforms.schemas import EVENTS_RAW, select_contract


def to_bronze(raw: DataFrame, platform: str, raw_format: str, batch_id: str, ingested_at: dt.datetime,
              csv_header: str | None = None) -> DataFrame:
    """Bronze rows from a raw read.

    ``raw`` has ``source_file``, ``block_start`` (the split's byte offset, from Spark's file
    metadata) and either ``value`` (a text line) or typed columns (Parquet, kept as JSON).
    ``source_position`` is the 1-based line (or row) number within the file. A CSV header line
    equal to the mapping's header is not a record and is left out.
    """
    record = F.col("value") if raw_format != "parquet" else F.to_json(F.struct(*[
        F.col(c) for c in raw.columns if c not in ("source_file", "block_start")]))
    order = Window.partitionBy("source_file").orderBy("block_start", "row_in_split")
    df = (raw.withColumn("row_in_split", F.monotonically_increasing_id())
             .select("source_file", "block_start", "row_in_split", record.alias("raw"))
             .withColumn("source_position", F.row_number().over(order).cast("long")))
    if csv_header is not None:
        df = df.where(~((F.col("source_position") == 1) & (F.trim(F.col("raw")) == F.lit(csv_header))))
    return select_contract(
        df.withColumn("platform", F.lit(platform))
          .withColumn("raw_format", F.lit(raw_format))
          .withColumn("ingest_batch_id", F.lit(batch_id))
          .withColumn("ingested_at", F.lit(ingested_at).cast("timestamp")),
        EVENTS_RAW,
    )
