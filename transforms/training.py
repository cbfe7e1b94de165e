"""Point-in-time training rows for the revenue models, and the stratified sample drawn from them.

A row's features come only from events dated on or before its feature date ``t``; its label is
the net revenue in the ``horizon`` days after ``t`` (``t`` excluded). The naive baseline reads
one feature, the revenue of the ``period_days`` before ``t`` (ModelSpec.naive_column), scaled
to the horizon. Pure functions over DataFrames.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from transforms import gold

# Numeric columns of gold.user_features that the user model reads, then one share column per
# platform and per category. Heavy-tailed ones enter the model as sign(x)*ln(1+|x|).
# tenure_days is left out: between the training dates and the test date every user's tenure
# grows by the same days, so the model reads it as a calendar trend (measured: predicted /
# actual rose from 0.95 on the first training date to 1.13 on the test date with it, flat
# without it).
USER_NUMERIC = ("recency_days", "active_days", "events", "reads", "monetary",
                "monetary_recent", "orders", "avg_order_value", "subscriptions", "watch_hours",
                "completion_rate", "platforms_used", "creator_hhi", "rec_impressions", "rec_ctr",
                "rec_conversion", "refund_rate", "social_actions")
USER_LOG = ("recency_days", "active_days", "events", "reads", "monetary", "monetary_recent",
            "orders", "avg_order_value", "subscriptions", "watch_hours", "rec_impressions", "social_actions")
# The purchase rhythm of gold.user_features (purchase_days, ipt_*, overdue, ...) is not read
# yet: it counts over all history, and the data starts on one day for everyone, so like tenure
# it grows between training dates. Measured on generated data (1,000 users, 4 training
# dates, latest-date calibration): predicted / actual went from 0.87 on the first training
# date (out of fold) to 1.07 on the test date with it, from 0.93 to 1.00 without it, and the
# held-out Gini did not improve (0.840 against 0.842). It waits for data with dropout.
# The RFM summary that the BTYD baseline (ml/btyd.py) is fitted on and scores: the purchase
# rhythm columns of gold.user_features, carried beside the features.
RFM_COLUMNS = ("purchase_days", "purchase_recency_days", "purchase_age_days", "repeat_spend_mean")
# What the BTYD baseline adds to each row, read by the user model as features: expected paid
# days in the horizon, P(alive), expected spend per paid day.
BTYD_OUTPUTS = ("btyd_purchases", "btyd_p_alive", "btyd_spend")
BTYD_LOG = ("btyd_purchases", "btyd_spend")
# Carried beside the user model's features, not read by it: the RFM summary, and tenure for
# the backtest's acquisition cohorts.
CARRIED = (*RFM_COLUMNS, "tenure_days")
PAIR_NUMERIC = ("q", "completion_rate", "engagement_rate", "repeat_rate", "conversion_rate", "retention_rate",
                "k_items", "reads", "r_reads_per_item", "revenue", "x_revenue_per_read", "impressions",
                "ctr", "rec_read_share", "rec_revenue_share", "e", "e_p", "reads_other", "revenue_other",
                "platforms_active")
PAIR_LOG = ("k_items", "reads", "r_reads_per_item", "revenue", "x_revenue_per_read", "impressions",
            "reads_other", "revenue_other")


@dataclass(frozen=True)
class ModelSpec:
    """What one revenue model learns from: its keys, feature columns and log-scaled columns."""
    name: str
    keys: tuple[str, ...]
    features: tuple[str, ...]
    log_features: tuple[str, ...]
    # The revenue of the last period_days: what the naive baseline scales to the horizon.
    naive_column: str

    def without(self, dropped: list[str]) -> "ModelSpec":
        """The same model on fewer features (never without the naive baseline's column)."""
        return replace(self, features=tuple(f for f in self.features if f not in dropped or f == self.naive_column))


def user_spec(platforms: list[str], categories: list[str]) -> ModelSpec:
    return ModelSpec("user_revenue", ("user_id",),
                     (*USER_NUMERIC, *BTYD_OUTPUTS, *[f"platform_{p}" for p in platforms],
                      *[f"cat_{c}" for c in categories]),
                     (*USER_LOG, *BTYD_LOG), "monetary_recent")


def pair_spec(platforms: list[str], categories: list[str]) -> ModelSpec:
    return ModelSpec("creator_platform_revenue", ("creator_id", "platform"),
                     (*PAIR_NUMERIC, *[f"is_{p}" for p in platforms], *[f"cat_{c}" for c in categories]),
                     PAIR_LOG, "revenue")


def feature_dates(as_of: dt.date, first_date: dt.date, horizon: int, windows: int, step: int,
                  min_history: int) -> tuple[list[dt.date], dt.date]:
    """(training dates, test date). The test date is ``as_of - horizon`` so that its label window
    ends at ``as_of``; the latest training date is a further ``horizon`` earlier, so no training
    label overlaps the test label window. Dates with less than ``min_history`` days of history
    are dropped."""
    test = as_of - dt.timedelta(days=horizon)
    latest = test - dt.timedelta(days=horizon)
    earliest = first_date + dt.timedelta(days=min_history)
    train = [latest - dt.timedelta(days=step * i) for i in range(windows)]
    return sorted(d for d in train if d >= earliest), test


def share_columns(shares: Column, keys: list[str], prefix: str) -> list[Column]:
    """One column per key of a share map (0 when absent), named ``<prefix><key>``."""
    return [F.coalesce(shares[k], F.lit(0.0)).alias(f"{prefix}{k}") for k in keys]


def user_model_frame(features: DataFrame, spec: ModelSpec, platforms: list[str], categories: list[str]) -> DataFrame:
    """gold.user_features rows as the user model's input: keys, as_of_date, the spec's features
    as doubles (shares flattened) but the BTYD outputs (ml.btyd adds them), and the CARRIED
    columns."""
    flat = features.select("user_id", "as_of_date", *USER_NUMERIC, *CARRIED,
                           *share_columns(F.col("platform_share"), platforms, "platform_"),
                           *share_columns(F.col("category_share"), categories, "cat_"))
    own = [c for c in spec.features if c not in BTYD_OUTPUTS]
    return flat.select("user_id", "as_of_date", *[F.col(c).cast("double").alias(c) for c in [*own, *CARRIED]])


def _revenue_between(events: DataFrame, keys: list[str], after: dt.date, through: dt.date, name: str) -> DataFrame:
    return (events.where(F.col("event_date") > F.lit(after)).where(F.col("event_date") <= F.lit(through))
                  .groupBy(*keys).agg(F.sum("amount").cast("double").alias(name)))


def _with_target(rows: DataFrame, events: DataFrame, keys: list[str], t: dt.date, horizon: int) -> DataFrame:
    """Add ``label``: net revenue in (t, t + horizon], 0 if none."""
    label = _revenue_between(events, keys, t, t + dt.timedelta(days=horizon), "label")
    return rows.join(label, keys, "left").withColumn("label", F.coalesce(F.col("label"), F.lit(0.0)))


def user_rows(events: DataFrame, daily: DataFrame, t: dt.date, horizon: int, lookback_days: int, period_days: int,
              spec: ModelSpec, platforms: list[str], categories: list[str]) -> DataFrame:
    """One row per user seen on or before ``t``: features as of ``t`` (but the BTYD outputs),
    the RFM summary, label. ``daily``:
    gold.user_platform_daily of ``events`` (any dates: only those up to ``t`` are read), the
    history that gold.user_features reads, so the features equal the gold table's."""
    lookback = gold.window(events, gold.lookback_start(t, lookback_days), t)
    history = daily.where(F.col("date") <= F.lit(t))
    features = user_model_frame(gold.user_features(lookback, history, t, period_days), spec, platforms, categories)
    return _with_target(features, events, ["user_id"], t, horizon).select(*features.columns, "label")


def pair_model_frame(quality: DataFrame, pairs: DataFrame, spec: ModelSpec, platforms: list[str],
                     categories: list[str]) -> DataFrame:
    """(creator, platform) rows as the pair model's input, from gold.creator_quality and
    gold.creator_platform_period of one as_of: the pair's own K, R, X and funnel, the creator's
    Q and its signals, E(P), and the creator's reads and revenue on the other platforms."""
    totals = pairs.groupBy("creator_id").agg(
        F.sum("reads").alias("_reads_all"), F.sum(F.col("revenue").cast("double")).alias("_revenue_all"),
        F.count_if(F.col("reads") > 0).alias("platforms_active"))
    e_p = pairs.groupBy("platform").agg(F.avg("e").alias("e_p"))
    rows = (pairs.join(quality.drop("reads", "as_of_date"), "creator_id", "left")
                 .join(totals, "creator_id", "left").join(e_p, "platform", "left")
                 .withColumn("reads_other", F.col("_reads_all") - F.col("reads"))
                 .withColumn("revenue_other", F.col("_revenue_all") - F.col("revenue").cast("double"))
                 .select("*", *[(F.col("platform") == p).cast("double").alias(f"is_{p}") for p in platforms],
                         *[(F.col("category") == c).cast("double").alias(f"cat_{c}") for c in categories]))
    return rows.select("creator_id", "platform", "as_of_date", *[F.col(c).cast("double").alias(c) for c in spec.features])


def pair_rows(events: DataFrame, t: dt.date, horizon: int, lookback_days: int, period_days: int,
              weights: Mapping[str, float], spec: ModelSpec, platforms: list[str], categories: list[str]) -> DataFrame:
    """One row per (creator, platform) with events in the lookback ending at ``t``: features as
    of ``t``, label (R_C of the next horizon)."""
    lookback = gold.window(events, gold.lookback_start(t, lookback_days), t)
    period_start = gold.lookback_start(t, period_days)
    pairs = gold.creator_platform_period(gold.window(lookback, period_start, t), lookback, t, period_start)
    quality = gold.creator_quality(lookback, t, weights)
    frame = pair_model_frame(quality, pairs, spec, platforms, categories)
    return _with_target(frame, events.where(F.col("creator_id").isNotNull()), ["creator_id", "platform"], t,
                        horizon).select(*spec.keys, "as_of_date", *spec.features, "label")


def stratified_sample(rows: DataFrame, strata: list[str], cap: int, seed: int, keys: list[str]) -> DataFrame:
    """At most about ``cap`` rows, the same number aimed at every stratum (all rows of a small
    one), each kept row weighted by 1 / its stratum's sampling fraction so that weighted sums
    and means stay unbiased. The draw is a hash of (seed, keys): the same rows whatever the
    partitioning."""
    counts = {tuple(r[:-1]): r[-1] for r in rows.groupBy(*strata).count().collect()}
    if not counts:
        return rows.withColumn("weight", F.lit(1.0))
    quota = cap / len(counts)
    fraction = {k: min(1.0, quota / n) for k, n in counts.items()}
    frac_col = F.lit(1.0)
    for k, f in fraction.items():
        match = F.lit(True)
        for col, value in zip(strata, k):
            match = match & (F.col(col).isNull() if value is None else (F.col(col) == F.lit(value)))
        frac_col = F.when(match, F.lit(f)).otherwise(frac_col)
    draw = (F.xxhash64(F.lit(seed), *[F.col(k).cast("string") for k in keys]) % 1_000_000).cast("double")
    u = F.abs(draw) / 1_000_000.0
    return (rows.withColumn("_fraction", frac_col).where(u < F.col("_fraction"))
                .withColumn("weight", 1.0 / F.col("_fraction")).drop("_fraction"))
