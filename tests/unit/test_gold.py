"""transforms.gold on a tiny hand-built event set; every expected value is worked out by hand
in the comments (as_of 2026-01-10, lookback 10 days from 01-01, period 5 days from 01-06).

    #   date   plat user item creator type        amount  watch  rec
    1   01-07  p1   u1   i1   c1      impression                 y
    2   01-07  p1   u1   i1   c1      click                      y
    3   01-07  p1   u1   i1   c1      view                 600   y
    4   01-07  p1   u1   i1   c1      complete             1000  y
    5   01-07  p1   u1   i1   c1      purchase    100.00         y
    6   01-08  p1   u1   i2   c1      play                 300
    7   01-08  p1   u1   i2   c1      like
    8   01-09  p2   u1   i3   c2      view                 120
    9   01-09  p2   u1   i3   c2      purchase     50.00
    10  01-09  p2   u1   i3   c2      refund      -50.00
    11  01-07  p1   u2   i1   c1      view                 200
    12  01-03  p1   u2   i1   c1      view                 100
    13  01-03  p1   u2   i1   c1      subscribe    30.00
    14  01-08  p2   u2   i4   c3      impression                 y    (c3: no reads at all)
    15  01-08  p2   u2   i4   c3      refund      -20.00         y    (refund of an earlier sale)
    16  01-11  p1   u1   i1   c1      purchase    999.00              (after as_of: must not count)
    17  12-20  p1   u3   i1   c1      view                 50         (before the lookback)
c1 and c2 are "tech", c3 is "art". 01-06 has no event at all (an empty day).
"""
import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from core.sources import UNIFIED_EVENT_TYPES
from core.tables import (
    CREATOR_PLATFORM_PERIOD,
    CREATOR_QUALITY,
    EVENTS,
    PLATFORM_DAILY,
    PLATFORM_PERIOD,
    USER_FEATURES,
    USER_PLATFORM_DAILY,
)
from transforms import gold

AS_OF = dt.date(2026, 1, 10)
START, PERIOD_START = dt.date(2026, 1, 1), dt.date(2026, 1, 6)
WEIGHTS = {"completion": 1.0, "engagement": 1.0, "repeat": 1.0, "conversion": 1.0, "retention": 1.0}
CAT = {"c1": "tech", "c2": "tech", "c3": "art"}
D = lambda day, month=1, year=2026: dt.date(year, month, day)  # noqa: E731

ROWS = [
    (1, D(7), "p1", "u1", "i1", "c1", "impression", 0, None, True),
    (2, D(7), "p1", "u1", "i1", "c1", "click", 0, None, True),
    (3, D(7), "p1", "u1", "i1", "c1", "view", 0, 600.0, True),
    (4, D(7), "p1", "u1", "i1", "c1", "complete", 0, 1000.0, True),
    (5, D(7), "p1", "u1", "i1", "c1", "purchase", "100.00", None, True),
    (6, D(8), "p1", "u1", "i2", "c1", "play", 0, 300.0, False),
    (7, D(8), "p1", "u1", "i2", "c1", "like", 0, None, False),
    (8, D(9), "p2", "u1", "i3", "c2", "view", 0, 120.0, False),
    (9, D(9), "p2", "u1", "i3", "c2", "purchase", "50.00", None, False),
    (10, D(9), "p2", "u1", "i3", "c2", "refund", "-50.00", None, False),
    (11, D(7), "p1", "u2", "i1", "c1", "view", 0, 200.0, False),
    (12, D(3), "p1", "u2", "i1", "c1", "view", 0, 100.0, False),
    (13, D(3), "p1", "u2", "i1", "c1", "subscribe", "30.00", None, False),
    (14, D(8), "p2", "u2", "i4", "c3", "impression", 0, None, True),
    (15, D(8), "p2", "u2", "i4", "c3", "refund", "-20.00", None, True),
    (16, D(11), "p1", "u1", "i1", "c1", "purchase", "999.00", None, False),
    (17, D(20, 12, 2025), "p1", "u3", "i1", "c1", "view", 0, 50.0, False),
]


@pytest.fixture(scope="module")
def events(spark):
    rows = []
    for n, day, plat, user, item, creator, etype, amount, dur, rec in ROWS:
        ts = dt.datetime.combine(day, dt.time(12, 0))
        rows.append((f"{plat}:{n}", plat, str(n), f"a-{user}", user, item, creator, CAT[creator], etype, ts, day,
                     dur, None, Decimal(str(amount)), None, None, rec, None, f"s{n}", "b1", "f"))
    return spark.createDataFrame(rows, EVENTS.schema).cache()


@pytest.fixture(scope="module")
def lookback(events):
    return gold.window(events, START, AS_OF)


@pytest.fixture(scope="module")
def period(events):
    return gold.window(events, PERIOD_START, AS_OF)


def frame(spark, table, rows):
    return spark.createDataFrame(rows, table.schema)


def test_window_bounds_are_inclusive_and_exclude_later_events(lookback, period):
    assert sorted(int(r.source_event_id) for r in lookback.collect()) == list(range(1, 16))
    assert sorted(int(r.source_event_id) for r in period.collect()) == [*range(1, 12), 14, 15]
    assert gold.lookback_start(AS_OF, 10) == START


def test_unit_rank_gives_ties_the_mean_rank_and_skips_nulls(spark):
    df = spark.createDataFrame([("a", 1.0), ("a", 2.0), ("a", 2.0), ("a", 3.0), ("a", None), ("b", 7.0)], "g string, v double")
    got = {(r.g, r.v): r.rank for r in df.select("g", "v", gold.unit_rank(F.col("v"), "g").alias("rank")).collect()}
    # group a: ranks 1, 2.5, 2.5, 4 of 4 -> (rank - 1) / 3; a group of one sits in the middle
    assert got == {("a", 1.0): 0.0, ("a", 2.0): 0.5, ("a", 3.0): 1.0, ("a", None): None, ("b", 7.0): 0.5}


def test_user_platform_daily_by_hand(spark, events):
    def row(user, plat, day, events_, watch=0.0, revenue="0.00", rec_reads=0, **counts):
        names = [f"{t}s" for t in UNIFIED_EVENT_TYPES]
        return (user, plat, day, events_, *[counts.get(n, 0) for n in names], rec_reads, watch, Decimal(revenue))

    expected = frame(spark, USER_PLATFORM_DAILY, [
        row("u1", "p1", D(7), 5, 600.0, "100.00", 1, impressions=1, clicks=1, views=1, completes=1, purchases=1),
        row("u1", "p1", D(8), 2, 300.0, plays=1, likes=1),
        # a refund nets the day's revenue to zero
        row("u1", "p2", D(9), 3, 120.0, "0.00", views=1, purchases=1, refunds=1),
        row("u2", "p1", D(7), 1, 200.0, views=1),
        row("u2", "p1", D(3), 2, 100.0, "30.00", views=1, subscribes=1),
        row("u2", "p2", D(8), 2, 0.0, "-20.00", impressions=1, refunds=1),
        row("u1", "p1", D(11), 1, 0.0, "999.00", purchases=1),
        row("u3", "p1", D(20, 12, 2025), 1, 50.0, views=1),
    ])
    assert_df_equality(gold.user_platform_daily(events), expected, ignore_row_order=True, ignore_nullable=True)


def test_platform_daily_by_hand_including_an_empty_day(spark, events):
    days = [D(6), D(7), D(8)]
    got = gold.platform_daily(gold.window(events, D(6), D(8)), ["p1", "p2"], days)
    zero = lambda p, d: (p, d, 0, 0, None, 0, Decimal("0.00"), None, 0.0, 0, 0, None)  # noqa: E731
    expected = frame(spark, PLATFORM_DAILY, [
        zero("p1", D(6)), zero("p2", D(6)), zero("p2", D(7)),
        # p1 01-07: M = {i1}, rec reads 1 (#3), reads 2 (#3, #11), revenue 100 -> W 1, Y 50, R_P 50;
        # DAU u1, u2; paying u1; ARPU 100 / 2
        ("p1", D(7), 1, 1, 1.0, 2, Decimal("100.00"), 50.0, 50.0, 2, 1, 50.0),
        # p1 01-08: nothing recommended -> W undefined, R_P 0; one read, no revenue
        ("p1", D(8), 0, 0, None, 1, Decimal("0.00"), 0.0, 0.0, 1, 0, 0.0),
        # p2 01-08: i4 shown (M 1) but never read: W 0, Y undefined, R_P 0; the refund makes ARPU -20
        ("p2", D(8), 1, 0, 0.0, 0, Decimal("-20.00"), None, 0.0, 1, 0, -20.0),
    ])
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_creator_daily_counts_readers_and_items(events):
    got = {(r.creator_id, r.platform, r.date): r for r in gold.creator_platform_daily(events).collect()}
    c1 = got[("c1", "p1", D(7))]  # #1-5 and #11
    assert (c1.items_active, c1.readers, c1.reads, c1.rec_reads, c1.impressions, c1.clicks, c1.purchases) == (1, 2, 2, 1, 1, 1, 1)
    assert (c1.revenue, c1.rec_revenue) == (Decimal("100.00"), Decimal("100.00"))
    c3 = got[("c3", "p2", D(8))]
    assert (c3.items_active, c3.readers, c3.reads, c3.refunds, c3.revenue) == (1, 0, 0, 1, Decimal("-20.00"))


def test_creator_platform_period_k_r_x_and_e_by_hand(spark, period, lookback):
    got = gold.creator_platform_period(period, lookback, AS_OF, PERIOD_START)
    expected = frame(spark, CREATOR_PLATFORM_PERIOD, [
        # c1 on p1, period #1-7, #11: K {i1, i2} = 2, reads 3, revenue 100 -> R 1.5, X 33.33, R_C 100.
        # lookback funnel adds #12, #13: CTR 1/1, rec share of reads 1/4, of sales 100/130.
        ("c1", "p1", AS_OF, PERIOD_START, 2, 3, 1.5, Decimal("100.00"), 100 / 3, 100.0, 1, 1, 1,
         1.0, 0.25, 100 / 130, 1.0),
        # c2 on p2: one read, purchase refunded: R_C 0; no impressions -> CTR undefined
        ("c2", "p2", AS_OF, PERIOD_START, 1, 1, 1.0, Decimal("0.00"), 0.0, 0.0, 0, 0, 0,
         None, 0.0, 0.0, 0.0),
        # c3 on p2: a zero-read creator: R 0, X undefined, R_C = its net revenue (the refund)
        ("c3", "p2", AS_OF, PERIOD_START, 1, 0, 0.0, Decimal("-20.00"), None, -20.0, 1, 0, 0,
         0.0, None, None, 0.0),
    ])
    # E ranks over all pairs: CTR c3 0 < c1 1; read share c2 0 < c1 1; sales share c2 0 < c1 1
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_r_c_is_net_revenue(period, lookback):
    got = gold.creator_platform_period(period, lookback, AS_OF, PERIOD_START)
    net = {(r.creator_id, r.platform): float(r.net) for r in
           period.groupBy("creator_id", "platform").agg(F.sum("amount").alias("net")).collect()}
    assert {(r.creator_id, r.platform): round(r.r_c, 6) for r in got.collect()} == net


def test_creator_quality_by_hand(spark, lookback):
    got = gold.creator_quality(lookback, AS_OF, WEIGHTS)
    expected = frame(spark, CREATOR_QUALITY, [
        # c1: reads #3 #6 #11 #12, 1 complete, 1 like, 1 purchase, no refund; u1 and u2 both read twice.
        # Within tech (c1 vs c2) c1 ranks first on completion, engagement, repeat, retention and last
        # on conversion (0.25 < 1.0): Q = 4 / 5.
        ("c1", AS_OF, "tech", 4, 0.25, 0.25, 1.0, 0.25, 1.0, 0.8),
        # c2: one read, its purchase refunded: Q = 1 / 5 (conversion only)
        ("c2", AS_OF, "tech", 1, 0.0, 0.0, 0.0, 1.0, 0.0, 0.2),
        # c3: no reads, no purchases: no evidence, Q undefined
        ("c3", AS_OF, "art", 0, None, None, None, None, None, None),
    ])
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_quality_weights_change_the_mix(lookback):
    only_conversion = {k: (1.0 if k == "conversion" else 0.0) for k in WEIGHTS}
    got = {r.creator_id: r.q for r in gold.creator_quality(lookback, AS_OF, only_conversion).collect()}
    assert got == {"c1": 0.0, "c2": 1.0, "c3": None}


def test_platform_period_by_hand(spark, period, lookback):
    pairs = gold.creator_platform_period(period, lookback, AS_OF, PERIOD_START)
    got = gold.platform_period(period, pairs, ["p1", "p2", "p3"], AS_OF, PERIOD_START)
    expected = frame(spark, PLATFORM_PERIOD, [
        # p1: M {i1}, rec reads 1, reads 3, revenue 100: W 1, Y 33.33, R_P 33.33; users u1 u2 on
        # 3 user-days of 5 -> avg DAU 0.6; paying u1; ARPU 50; creators c1; E(P) = E(c1, p1) = 1
        ("p1", AS_OF, PERIOD_START, 1, 1, 1.0, 3, Decimal("100.00"), 100 / 3, 100 / 3, 2, 0.6, 1, 50.0, 1, 1.0),
        # p2: M {i4}, no rec reads: W 0, R_P 0; reads 1, revenue 50 - 50 - 20 = -20; E(P) = mean(0, 0)
        ("p2", AS_OF, PERIOD_START, 1, 0, 0.0, 1, Decimal("-20.00"), -20.0, 0.0, 2, 0.4, 1, -10.0, 2, 0.0),
        # p3 has no events: zeros, rates undefined
        ("p3", AS_OF, PERIOD_START, 0, 0, None, 0, Decimal("0.00"), None, 0.0, 0, 0.0, 0, None, 0, None),
    ])
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_user_features_by_hand(spark, events, lookback):
    history = gold.user_platform_daily(events)  # includes 01-11: the function must ignore it
    got = gold.user_features(lookback, history, AS_OF, period_days=5).orderBy("user_id")
    empty: dict = {}
    expected = frame(spark, USER_FEATURES, [
        # u1: active 01-07..01-09 (recency 1, tenure 3); 10 events, reads #3 #6 #8; net 100 + 50 - 50;
        # orders #5 #9 (AOV 75); watch 600 + 300 + 120 s; 1 complete / 3 reads; p1 7 of 10 events;
        # reads c1 2, c2 1 -> HHI 4/9 + 1/9; 1 impression, 1 click, 1 recommended purchase; 1 refund / 2 orders
        # rhythm: paid days 01-07 (net 100) and 01-09 (50 - 50 = 0; 01-11 is after as_of): 2 days,
        # last 1 and first 3 days ago, one gap of 2 days (no CV below two gaps), 1 day since the
        # last against a 2-day rhythm (overdue 0.5), repeat spend 0; last 5 days 100, the 5 before 0
        ("u1", AS_OF, 1, 3, 3, 10, 3, 100.0, 100.0, 2, 75.0, 0, 1020 / 3600, 1 / 3, 2,
         {"p1": 0.7, "p2": 0.3}, {"tech": 1.0}, 5 / 9, 1, 1.0, 1.0, 0.5, 1,
         2, 1, 3, 2.0, None, 0.5, 0.0, 1.0),
        # u2: first 01-03, last 01-08; net 30 - 20, of which -20 in the last 5 days; no orders -> AOV,
        # refund rate undefined; an impression without a click: CTR 0, conversion undefined
        # rhythm: one paid day (01-03, the subscription; a refund alone is not a paid day), 7 days
        # ago: no gap, no repeat spend; last 5 days -20, the 5 before 30: trend -50 / 50
        ("u2", AS_OF, 2, 7, 3, 5, 2, 10.0, -20.0, 0, None, 1, 300 / 3600, 0.0, 2,
         {"p1": 0.6, "p2": 0.4}, {"art": 0.4, "tech": 0.6}, 1.0, 1, 0.0, None, None, 0,
         1, 7, 7, None, None, None, None, -1.0),
        # u3: seen once on 12-20, nothing in the window: zero counts, undefined rates, empty maps;
        # never paid: 0 paid days, no rhythm, no trend (no day in the last 10)
        ("u3", AS_OF, 21, 21, 0, 0, 0, 0.0, 0.0, 0, None, 0, 0.0, None, 0, empty, empty, None, 0, None, None, None, 0,
         0, None, None, None, None, None, None, None),
    ])
    assert_approx_df_equality(got, expected, 1e-12, ignore_nullable=True)


def test_purchase_rhythm_by_hand(spark):
    # GIVEN one buyer's daily rows: paid 01-01 (40), 01-03 (10 on p1 + 20 on p2: one paid day),
    # 01-09 (60, and a refund of 15 the same day), a view-only day 01-12, and a paid day after as_of
    cols = ["user_id", "platform", "date", "purchases", "subscribes", "revenue"]
    daily = spark.createDataFrame([
        ("b", "p1", D(1), 1, 0, Decimal("40.00")), ("b", "p1", D(3), 1, 0, Decimal("10.00")),
        ("b", "p2", D(3), 0, 1, Decimal("20.00")), ("b", "p1", D(9), 1, 0, Decimal("45.00")),
        ("b", "p1", D(12), 0, 0, Decimal("0.00")), ("b", "p1", D(20), 1, 0, Decimal("99.00")),
    ], cols)
    got = gold.purchase_rhythm(daily, D(17), period_days=8).first().asDict()
    # THEN three paid days; gaps 2 and 6 days: mean 4, population sd 2, CV 0.5; last paid 8 days
    # ago (overdue 8 / 4 = 2), first 16 days ago; repeat spend (30 + 45) / 2; the last 8 days
    # (01-10..01-17) hold 0, the 8 before (01-02..01-09) 75: trend -1
    assert got == {"user_id": "b", "purchase_days": 3, "purchase_recency_days": 8, "purchase_age_days": 16,
                   "ipt_mean_days": 4.0, "ipt_cv": pytest.approx(0.5), "repeat_spend_mean": 37.5,
                   "overdue": 2.0, "spend_trend": -1.0}


def test_the_benchmarks_duckdb_user_features_equal_golds(spark, events, lookback, tmp_path):
    # The bench times gold.user_features against its DuckDB rewrite (bench/baselines.py); the two
    # must compute the same rows, rhythm included, or the comparison means nothing.
    from bench import baselines

    history = gold.user_platform_daily(events)
    events.write.partitionBy("event_date").parquet(str(tmp_path / "silver"))
    history.write.partitionBy("date").parquet(str(tmp_path / "daily"))
    files = lambda name: [str(p) for p in (tmp_path / name).rglob("*.parquet")]  # noqa: E731
    sql = baselines.user_features_sql(files("silver"), files("daily"), AS_OF, lookback_days=10, period_days=5)
    theirs = baselines.connect().execute(sql).df().set_index("user_id").sort_index()
    ours = gold.user_features(lookback, history, AS_OF, period_days=5).toPandas().set_index("user_id").sort_index()
    assert list(theirs.columns) == list(ours.columns)
    for col in ours.columns:
        if col.endswith("_share"):
            assert [dict(v) for v in theirs[col]] == [dict(v) for v in ours[col]], col
        elif col == "as_of_date":
            assert {str(v)[:10] for v in theirs[col]} == {str(v) for v in ours[col]} == {str(AS_OF)}
        else:
            a, b = ([None if pd.isna(v) else float(v) for v in df[col]] for df in (theirs, ours))
            assert a == [v if v is None else pytest.approx(v) for v in b], col
