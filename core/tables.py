"""Table contracts: every lake table's schema, keys, partitioning and constraints, declared once.

Transforms end in ``select_contract(df, TABLE)`` so what they return is exactly the table's
columns and types; :mod:`core.lake` creates tables from the same objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from core.sources import UNIFIED_EVENT_TYPES

AMOUNT = DecimalType(18, 2)
AMOUNT_ORIG = DecimalType(20, 4)
REVENUE = DecimalType(28, 2)  # sums of AMOUNT


@dataclass(frozen=True)
class Table:
    layer: str
    name: str
    schema: StructType
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    checks: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.layer}.{self.name}"


def struct(*fields: tuple) -> StructType:
    """A schema from (name, type, nullable) triples."""
    return StructType([StructField(n, t, nullable) for n, t, nullable in fields])


EVENTS_RAW = Table(
    "bronze", "events_raw",
    struct(("platform", StringType(), False), ("source_file", StringType(), False),
           ("source_position", LongType(), False), ("raw_format", StringType(), False),
           ("raw", StringType(), True), ("ingest_batch_id", StringType(), False),
           ("ingested_at", TimestampType(), False)),
    keys=("source_file", "source_position"),
    partition_by=("platform",),
)

ACCOUNTS_RAW = Table("bronze", "accounts_raw", EVENTS_RAW.schema, keys=EVENTS_RAW.keys, partition_by=("platform",))

INGEST_MANIFEST = Table(
    "bronze", "ingest_manifest",
    struct(("source_file", StringType(), False), ("platform", StringType(), False), ("kind", StringType(), False),
           ("size_bytes", LongType(), False), ("modified_ms", LongType(), False), ("records", LongType(), False),
           ("ingest_batch_id", StringType(), False), ("ingested_at", TimestampType(), False)),
    keys=("source_file", "size_bytes", "modified_ms"),
)

EVENTS = Table(
    "silver", "events",
    struct(("event_key", StringType(), False), ("platform", StringType(), False),
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
    # gold's aggregate reads the change feed to recompute only the dates that changed.
    properties={"delta.enableChangeDataFeed": "true"},
    checks={
        "duration_non_negative": "duration_s IS NULL OR duration_s >= 0",
        "progress_in_unit_range": "progress IS NULL OR (progress >= 0 AND progress <= 1)",
        "amount_sign": "(event_type = 'refund' AND amount <= 0) OR (event_type <> 'refund' AND amount >= 0)",
        "known_event_type": f"event_type IN ({','.join(repr(t) for t in UNIFIED_EVENT_TYPES)})",
    },
)

QUARANTINE = Table(
    "silver", "quarantine",
    struct(("platform", StringType(), False), ("source_file", StringType(), False),
           ("source_position", LongType(), False), ("raw", StringType(), True),
           ("reasons", ArrayType(StringType(), True), False), ("ingest_batch_id", StringType(), False)),
    keys=("source_file", "source_position"),
    checks={"has_reason": "size(reasons) > 0"},
)

IDENTITY_MAP = Table(
    "silver", "identity_map",
    struct(("platform", StringType(), False), ("account_id", StringType(), False), ("user_id", StringType(), False),
           ("identifier_count", LongType(), False)),
    keys=("platform", "account_id"),
)

REFINE_LOG = Table(
    "silver", "refine_log",
    struct(("ingest_batch_id", StringType(), False), ("as_of_date", DateType(), False),
           ("records_read", LongType(), False), ("new_rows", LongType(), False),
           ("quarantined", LongType(), False), ("duplicates", LongType(), False)),
    keys=("ingest_batch_id",),
)

# -- gold ----------------------------------------------------------------------
_L, _D, _S, _I = LongType(), DoubleType(), StringType(), IntegerType()

USER_PLATFORM_DAILY = Table(
    "gold", "user_platform_daily",
    struct(("user_id", _S, False), ("platform", _S, False), ("date", DateType(), False), ("events", _L, False),
           ("impressions", _L, False), ("clicks", _L, False), ("views", _L, False), ("plays", _L, False),
           ("completes", _L, False), ("likes", _L, False), ("comments", _L, False), ("shares", _L, False),
           ("follows", _L, False), ("purchases", _L, False), ("subscribes", _L, False), ("refunds", _L, False),
           ("rec_reads", _L, False), ("watch_seconds", _D, False), ("revenue", REVENUE, False)),
    keys=("user_id", "platform", "date"),
    partition_by=("date",),
)

CREATOR_PLATFORM_DAILY = Table(
    "gold", "creator_platform_daily",
    struct(("creator_id", _S, False), ("platform", _S, False), ("date", DateType(), False),
           ("items_active", _L, False), ("readers", _L, False), ("reads", _L, False), ("rec_reads", _L, False),
           ("impressions", _L, False), ("clicks", _L, False), ("completes", _L, False),
           ("social_actions", _L, False), ("purchases", _L, False), ("refunds", _L, False),
           ("revenue", REVENUE, False), ("rec_revenue", REVENUE, False)),
    keys=("creator_id", "platform", "date"),
    partition_by=("date",),
)

PLATFORM_DAILY = Table(
    "gold", "platform_daily",
    struct(("platform", _S, False), ("date", DateType(), False), ("m_items_recommended", _L, False),
           ("rec_reads", _L, False), ("w_reads_per_item", _D, True), ("reads", _L, False),
           ("revenue", REVENUE, False), ("y_revenue_per_read", _D, True), ("r_p", _D, False),
           ("dau", _L, False), ("paying_users", _L, False), ("arpu", _D, True)),
    keys=("platform", "date"),
    partition_by=("date",),
)

USER_FEATURES = Table(
    "gold", "user_features",
    struct(("user_id", _S, False), ("as_of_date", DateType(), False), ("recency_days", _I, False),
           ("tenure_days", _I, False), ("active_days", _L, False), ("events", _L, False), ("reads", _L, False),
           ("monetary", _D, False), ("monetary_recent", _D, False), ("orders", _L, False),
           ("avg_order_value", _D, True), ("subscriptions", _L, False), ("watch_hours", _D, False),
           ("completion_rate", _D, True), ("platforms_used", _L, False),
           ("platform_share", MapType(_S, _D), False), ("category_share", MapType(_S, _D), False),
           ("creator_hhi", _D, True), ("rec_impressions", _L, False), ("rec_ctr", _D, True),
           ("rec_conversion", _D, True), ("refund_rate", _D, True), ("social_actions", _L, False),
           # Added after the first release: nullable, so that a lake written before keeps working
           # (its older slices read null here; lake.py adds the columns to the table).
           ("purchase_days", _L, True), ("purchase_recency_days", _I, True), ("purchase_age_days", _I, True),
           ("ipt_mean_days", _D, True), ("ipt_cv", _D, True), ("overdue", _D, True),
           ("repeat_spend_mean", _D, True), ("spend_trend", _D, True)),
    keys=("user_id", "as_of_date"),
    partition_by=("as_of_date",),
)

CREATOR_QUALITY = Table(
    "gold", "creator_quality",
    struct(("creator_id", _S, False), ("as_of_date", DateType(), False), ("category", _S, False),
           ("reads", _L, False), ("completion_rate", _D, True), ("engagement_rate", _D, True),
           ("repeat_rate", _D, True), ("conversion_rate", _D, True), ("retention_rate", _D, True),
           ("q", _D, True)),
    keys=("creator_id", "as_of_date"),
    partition_by=("as_of_date",),
    checks={"q_in_unit_range": "q IS NULL OR (q >= 0 AND q <= 1)"},
)

CREATOR_PLATFORM_PERIOD = Table(
    "gold", "creator_platform_period",
    struct(("creator_id", _S, False), ("platform", _S, False), ("as_of_date", DateType(), False),
           ("period_start", DateType(), False), ("k_items", _L, False), ("reads", _L, False),
           ("r_reads_per_item", _D, False), ("revenue", REVENUE, False), ("x_revenue_per_read", _D, True),
           ("r_c", _D, False), ("impressions", _L, False), ("clicks", _L, False), ("rec_reads", _L, False),
           ("ctr", _D, True), ("rec_read_share", _D, True), ("rec_revenue_share", _D, True), ("e", _D, True)),
    keys=("creator_id", "platform", "as_of_date"),
    partition_by=("as_of_date",),
    checks={"e_in_unit_range": "e IS NULL OR (e >= 0 AND e <= 1)"},
)

PLATFORM_PERIOD = Table(
    "gold", "platform_period",
    struct(("platform", _S, False), ("as_of_date", DateType(), False), ("period_start", DateType(), False),
           ("m_items_recommended", _L, False), ("rec_reads", _L, False), ("w_reads_per_item", _D, True),
           ("reads", _L, False), ("revenue", REVENUE, False), ("y_revenue_per_read", _D, True),
           ("r_p", _D, False), ("active_users", _L, False), ("avg_dau", _D, False), ("paying_users", _L, False),
           ("arpu", _D, True), ("creators_active", _L, False), ("e_p", _D, True)),
    keys=("platform", "as_of_date"),
    partition_by=("as_of_date",),
)

USER_PERSONAS = Table(
    "gold", "user_personas",
    struct(("user_id", _S, False), ("as_of_date", DateType(), False), ("persona_id", _I, False),
           ("persona_label", _S, False), ("distance", _D, False)),
    keys=("user_id", "as_of_date"),
    partition_by=("as_of_date",),
)

PERSONA_PROFILES = Table(
    "gold", "persona_profiles",
    struct(("as_of_date", DateType(), False), ("persona_id", _I, False), ("persona_label", _S, False),
           ("size", _L, False), ("user_share", _D, False), ("revenue_share", _D, True),
           ("centre", MapType(_S, _D), False), ("top_platforms", ArrayType(_S), False),
           ("top_categories", ArrayType(_S), False), ("mlflow_run_id", _S, False)),
    keys=("as_of_date", "persona_id"),
)

PERSONA_TRANSITIONS = Table(
    "gold", "persona_transitions",
    struct(("as_of_date", DateType(), False), ("previous_as_of_date", DateType(), False),
           ("from_label", _S, False), ("to_label", _S, False), ("users", _L, False)),
    keys=("as_of_date", "from_label", "to_label"),
)

# Lineage carried by every score row: the model that produced it and the input versions.
_LINEAGE = (("model_name", _S, False), ("model_version", _S, False), ("run_id", _S, False))

USER_REVENUE_SCORES = Table(
    "gold", "user_revenue_scores",
    struct(("user_id", _S, False), ("as_of_date", DateType(), False), ("predicted_revenue", _D, False),
           ("horizon_days", _I, False), ("persona_id", _I, True), ("persona_label", _S, True), *_LINEAGE,
           ("user_features_version", _L, False), ("user_personas_version", _L, True),
           # The BTYD baseline's view of the user (null for one who never paid, or without a fit):
           # P(alive), the churn risk's complement, and its revenue forecast over the horizon.
           ("p_alive", _D, True), ("btyd_revenue", _D, True),
           # Added after the first release: P10 / P50 / P90 of the revenue over the horizon, from
           # the champion. Nullable: rows written before, and a champion logged before intervals.
           ("predicted_revenue_p10", _D, True), ("predicted_revenue_p50", _D, True),
           ("predicted_revenue_p90", _D, True)),
    keys=("user_id", "as_of_date"),
    partition_by=("as_of_date",),
    checks={"prediction_not_negative": "predicted_revenue >= 0",
            "quantiles_ordered": "predicted_revenue_p10 IS NULL OR (predicted_revenue_p10 >= 0 AND "
                                 "predicted_revenue_p10 <= predicted_revenue_p50 AND "
                                 "predicted_revenue_p50 <= predicted_revenue_p90)"},
)

SYNERGY_SCORES = Table(
    "gold", "synergy_scores",
    struct(("creator_id", _S, False), ("platform", _S, False), ("as_of_date", DateType(), False),
           ("category", _S, True), ("status", _S, False), ("q", _D, True), ("e", _D, True), ("e_p", _D, True),
           ("synergy", _D, True), ("r_c", _D, False), ("predicted_revenue", _D, False),
           ("potential_revenue", _D, True), ("uplift", _D, True), *_LINEAGE,
           ("creator_quality_version", _L, False), ("creator_platform_period_version", _L, False)),
    keys=("creator_id", "platform", "as_of_date"),
    partition_by=("as_of_date",),
    checks={"status_known": "status IN ('established', 'weak', 'absent')"},
)

REVENUE_METRICS = Table(
    "gold", "revenue_metrics",
    struct(("platform", _S, False), ("as_of_date", DateType(), False), ("period_start", DateType(), False),
           ("revenue", _D, False), ("r_p", _D, False), ("sum_r_c", _D, False), ("gap", _D, False),
           ("creator_share", _D, True), ("predicted_revenue_next", _D, False),
           ("predicted_by_persona", MapType(_S, _D), False), *_LINEAGE,
           ("platform_period_version", _L, False), ("user_features_version", _L, False)),
    keys=("platform", "as_of_date"),
)

AGGREGATE_LOG = Table(
    "gold", "aggregate_log",
    struct(("as_of_date", DateType(), False), ("silver_version", _L, False), ("horizon_date", DateType(), False),
           ("dates_recomputed", _L, False), ("full_recompute", BooleanType(), False)),
    keys=("as_of_date", "silver_version"),
)

# Every table declared here, in the order data flows through them: the names a session built
# for a lake can query (evaluation's truth tables are named by the job that writes them).
ALL_TABLES = tuple(t for t in list(globals().values()) if isinstance(t, Table))
# The tables that hold data: not the run logs.
_RUN_LOGS = (INGEST_MANIFEST, REFINE_LOG, AGGREGATE_LOG)
DATA_TABLES = tuple(t for t in ALL_TABLES if t not in _RUN_LOGS)


def select_contract(df: DataFrame, table: Table) -> DataFrame:
    """Select exactly the table's columns, cast to its types: the output contract."""
    cols: list[Column] = [F.col(f.name).cast(f.dataType).alias(f.name) for f in table.schema.fields]
    return df.select(*cols)
