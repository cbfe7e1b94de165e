"""Silver -> gold: daily facts, point-in-time user features, creator x platform metrics, Q and E.

Pure functions over ``silver.events``-shaped DataFrames. Dates and windows are parameters;
the caller selects the events a function may see (see :func:`window`), which is what makes
the features point-in-time. Built-in Spark functions only.

Definitions (DESIGN.md, "Gold" and "Synergy"):

* reads = ``view`` + ``play`` events; revenue = sum of ``amount`` (refunds are negative, so
  revenue is net); social actions = like + comment + share + follow.
* creator x platform over the period: K = distinct items with any event, R = reads / K,
  X = revenue / reads, R_C = K * R * X (= net revenue; when there were no reads R = 0, X is
  undefined and R_C is the net revenue, i.e. refunds of earlier sales).
* platform: M = distinct items recommended (shown, or read through a recommendation),
  W = recommendation-driven reads / M, Y = revenue / reads, R_P = M * W * Y.
* Q(C): completion rate, (likes + shares + comments) / reads, repeat readers, purchases / reads
  and 1 - refunds / purchases, each mid-ranked within the creator's category to [0, 1], then a
  weighted mean.
* E(P, C): the recommendation funnel of P for C: clicks / impressions, recommendation-driven
  share of reads and of sales, each mid-ranked across all (platform, creator) pairs, then the
  mean. DESIGN.md says "ranked within the platform"; a within-platform rank has a mean of 0.5
  on every platform, so E(P), its platform mean, could not tell platforms apart.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from core.sources import UNIFIED_EVENT_TYPES
from core.tables import (
    CREATOR_PLATFORM_DAILY,
    CREATOR_PLATFORM_PERIOD,
    CREATOR_QUALITY,
    PLATFORM_DAILY,
    PLATFORM_PERIOD,
    REVENUE,
    USER_FEATURES,
    USER_PLATFORM_DAILY,
    select_contract,
)

READS = ("view", "play")
SOCIAL = ("like", "comment", "share", "follow")
PAID = ("purchase", "subscribe")


def window(events: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """The events dated start..end (inclusive); filters on the partition column."""
    return events.where(F.col("event_date").between(F.lit(start), F.lit(end)))


def lookback_start(as_of: dt.date, days: int) -> dt.date:
    """First day of the ``days``-long window that ends on ``as_of``."""
    return as_of - dt.timedelta(days=days - 1)


# -- building blocks ------------------------------------------------------------
def _is(*types: str) -> Column:
    return F.col("event_type").isin(*types)


def _n(cond: Column) -> Column:
    return F.count_if(cond)


def _ratio(num: Column, den: Column) -> Column:
    """num / den as a double, null when den is 0 (a rate with no evidence)."""
    return F.when(den > 0, num.cast("double") / den.cast("double"))


def _clip(rate: Column) -> Column:
    """A rate clipped to [0, 1]; null stays null."""
    return F.when(rate.isNotNull(), F.least(F.greatest(rate, F.lit(0.0)), F.lit(1.0)))


def _money(cond: Column | None = None) -> Column:
    amount = F.col("amount") if cond is None else F.when(cond, F.col("amount"))
    return F.coalesce(F.sum(amount), F.lit(0)).cast(REVENUE)


def unit_rank(value: Column, *partition: str) -> Column:
    """Mid-rank of ``value`` scaled to [0, 1] within ``partition`` (ties share the mean rank;
    a partition of one gets 0.5; nulls stay null and do not count)."""
    part = [*partition, value.isNull()]
    ordered = Window.partitionBy(*part).orderBy(value)
    n = F.count(F.lit(1)).over(Window.partitionBy(*part))
    low = F.percent_rank().over(ordered) * (n - 1)            # rank - 1 of the first tie
    high = F.cume_dist().over(ordered) * n - 1                 # rank - 1 of the last tie
    return F.when(value.isNull(), F.lit(None).cast("double")) \
            .when(n == 1, F.lit(0.5)) \
            .otherwise((low + high) / 2 / (n - 1))


def _mean_of(ranks: Mapping[str, float]) -> Column:
    """Weighted mean of the non-null rank columns; null if all are null."""
    num = sum((F.coalesce(F.col(c) * w, F.lit(0.0)) for c, w in ranks.items()), F.lit(0.0))
    den = sum((F.when(F.col(c).isNotNull(), F.lit(w)).otherwise(F.lit(0.0)) for c, w in ranks.items()), F.lit(0.0))
    return F.when(den > 0, num / den)


def _share_map(df: DataFrame, key: str, by: str, weight: str | None = None) -> DataFrame:
    """``by`` -> map(key value -> share of rows (or of ``weight``)), entries sorted by key."""
    measure = F.count(F.lit(1)) if weight is None else F.sum(weight)
    counts = df.where(F.col(key).isNotNull()).groupBy(by, key).agg(measure.cast("double").alias("n"))
    total = F.sum("n").over(Window.partitionBy(by))
    return (counts.withColumn("share", F.col("n") / total)
                  .groupBy(by).agg(F.map_from_entries(F.array_sort(F.collect_list(F.struct(key, "share"))))
                                   .alias(f"{key}_share")))


def platforms_in(events: DataFrame) -> list[str]:
    """The platforms that have events, sorted."""
    return sorted(r.platform for r in events.select("platform").distinct().collect())


def map_keys_in(df: DataFrame, column: str) -> list[str]:
    """The keys found in a map column (e.g. the platforms of ``platform_share``), sorted."""
    return sorted(r[0] for r in df.select(F.explode(F.map_keys(column))).distinct().collect())


# -- daily facts ---------------------------------------------------------------
def user_platform_daily(events: DataFrame) -> DataFrame:
    """One row per (user, platform, date) with any event: counts by type, watch time, revenue."""
    read = _is(*READS)
    out = events.groupBy("user_id", "platform", F.col("event_date").alias("date")).agg(
        F.count(F.lit(1)).alias("events"),
        *[_n(_is(t)).alias(f"{t}s") for t in UNIFIED_EVENT_TYPES],  # user_platform_daily: <type>s
        _n(read & F.col("is_recommended")).alias("rec_reads"),
        F.coalesce(F.sum(F.when(read, F.col("duration_s"))), F.lit(0.0)).alias("watch_seconds"),
        _money().alias("revenue"),
    )
    return select_contract(out, USER_PLATFORM_DAILY)


def creator_platform_daily(events: DataFrame) -> DataFrame:
    """One row per (creator, platform, date) with any event of the creator's content."""
    read, rec = _is(*READS), F.col("is_recommended")
    out = events.where(F.col("creator_id").isNotNull()).groupBy(
        "creator_id", "platform", F.col("event_date").alias("date")).agg(
        F.countDistinct("content_id").alias("items_active"),
        F.countDistinct(F.when(read, F.col("user_id"))).alias("readers"),
        _n(read).alias("reads"), _n(read & rec).alias("rec_reads"),
        _n(_is("impression")).alias("impressions"), _n(_is("click")).alias("clicks"),
        _n(_is("complete")).alias("completes"), _n(_is(*SOCIAL)).alias("social_actions"),
        _n(_is("purchase")).alias("purchases"), _n(_is("refund")).alias("refunds"),
        _money().alias("revenue"), _money(rec).alias("rec_revenue"),
    )
    return select_contract(out, CREATOR_PLATFORM_DAILY)


def _platform_measures() -> list[Column]:
    read, rec = _is(*READS), F.col("is_recommended")
    return [
        F.countDistinct(F.when(rec & (_is("impression") | read), F.col("content_id"))).alias("m_items_recommended"),
        _n(read & rec).alias("rec_reads"),
        _n(read).alias("reads"),
        _money().alias("revenue"),
        F.countDistinct("user_id").alias("dau"),
        F.countDistinct(F.when(_is(*PAID) & (F.col("amount") > 0), F.col("user_id"))).alias("paying_users"),
    ]


def _with_mwy(df: DataFrame, users: str) -> DataFrame:
    m, w, y = F.col("m_items_recommended"), F.col("w_reads_per_item"), F.col("y_revenue_per_read")
    return (df.withColumn("w_reads_per_item", _ratio(F.col("rec_reads"), m))
              .withColumn("y_revenue_per_read", _ratio(F.col("revenue"), F.col("reads")))
              # no recommended reads (or no reads at all): no revenue from promotion
              .withColumn("r_p", F.coalesce(m * w * y, F.lit(0.0)))
              .withColumn("arpu", _ratio(F.col("revenue"), F.col(users))))


def platform_daily(events: DataFrame, platforms: list[str], dates: list[dt.date]) -> DataFrame:
    """One row per platform and date in ``dates`` (zeros on a day without events)."""
    spark = events.sparkSession
    spine = spark.createDataFrame([(p, d) for p in platforms for d in dates], "platform string, date date")
    measured = events.groupBy("platform", F.col("event_date").alias("date")).agg(*_platform_measures())
    zeros = {"m_items_recommended": 0, "rec_reads": 0, "reads": 0, "dau": 0, "paying_users": 0}
    out = (spine.join(measured, ["platform", "date"], "left").fillna(zeros)
                .withColumn("revenue", F.coalesce(F.col("revenue"), F.lit(0).cast(REVENUE))))
    return select_contract(_with_mwy(out, "dau"), PLATFORM_DAILY)


# -- point-in-time user features ----------------------------------------------------
def purchase_rhythm(history: DataFrame, as_of: dt.date, period_days: int) -> DataFrame:
    """Per user with a paid day on or before ``as_of``: the purchase history in the terms of
    buy-till-you-die models, and how the latest purchases compare with the user's own rhythm.

    ``history``: ``gold.user_platform_daily`` rows. A paid day is a day with a purchase or a
    subscription on any platform; its spend is that day's net revenue. Days, not events, are
    the unit (as in BTYD's RFM summaries): several orders on one day are one transaction.

    * purchase_days: paid days (BTYD frequency = purchase_days - 1, the repeat transactions);
    * purchase_recency_days, purchase_age_days: days since the last and the first paid day
      (age is BTYD's T; its recency is purchase_age_days - purchase_recency_days);
    * ipt_mean_days, ipt_cv: mean and coefficient of variation of the days between paid days
      (null below two and three paid days);
    * overdue: purchase_recency_days / ipt_mean_days, how late the next purchase is against the
      user's own rhythm (above 1: later than usual, the first sign of dropout);
    * repeat_spend_mean: mean spend of the paid days after the first (the Gamma-Gamma input);
    * spend_trend: (R1 - R0) / (|R1| + |R0|) with R1 the revenue of the last ``period_days``
      and R0 of the ``period_days`` before them, in [-1, 1] (null when both are 0).
    """
    paid = (history.where(F.col("date") <= F.lit(as_of))
                   .where((F.col("purchases") + F.col("subscribes")) > 0)
                   .groupBy("user_id", "date").agg(F.sum(F.col("revenue").cast("double")).alias("spend")))
    by_user = Window.partitionBy("user_id").orderBy("date")
    gaps = (paid.withColumn("_gap", F.datediff(F.col("date"), F.lag("date").over(by_user)))
                .withColumn("_repeat_spend", F.when(F.col("_gap").isNotNull(), F.col("spend"))))
    recent = as_of - dt.timedelta(days=period_days)
    before = as_of - dt.timedelta(days=2 * period_days)
    r1 = F.sum(F.when(F.col("date") > F.lit(recent), F.col("revenue").cast("double")))
    r0 = F.sum(F.when((F.col("date") > F.lit(before)) & (F.col("date") <= F.lit(recent)),
                      F.col("revenue").cast("double")))
    trend = (history.where(F.col("date") <= F.lit(as_of)).where(F.col("date") > F.lit(before))
                    .groupBy("user_id").agg(F.coalesce(r1, F.lit(0.0)).alias("_r1"), F.coalesce(r0, F.lit(0.0)).alias("_r0"))
                    .select("user_id", _ratio(F.col("_r1") - F.col("_r0"), F.abs("_r1") + F.abs("_r0")).alias("spend_trend")))
    ipt_mean = F.avg("_gap")
    rhythm = gaps.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("purchase_days"),
        F.datediff(F.lit(as_of), F.max("date")).alias("purchase_recency_days"),
        F.datediff(F.lit(as_of), F.min("date")).alias("purchase_age_days"),
        ipt_mean.alias("ipt_mean_days"),
        F.when(F.count("_gap") >= 2, F.stddev_pop("_gap") / ipt_mean).alias("ipt_cv"),
        F.avg("_repeat_spend").alias("repeat_spend_mean"),
    )
    return (rhythm.withColumn("overdue", _ratio(F.col("purchase_recency_days").cast("double"), F.col("ipt_mean_days")))
                  .join(trend, "user_id", "left"))


def user_features(lookback: DataFrame, history: DataFrame, as_of: dt.date, period_days: int) -> DataFrame:
    """The feature row of every user seen on or before ``as_of``.

    ``lookback``: the events of the lookback window ending at ``as_of`` (see :func:`window`).
    ``history``: ``gold.user_platform_daily`` rows dated on or before ``as_of`` (recency, tenure,
    and the purchase rhythm of :func:`purchase_rhythm`, which looks at the whole history).
    A user with no events in the window keeps zero counts and null rates; a user who never
    paid has purchase_days 0 and null rhythm.
    """
    read, rec = _is(*READS), F.col("is_recommended")
    recent_from = as_of - dt.timedelta(days=period_days - 1)
    seen = history.where(F.col("date") <= F.lit(as_of)).groupBy("user_id").agg(
        F.min("date").alias("first_date"), F.max("date").alias("last_date"))
    agg = lookback.groupBy("user_id").agg(
        F.countDistinct("event_date").alias("active_days"),
        F.count(F.lit(1)).alias("events"),
        _n(read).alias("reads"),
        F.sum("amount").cast("double").alias("monetary"),
        F.coalesce(F.sum(F.when(F.col("event_date") >= F.lit(recent_from), F.col("amount"))), F.lit(0))
         .cast("double").alias("monetary_recent"),
        _n(_is("purchase")).alias("orders"),
        F.sum(F.when(_is("purchase"), F.col("amount"))).cast("double").alias("_order_value"),
        _n(_is("subscribe")).alias("subscriptions"),
        (F.coalesce(F.sum(F.when(read, F.col("duration_s"))), F.lit(0.0)) / 3600).alias("watch_hours"),
        _n(_is("complete")).alias("_completes"),
        _n(_is("impression")).alias("rec_impressions"),
        _n(_is("click")).alias("_clicks"),
        _n(_is("purchase") & rec).alias("_rec_purchases"),
        _n(_is("refund")).alias("_refunds"),
        _n(_is(*SOCIAL)).alias("social_actions"),
    )
    creator_reads = (lookback.where(read & F.col("creator_id").isNotNull())
                     .groupBy("user_id", "creator_id").agg(F.count(F.lit(1)).cast("double").alias("n")))
    hhi = (creator_reads.withColumn("s", F.col("n") / F.sum("n").over(Window.partitionBy("user_id")))
                        .groupBy("user_id").agg(F.sum(F.col("s") * F.col("s")).alias("creator_hhi")))
    empty = F.create_map().cast("map<string,double>")
    counts = ["active_days", "events", "reads", "orders", "subscriptions", "platforms_used", "rec_impressions",
              "_completes", "_clicks", "_rec_purchases", "_refunds", "social_actions"]
    out = (seen.join(agg, "user_id", "left")
               .join(_share_map(lookback, "platform", "user_id"), "user_id", "left")
               .join(_share_map(lookback, "category", "user_id"), "user_id", "left")
               .join(hhi, "user_id", "left")
               .join(purchase_rhythm(history, as_of, period_days), "user_id", "left")
               # the distinct platforms are the share map's keys: a second distinct count in the
               # aggregation above makes Spark expand every row (at 10^7 events the whole of
               # user_features took 41.9 s with it, 33.3 s without)
               .withColumn("platforms_used", F.when(F.col("platform_share").isNotNull(), F.size("platform_share")))
               .fillna(0, subset=[*counts, "purchase_days"])
               .fillna(0.0, subset=["monetary", "monetary_recent", "watch_hours"])
               .select(
                   "*",
                   F.lit(as_of).alias("as_of_date"),
                   F.datediff(F.lit(as_of), F.col("last_date")).alias("recency_days"),
                   F.datediff(F.lit(as_of), F.col("first_date")).alias("tenure_days"),
                   _ratio(F.col("_order_value"), F.col("orders")).alias("avg_order_value"),
                   _ratio(F.col("_completes"), F.col("reads")).alias("completion_rate"),
                   _ratio(F.col("_clicks"), F.col("rec_impressions")).alias("rec_ctr"),
                   _ratio(F.col("_rec_purchases"), F.col("_clicks")).alias("rec_conversion"),
                   _ratio(F.col("_refunds"), F.col("orders")).alias("refund_rate"),
               )
               .withColumn("platform_share", F.coalesce(F.col("platform_share"), empty))
               .withColumn("category_share", F.coalesce(F.col("category_share"), empty)))
    return select_contract(out, USER_FEATURES)


# -- creators and platforms over a period -------------------------------------------
def creator_quality(lookback: DataFrame, as_of: dt.date, weights: Mapping[str, float]) -> DataFrame:
    """Q(C) in [0, 1] per creator from cross-platform signals in the lookback window."""
    read = _is(*READS)
    content = lookback.where(F.col("creator_id").isNotNull())
    by_cat = content.where(F.col("category").isNotNull()).groupBy("creator_id", "category").agg(
        F.count(F.lit(1)).alias("n"))
    main_cat = (by_cat.withColumn("i", F.row_number().over(
                    Window.partitionBy("creator_id").orderBy(F.desc("n"), F.asc("category"))))
                      .where("i = 1").select("creator_id", "category"))
    per_reader = content.where(read).groupBy("creator_id", "user_id").agg(F.count(F.lit(1)).alias("n"))
    repeat = per_reader.groupBy("creator_id").agg(_ratio(_n(F.col("n") >= 2), F.count(F.lit(1))).alias("repeat_rate"))
    signals = content.groupBy("creator_id").agg(
        _n(read).alias("reads"),
        _n(_is("complete")).alias("completes"),
        _n(_is("like", "share", "comment")).alias("engaged"),
        _n(_is("purchase")).alias("purchases"),
        _n(_is("refund")).alias("refunds"),
    )
    rates = (signals.join(main_cat, "creator_id", "left").join(repeat, "creator_id", "left")
                    .withColumn("category", F.coalesce(F.col("category"), F.lit("unknown")))
                    # least/greatest skip nulls: clip only defined rates
                    .withColumn("completion_rate", _clip(_ratio(F.col("completes"), F.col("reads"))))
                    .withColumn("engagement_rate", _ratio(F.col("engaged"), F.col("reads")))
                    .withColumn("conversion_rate", _ratio(F.col("purchases"), F.col("reads")))
                    .withColumn("retention_rate",
                                _clip(F.lit(1.0) - _ratio(F.col("refunds"), F.col("purchases")))))
    names = {"completion": "completion_rate", "engagement": "engagement_rate", "repeat": "repeat_rate",
             "conversion": "conversion_rate", "retention": "retention_rate"}
    for key, col in names.items():
        rates = rates.withColumn(f"_rank_{key}", unit_rank(F.col(col), "category"))
    q = _mean_of({f"_rank_{k}": weights.get(k, 0.0) for k in names})
    out = rates.withColumn("q", F.when(F.col("reads") > 0, q)).withColumn("as_of_date", F.lit(as_of))
    return select_contract(out, CREATOR_QUALITY)


def creator_platform_period(period: DataFrame, lookback: DataFrame, as_of: dt.date, period_start: dt.date) -> DataFrame:
    """K, R, X, R_C over the period and E(P, C) from the lookback's recommendation funnel,
    for every (creator, platform) with events in the lookback window."""
    read, rec = _is(*READS), F.col("is_recommended")
    keys = ["creator_id", "platform"]
    money = period.where(F.col("creator_id").isNotNull()).groupBy(*keys).agg(
        F.countDistinct("content_id").alias("k_items"), _n(read).alias("reads"), _money().alias("revenue"))
    funnel = lookback.where(F.col("creator_id").isNotNull()).groupBy(*keys).agg(
        _n(_is("impression")).alias("impressions"), _n(_is("click")).alias("clicks"),
        _n(read & rec).alias("rec_reads"), _n(read).alias("_reads"),
        F.sum(F.when(_is(*PAID) & rec, F.col("amount"))).alias("_rec_sales"),
        F.sum(F.when(_is(*PAID), F.col("amount"))).alias("_sales"),
    )
    k, r, x = F.col("k_items"), F.col("r_reads_per_item"), F.col("x_revenue_per_read")
    out = (funnel.join(money, keys, "left")
                 .fillna(0, subset=["k_items", "reads"])
                 .withColumn("revenue", F.coalesce(F.col("revenue"), F.lit(0).cast(REVENUE)))
                 .withColumn("r_reads_per_item", F.coalesce(_ratio(F.col("reads"), k), F.lit(0.0)))
                 .withColumn("x_revenue_per_read", _ratio(F.col("revenue"), F.col("reads")))
                 .withColumn("r_c", F.when(F.col("reads") > 0, k * r * x).otherwise(F.col("revenue").cast("double")))
                 .withColumn("ctr", _ratio(F.col("clicks"), F.col("impressions")))
                 .withColumn("rec_read_share", _ratio(F.col("rec_reads"), F.col("_reads")))
                 .withColumn("rec_revenue_share", _ratio(F.coalesce(F.col("_rec_sales"), F.lit(0)), F.col("_sales"))))
    for col in ("ctr", "rec_read_share", "rec_revenue_share"):
        out = out.withColumn(f"_rank_{col}", unit_rank(F.col(col)))
    out = (out.withColumn("e", _mean_of({"_rank_ctr": 1.0, "_rank_rec_read_share": 1.0, "_rank_rec_revenue_share": 1.0}))
              .withColumn("as_of_date", F.lit(as_of)).withColumn("period_start", F.lit(period_start)))
    return select_contract(out, CREATOR_PLATFORM_PERIOD)


def platform_period(period: DataFrame, pairs: DataFrame, platforms: list[str], as_of: dt.date,
                    period_start: dt.date) -> DataFrame:
    """M, W, Y, R_P, users and ARPU over the period, and E(P) = mean E(P, C), per platform."""
    days = (as_of - period_start).days + 1
    spine = period.sparkSession.createDataFrame([(p,) for p in platforms], "platform string")
    measured = period.groupBy("platform").agg(
        *_platform_measures(),
        F.countDistinct("user_id", "event_date").alias("_user_days"),
        F.countDistinct("creator_id").alias("creators_active"),
    ).withColumnRenamed("dau", "active_users")
    e_p = pairs.groupBy("platform").agg(F.avg("e").alias("e_p"))
    zeros = {"m_items_recommended": 0, "rec_reads": 0, "reads": 0, "active_users": 0, "paying_users": 0,
             "_user_days": 0, "creators_active": 0}
    out = (spine.join(measured, "platform", "left").join(e_p, "platform", "left").fillna(zeros)
                .withColumn("revenue", F.coalesce(F.col("revenue"), F.lit(0).cast(REVENUE)))
                .withColumn("avg_dau", F.col("_user_days") / F.lit(float(days)))
                .withColumn("as_of_date", F.lit(as_of)).withColumn("period_start", F.lit(period_start)))
    return select_contract(_with_mwy(out, "active_users"), PLATFORM_PERIOD)
