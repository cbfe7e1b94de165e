"""Aggregate silver.events into gold for one --as-of date.

Daily facts (gold.user_platform_daily, gold.creator_platform_daily, gold.platform_daily) are
incremental: only the dates whose silver rows changed since the last run (read from Delta's
change data feed) and the new dates up to --as-of are recomputed, each replacing its date
partitions. The as-of snapshots (gold.user_features, gold.creator_quality,
gold.creator_platform_period, gold.platform_period) replace their as_of_date slice, so a
rerun never duplicates. gold.aggregate_log records the silver version each run read.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys

from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import lake
from core.errors import MissingInput, NotEnoughData
from core.settings import Settings
from core.tables import (
    AGGREGATE_LOG,
    CREATOR_PLATFORM_DAILY,
    CREATOR_PLATFORM_PERIOD,
    CREATOR_QUALITY,
    EVENTS,
    PLATFORM_DAILY,
    PLATFORM_PERIOD,
    USER_FEATURES,
    USER_PLATFORM_DAILY,
)
from jobs.cli import Summary, run_job
from transforms import gold

log = logging.getLogger(__name__)


def _dates_sql(dates: list[dt.date]) -> str:
    return ", ".join(f"DATE'{d.isoformat()}'" for d in dates)


def plan_daily(spark: SparkSession, settings: Settings, silver: DataFrame, silver_version: int) -> tuple[list[dt.date], dt.date, bool]:
    """(dates to recompute, horizon, full?) for the daily tables.

    The daily tables hold every date up to the horizon (the latest as_of aggregated so far).
    A rerun recomputes the dates whose silver rows changed since the version it last read,
    plus the dates between the previous horizon and this as_of."""
    as_of = settings.as_of
    last = None
    if lake.exists(spark, settings, AGGREGATE_LOG):
        last = lake.read(spark, settings, AGGREGATE_LOG).agg(
            F.max("silver_version").alias("version"), F.max("horizon_date").alias("horizon")).first()
    if last is None or last["version"] is None:
        return _all_dates(silver, as_of), as_of, True
    horizon = max(as_of, last["horizon"])
    dates = {last["horizon"] + dt.timedelta(days=i) for i in range(1, (as_of - last["horizon"]).days + 1)}
    if silver_version > last["version"]:
        try:
            changed = lake.changes(spark, settings, EVENTS, last["version"] + 1, silver_version)
            dates |= {r.event_date for r in changed.where(F.col("event_date") <= F.lit(horizon))
                                                   .select("event_date").distinct().collect()}
        except AnalysisException as err:
            log.warning("no change feed for silver.events versions %s..%s (%s): recomputing every date",
                        last["version"] + 1, silver_version, str(err).splitlines()[0])
            return _all_dates(silver, horizon), horizon, True
    return sorted(dates), horizon, False


def _all_dates(silver: DataFrame, horizon: dt.date) -> list[dt.date]:
    first = silver.agg(F.min("event_date")).first()[0]
    if first is None or first > horizon:
        return []
    return [first + dt.timedelta(days=i) for i in range((horizon - first).days + 1)]


def execute(spark: SparkSession, settings: Settings, summary: Summary) -> Summary:
    as_of, cfg = settings.as_of, settings.gold
    if not lake.exists(spark, settings, EVENTS):
        raise MissingInput(f"silver.events not found under {settings.lake_root}: run jobs.refine first")
    silver_version = lake.version(spark, settings, EVENTS)
    # One pinned snapshot for the whole run: a refine committing meanwhile cannot mix in.
    silver = lake.read(spark, settings, EVENTS, as_of_version=silver_version)
    # The platforms the data has, not every mapping in the folder: a user's lake never shows a
    # platform it holds nothing of.
    platforms = gold.platforms_in(silver)

    dates, horizon, full = plan_daily(spark, settings, silver, silver_version)
    summary.note(f"silver.events version {silver_version}; daily dates recomputed: {len(dates)}"
                 + (" (full)" if full else "") + (f" {dates[0]}..{dates[-1]}" if dates else ""))
    summary.count("daily dates recomputed", len(dates))
    if dates:
        slice_sql = f"date <= DATE'{horizon.isoformat()}'" if full else f"date IN ({_dates_sql(dates)})"
        daily = silver.where(F.col("event_date") <= F.lit(horizon)) if full else silver.where(F.col("event_date").isin(dates))
        for table, frame in ((USER_PLATFORM_DAILY, gold.user_platform_daily(daily)),
                             (CREATOR_PLATFORM_DAILY, gold.creator_platform_daily(daily)),
                             (PLATFORM_DAILY, gold.platform_daily(daily, platforms, dates))):
            log.info("writing %s for %d dates", table.qualified, len(dates))
            summary.table(table.qualified, lake.replace_where(spark, settings, table, frame, slice_sql))

    if not lake.exists(spark, settings, USER_PLATFORM_DAILY):
        raise NotEnoughData(f"silver.events has no event on or before {as_of}: nothing to aggregate "
                                "(check --as-of, or run jobs.refine)")

    start = gold.lookback_start(as_of, cfg.lookback_days)
    period_start = gold.lookback_start(as_of, cfg.period_days)
    # Features, Q and E all read the lookback window: scan it once, cached on local disk (kept in
    # memory, its blocks can run a small driver out of heap; on disk it is as fast).
    lookback = gold.window(silver, start, as_of).persist(StorageLevel.DISK_ONLY)
    period = gold.window(lookback, period_start, as_of)
    history = lake.read(spark, settings, USER_PLATFORM_DAILY)
    as_of_slice = f"as_of_date = DATE'{as_of.isoformat()}'"

    features = gold.user_features(lookback, history, as_of, cfg.period_days)
    summary.table(USER_FEATURES.qualified, lake.replace_where(spark, settings, USER_FEATURES, features, as_of_slice))
    quality = gold.creator_quality(lookback, as_of, cfg.quality_weights)
    summary.table(CREATOR_QUALITY.qualified, lake.replace_where(spark, settings, CREATOR_QUALITY, quality, as_of_slice))
    pairs = gold.creator_platform_period(period, lookback, as_of, period_start)
    summary.table(CREATOR_PLATFORM_PERIOD.qualified,
                  lake.replace_where(spark, settings, CREATOR_PLATFORM_PERIOD, pairs, as_of_slice))
    # E(P) averages the E(P, C) just written: read them back rather than recompute the ranking.
    pairs = lake.read(spark, settings, CREATOR_PLATFORM_PERIOD).where(F.col("as_of_date") == F.lit(as_of))
    plat = gold.platform_period(period, pairs, platforms, as_of, period_start)
    summary.table(PLATFORM_PERIOD.qualified, lake.replace_where(spark, settings, PLATFORM_PERIOD, plat, as_of_slice))

    lookback.unpersist()
    log_row = spark.createDataFrame([(as_of, silver_version, horizon, len(dates), full)], AGGREGATE_LOG.schema)
    summary.table(AGGREGATE_LOG.qualified, lake.upsert(spark, settings, AGGREGATE_LOG, log_row))

    _closing_notes(spark, settings, summary, start, period_start)
    return summary


def _closing_notes(spark: SparkSession, settings: Settings, summary: Summary, start, period_start) -> None:
    """What the run wrote for --as-of: users and creators scored, the windows, each platform's E(P) and revenue."""
    as_of, cfg = settings.as_of, settings.gold
    features, quality, plat = (lake.read(spark, settings, t).where(F.col("as_of_date") == F.lit(as_of))
                               for t in (USER_FEATURES, CREATOR_QUALITY, PLATFORM_PERIOD))
    summary.count("users with features", features.count())
    summary.count("creators scored (Q)", quality.where(F.col("q").isNotNull()).count())
    summary.note(f"windows: features/Q/E {start}..{as_of} ({cfg.lookback_days} d), "
                 f"K,R,X,R_C,R_P {period_start}..{as_of} ({cfg.period_days} d)")
    for r in plat.orderBy("platform").collect():
        e_p = "n/a" if r.e_p is None else f"{r.e_p:.3f}"
        summary.note(f"{r.platform:<12} E(P) {e_p}  R_P {r.r_p:>12,.2f}  revenue {float(r.revenue):>12,.2f}  "
                     f"active users {r.active_users:,}  ARPU {r.arpu or 0:,.2f}")


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.aggregate", __doc__, argv, execute)


if __name__ == "__main__":
    sys.exit(main())
