"""The btyd dynamics of the generator (transforms/generate.py): cohorts, gamma rates, beta
dropout and the weekday rhythm, and the expected revenue the truth gives for any horizon."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F

from core.settings import GenerateSettings
from core.tables import select_contract
from evaluation import generator as gen
from evaluation.truth import TRUTH_PEOPLE

CFG = GenerateSettings(dynamics="btyd", users=400, creators=12, sessions=8_000, days=120,
                       start_date=dt.date(2026, 1, 5))  # a Monday


@pytest.fixture(scope="module")
def built(spark):
    frames = gen.build(spark, CFG)
    people = frames["people"].cache()
    events = frames["events"].cache()
    yield frames, people, events
    people.unpersist()
    events.unpersist()


def test_people_arrive_in_cohorts_visit_at_their_rate_and_leave(built):
    _, people, events = built
    p = people.toPandas()
    assert len(p) == CFG.users
    # a share there on the first day, the rest in weekly cohorts over the first 60 % of the period
    first_day = (p["acquired_on"] == CFG.start_date).mean()
    assert 0.3 < first_day < 0.45
    assert p["acquired_on"].max() < CFG.start_date + dt.timedelta(days=gen.acquisition_days(CFG))
    # nobody has a session before arriving, and whoever left has no session after leaving
    first = events.groupBy("person_id").agg(F.min("ts_epoch").alias("first"), F.max("ts_epoch").alias("last")).toPandas()
    both = first.merge(p, on="person_id")
    arrived = both["acquired_on"].map(lambda d: dt.datetime.combine(d, dt.time(), dt.timezone.utc).timestamp())
    assert (both["first"] >= arrived).all()
    gone = both[both["left_at"].notna()]
    assert len(gone) > 0.2 * len(p)
    assert (gone["last"] <= gone["left_at"].map(lambda t: t.timestamp()) + 4 * 3600).all()  # a session's events run on
    # dropout and rates follow the personas: lapsed people leave soonest, power learners visit most
    by = p.groupby("persona").agg(dropout=("dropout_p", "mean"), rate=("rate_per_day", "mean"))
    assert by["dropout"].idxmax() == "lapsed" and by["rate"].idxmax() == "power_learners"
    # the sessions drawn come out near the configured number (with 12 creators some platform x
    # category has no item, so fewer of them hold events)
    assert p["sessions"].sum() == pytest.approx(CFG.sessions, rel=0.1)
    assert events.select("sid").distinct().count() <= p["sessions"].sum()
    select_contract(people, TRUTH_PEOPLE)  # the truth table's contract holds


def test_weekends_are_busier(built):
    _, _, events = built
    days = (events.select("sid", F.dayofweek(F.timestamp_seconds("ts_epoch")).alias("dow")).distinct()
                  .groupBy("dow").count().toPandas().set_index("dow")["count"])
    assert days[7] > days[2] * 1.1  # Saturday (7) over Monday (2): WEEKDAY says 1.2 against 0.9


def test_the_same_people_whatever_the_partitioning(spark, built):
    _, people, _ = built
    again = gen.build(spark, CFG)["people"].repartition(7).toPandas().sort_values("person_id").reset_index(drop=True)
    first = people.toPandas().sort_values("person_id").reset_index(drop=True)
    assert again.equals(first)


def test_expected_revenue_is_the_btyd_formula(spark):
    # GIVEN three people by hand: one still there, one who left before as_of, one who arrives later
    people = spark.createDataFrame([
        (1, "x", dt.date(2026, 1, 5), 0.5, 0.1, 1.0, 10, None, 2.0),
        (2, "x", dt.date(2026, 1, 5), 0.5, 0.1, 1.0, 10, dt.datetime(2026, 2, 1, 12), 2.0),
        (3, "x", dt.date(2026, 3, 20), 0.5, 0.1, 1.0, 0, None, 2.0),
    ], TRUTH_PEOPLE.schema)
    as_of, horizon = dt.date(2026, 3, 1), 14  # two whole weeks: the weekday weights sum to 14
    out = {r.person_id: r.expected_revenue for r in
           gen.expected_revenue(people, CFG.start_date, CFG.days, as_of, horizon).collect()}
    # THEN (1 - exp(-L p)) / p sessions, L = 0.5 * 14, times 2.0 a session; 0 for who left; none for later
    assert out[1] == pytest.approx(-np.expm1(-0.5 * 14 * 0.1) / 0.1 * 2.0)
    assert out[2] == 0.0 and 3 not in out
    # and it refuses a horizon the generated period does not cover
    with pytest.raises(ValueError, match="runs past the generated period"):
        gen.expected_revenue(people, CFG.start_date, CFG.days, dt.date(2026, 4, 30), 30)


def test_spend_per_session_matches_what_the_generator_then_does(built):
    # The truth's expected spend of a session times the sessions drawn, against the revenue
    # the events realised over the whole period: one draw of ~8,000 sessions, so within the
    # noise of a few hundred purchases.
    _, people, events = built
    real = events.agg(F.sum("amount_cny")).first()[0]
    expected = people.agg(F.sum(F.col("spend_per_session") * F.col("sessions"))).first()[0]
    assert expected == pytest.approx(real, rel=0.1)


def test_raw_data_of_the_previous_release_still_counts_as_generated_with_steady_settings():
    # GIVEN the stamp the previous release wrote (no generate.dynamics)
    import json

    from core.settings import Settings
    from jobs import generate as job

    base = {"as_of": dt.date(2026, 6, 30)}
    steady = Settings(**base, generate=GenerateSettings(dynamics="steady"))
    old = json.loads(job._stamp(steady))
    del old["generate"]["dynamics"]
    # THEN it matches the steady generator's settings, and not the btyd one's
    assert job._same_settings(json.dumps(old), steady)
    assert not job._same_settings(json.dumps(old), Settings(**base, generate=GenerateSettings(dynamics="btyd")))
