"""Table contracts: every lake table's schema, keys, partitioning and constraints, declared once.

Transforms end in ``select_contract(df, TABLE)`` so what they return is exactly the table's
columns and types; ``jobs.lake`` creates tables from the same objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType, BooleanType, DateType, DecimalType, DoubleType, LongType, StringType,
    StructField, StructType, TimestampType,
)

AMOUNT = DecimalType(18, 2)
AMOUNT_ORIG = DecimalType(20, 4)


@dataclass(frozen=True)
class Table:
    layer: str
    name: str
    schema: StructType
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.layer}.{self.name}"


def _s(*fields: tuple) -> StructType:
    return StructType([StructField(n, t, nullable) for n, t, nullable in fields])


EVENTS_RAW = Table(
    "bronze", "events_raw",
    _s(("platform", StringType(), False), ("source_file", StringType(), False),
       ("source_position", LongType(), False), ("raw_format", StringType(), False),
       ("raw", StringType(), True), ("ingest_batch_id", StringType(), False),
       ("ingested_at", TimestampType(), False)),
    keys=("source_file", "source_position"),
    partition_by=("platform",),
)

ACCOUNTS_RAW = Table("bronze", "accounts_raw", EVENTS_RAW.schema, keys=EVENTS_RAW.keys, partition_by=("platform",))

INGEST_MANIFEST = Table(
    "bronze", "ingest_manifest",
    _s(("source_file", StringType(), False), ("platform", StringType(), False), ("kind", StringType(), False),
       ("size_bytes", LongType(), False), ("modified_ms", LongType(), False), ("records", LongType(), False),
       ("ingest_batch_id", StringType(), False), ("ingested_at", TimestampType(), False)),
    keys=("source_file", "size_bytes", "modified_ms"),
)

EVENTS = Table(
    "silver", "events",
    _s(("event_key", StringType(), False), ("platform", StringType(), False),
       ("source_event_id", StringType(), False), ("account_id", StringType(), False),
       ("user_id", StringType(), False), ("content_id", StringType(), True),
       ("creator_id", StringType(), True), ("category", StringType(), True),
       ("event_type", StringType(), False), ("event_ts", TimestampType(), False),
       ("event_date", DateType(), False), ("duration_s", DoubleType(), True),
       ("progress", DoubleType(), True), ("amount", AMOUNT, False),
       ("amount_orig", AMOUNT_ORIG, True), ("currency_orig", StringType(), True),
       ("is_recommended", BooleanType(), False), ("campaign_id", StringType(), True),
       ("session_id", StringType(), True), ("ingest_batch_id", StringType(), False),
       ("source_file", StringType(), False)),
    keys=("event_key",),
    partition_by=("event_date",),
    checks={
        "duration_non_negative": "duration_s IS NULL OR duration_s >= 0",
        "progress_in_unit_range": "progress IS NULL OR (progress >= 0 AND progress <= 1)",
        "amount_sign": "(event_type = 'refund' AND amount <= 0) OR (event_type <> 'refund' AND amount >= 0)",
        "known_event_type": "event_type IN ('impression','click','view','play','complete','like','comment',"
                            "'share','follow','purchase','subscribe','refund')",
    },
)

QUARANTINE = Table(
    "silver", "quarantine",
    _s(("platform", StringType(), False), ("source_file", StringType(), False),
       ("source_position", LongType(), False), ("raw", StringType(), True),
       ("reasons", ArrayType(StringType(), True), False), ("ingest_batch_id", StringType(), False)),
    keys=("source_file", "source_position"),
    checks={"has_reason": "size(reasons) > 0"},
)

IDENTITY_MAP = Table(
    "silver", "identity_map",
    _s(("platform", StringType(), False), ("account_id", StringType(), False), ("user_id", StringType(), False),
       ("identifier_count", LongType(), False)),
    keys=("platform", "account_id"),
)

REFINE_LOG = Table(
    "silver", "refine_log",
    _s(("ingest_batch_id", StringType(), False), ("as_of_date", DateType(), False),
       ("records_read", LongType(), False), ("new_rows", LongType(), False),
       ("quarantined", LongType(), False), ("duplicates", LongType(), False)),
    keys=("ingest_batch_id",),
)

TRUTH_ACCOUNTS = Table(
    "truth", "accounts",
    _s(("platform", StringType(), False), ("account_id", StringType(), False),
       ("person_id", LongType(), False), ("persona", StringType(), False)),
    keys=("platform", "account_id"),
)
TRUTH_CREATORS = Table(
    "truth", "creators",
    _s(("creator_id", StringType(), False), ("quality", DoubleType(), False), ("category", StringType(), False)),
    keys=("creator_id",),
)
TRUTH_PLATFORMS = Table(
    "truth", "platforms", _s(("platform", StringType(), False), ("promotion", DoubleType(), False)), keys=("platform",),
)
TRUTH_DEFECTS = Table(
    "truth", "defects",
    _s(("platform", StringType(), False), ("source_event_id", StringType(), False), ("defect", StringType(), False)),
    keys=("platform", "source_event_id", "defect"),
)


def select_contract(df: DataFrame, table: Table) -> DataFrame:
    """Select exactly the table's columns, cast to its types: the output contract."""
    cols: list[Column] = [F.col(f.name).cast(f.dataType).alias(f.name) for f in table.schema.fields]
    return df.select(*cols)
