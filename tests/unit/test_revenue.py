"""ml.revenue and transforms.training: the regressor learns a planted relation, the metrics and
the gate give worked-out answers, training rows are point-in-time, sampling weights add up."""
import datetime as dt
import math
from decimal import Decimal

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F
from scipy.stats import spearmanr
from sklearn.metrics import r2_score

from core.settings import NetSettings
from core.tables import EVENTS
from ml import revenue
from transforms import gold, training

T0 = dt.date(2026, 1, 10)  # feature date; horizon 5 days -> labels from 01-11 to 01-15
D = lambda day: dt.date(2026, 1, day)  # noqa: E731


def planted(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Zero when x0 <= 0, else exp(1 + 0.8 x1 - 0.5 x2): zero-inflated and heavy-tailed."""
    x = rng.normal(size=(n, 6))
    return x, np.where(x[:, 0] > 0, np.exp(1 + 0.8 * x[:, 1] - 0.5 * x[:, 2]), 0.0)


def test_regressor_learns_a_planted_zero_inflated_relation():
    # GIVEN zero-inflated lognormal-shaped data with a known relation and two useless columns
    rng = np.random.default_rng(0)
    (x, y), (xv, yv), (xt, yt) = planted(3000, rng), planted(800, rng), planted(1500, rng)
    # WHEN the network is trained with early stopping
    fit = revenue.fit(x, y, np.ones(len(y)), xv, yv, np.ones(len(yv)), np.zeros(6, bool), NetSettings(), seed=1)
    predicted = revenue.predict(fit.model, xt)
    # THEN it explains the held-out rows and stopped before the epoch cap with the best weights
    assert r2_score(yt, predicted) > 0.9
    assert fit.best_epoch < len(fit.history) <= NetSettings().max_epochs
    assert min(h[2] for h in fit.history) == pytest.approx(fit.history[fit.best_epoch - 1][2])
    # and the same seed gives the same model
    again = revenue.fit(x, y, np.ones(len(y)), xv, yv, np.ones(len(yv)), np.zeros(6, bool), NetSettings(), seed=1)
    np.testing.assert_allclose(revenue.predict(again.model, xt), predicted, rtol=1e-6)


def test_cross_fitted_ensemble_is_calibrated_on_out_of_fold_predictions():
    rng = np.random.default_rng(1)
    (x, y), (xt, yt) = planted(2400, rng), planted(1000, rng)
    w = rng.choice([1.0, 4.0], len(y))
    fold = np.arange(len(y)) % 3
    crossed = revenue.cross_fit(x, y, w, fold, np.zeros(6, bool), NetSettings(hidden=(32,)), seed=4)
    # one member per fold, each early-stopped on its own fold
    assert len(crossed.model.members) == len(crossed.folds) == 3
    # calibrated out-of-fold predictions add up to the actual weighted total
    assert np.sum(w * crossed.out_of_fold) == pytest.approx(np.sum(w * y), rel=1e-6)
    # the ensemble is the calibration factor times the members' mean, and it generalises
    members = np.mean([revenue.predict(f.model, xt) for f in crossed.folds], axis=0)
    np.testing.assert_allclose(revenue.predict(crossed.model, xt), float(crossed.model.scale) * members, rtol=1e-5)
    assert r2_score(yt, revenue.predict(crossed.model, xt)) > 0.9


def test_the_total_is_calibrated_on_the_rows_asked_for():
    # GIVEN the same relation, but the latest rows (the last third) spend 1.5 times as much:
    # the customer base grew between the training dates
    rng = np.random.default_rng(1)
    x, y = planted(2400, rng)
    latest = np.arange(len(y)) >= 1600
    y = np.where(latest, 1.5 * y, y)
    w, fold = np.ones(len(y)), np.arange(len(y)) % 3
    crossed = revenue.cross_fit(x, y, w, fold, np.zeros(6, bool), NetSettings(hidden=(32,)), seed=4, calibrate=latest)
    # THEN the calibrated total matches the latest rows' total, not the whole training set's
    assert np.sum(crossed.out_of_fold[latest]) == pytest.approx(np.sum(y[latest]), rel=1e-6)
    assert np.sum(crossed.out_of_fold) > 1.05 * np.sum(y)


def test_the_network_imputes_missing_and_log_scales_inside_the_model():
    model = revenue.RevenueNet(2, (4,), 0.0, np.array([True, False]), np.array([1.0, 5.0]), np.zeros(2), np.ones(2))
    x = torch.tensor([[math.e - 1, float("nan")], [-(math.e - 1), 2.0]])
    np.testing.assert_allclose(model.prepare(x).numpy(), [[1.0, 5.0], [-1.0, 2.0]], rtol=1e-6)


def test_metrics_on_a_worked_example():
    actual = np.array([0.0, 10.0, 0.0, 30.0])
    # perfect order: Gini 1; reversed order: Gini -1
    assert revenue.metrics(actual, actual)["gini"] == pytest.approx(1.0)
    assert revenue.metrics(actual, -actual)["gini"] == pytest.approx(-1.0)
    # a constant prediction orders nothing, whatever the row order: Gini 0
    assert revenue.metrics(actual, np.full(4, 7.0))["gini"] == pytest.approx(0.0)
    assert revenue.metrics(actual[::-1], np.full(4, 7.0))["gini"] == pytest.approx(0.0)
    m = revenue.metrics(actual, np.array([5.0, 5.0, 5.0, 25.0]))
    # errors 5, -5, 5, -5: RMSE 5, MAE 5; total 40 vs 40: 0 %
    assert (m["rmse"], m["mae"], m["total_error_pct"]) == pytest.approx((5.0, 5.0, 0.0))


def test_weights_count_as_copies_of_rows():
    rng = np.random.default_rng(3)
    actual, predicted = rng.gamma(0.5, 10, 40), rng.gamma(0.5, 10, 40)
    weight = rng.integers(1, 4, 40)
    copies = np.repeat(np.arange(40), weight)
    weighted = revenue.metrics(actual, predicted, weight.astype(float))
    expanded = revenue.metrics(actual[copies], predicted[copies])
    assert weighted == pytest.approx(expanded)
    assert weighted["spearman"] == pytest.approx(spearmanr(actual[copies], predicted[copies]).statistic)


def test_deciles_cut_the_weighted_population_into_tenths():
    values = np.arange(20.0)
    table = revenue.deciles(values, values, np.ones(20))
    assert table["decile"].tolist() == list(range(1, 11))
    assert table["mean_actual"].tolist() == [0.5 + 2 * i for i in range(10)]
    # weights count as copies: a row of weight 2 fills a decile alone
    weighted = revenue.deciles(np.arange(10.0), np.arange(10.0), np.full(10, 2.0))
    assert weighted["population"].tolist() == [2.0] * 10


def test_the_champion_rule_picks_an_eligible_winner_and_keeps_a_better_champion():
    # GIVEN candidates: torch ranks best but misses the total by more than naive does
    cands = {"torch": {"gini": 0.80, "total_error_pct": 12.0}, "hgb": {"gini": 0.70, "total_error_pct": -6.0},
             "linear": {"gini": 0.60, "total_error_pct": 1.0}, "naive": {"gini": 0.50, "total_error_pct": 8.0}}
    # WHEN no champion exists yet
    first = revenue.choose(cands, None)
    # THEN the eligible (|total error| <= naive's 8 %) with the best Gini wins and is promoted
    assert (first.winner, first.promote) == ("hgb", True)
    assert first.reasons[0] == "winner hgb: Gini 0.7000, highest of eligible hgb, linear, naive"
    assert "torch not eligible: |total error| 12.00% > naive 8.00%" in first.reasons
    # a champion that is eligible on this split and ranks better stays
    kept = revenue.choose(cands, {"gini": 0.72, "total_error_pct": 3.0})
    assert not kept.promote and kept.reasons[-1] == "Gini 0.7000 <= champion 0.7200: the champion stays"
    # a champion whose total error is now worse than naive's is replaced whatever its Gini
    assert revenue.choose(cands, {"gini": 0.95, "total_error_pct": 30.0}).promote
    # naive is always eligible: with every model off on totals, it wins
    off = {k: {**v, "total_error_pct": 50.0} for k, v in cands.items() if k != "naive"}
    assert revenue.choose({**off, "naive": cands["naive"]}, None).winner == "naive"
    # a tie on Gini goes to the network
    tie = {"torch": {"gini": 0.7, "total_error_pct": 1.0}, "hgb": {"gini": 0.7, "total_error_pct": 1.0},
           "naive": {"gini": 0.5, "total_error_pct": 8.0}}
    assert revenue.choose(tie, None).winner == "torch"


def test_naive_baseline_scales_the_last_period_and_informative_drops_flat_columns():
    x = np.array([[1.0, np.nan, 5.0, 2.0], [2.0, np.nan, 5.0, np.nan], [3.0, np.nan, 5.0, 4.0]])
    assert revenue.NaiveRevenue(column=0, factor=3.0).predict(x).tolist() == [3.0, 6.0, 9.0]
    assert revenue.NaiveRevenue(column=3, factor=1.0).predict(x).tolist() == [2.0, 0.0, 4.0]  # missing: no revenue
    assert revenue.informative(x).tolist() == [True, False, False, True]


def test_feature_dates_keep_training_labels_out_of_the_test_window():
    train, test = training.feature_dates(dt.date(2026, 6, 30), dt.date(2026, 3, 1), horizon=30, windows=4, step=7,
                                  min_history=28)
    assert test == dt.date(2026, 5, 31)
    assert train == [dt.date(2026, 4, 10), dt.date(2026, 4, 17), dt.date(2026, 4, 24), dt.date(2026, 5, 1)]
    assert max(train) + dt.timedelta(days=30) <= test
    # too little history drops the early dates
    assert training.feature_dates(dt.date(2026, 6, 30), dt.date(2026, 4, 10), 30, 4, 7, 14)[0] == [dt.date(2026, 4, 24),
                                                                                             dt.date(2026, 5, 1)]


# -- point-in-time rows (Spark) ------------------------------------------------------------
#  date   plat user creator type       amount
#  01-07  p1   u1   c1      view
#  01-08  p1   u1   c1      purchase   100      feature window (with 01-10: monetary 105, recent 105)
#  01-02  p2   u2   c2      view
#  01-03  p2   u2   c2      subscribe   30      outside the 5-day period: naive 0
#  01-10  p1   u1   c1      purchase     5      on t: a feature (monetary 105), not the label
#  01-12  p1   u1   c1      purchase    40      label window (01-11..01-15)
#  01-14  p1   u1   c1      refund     -10      label window
#  01-15  p1   u1   c1      purchase     7      last day of the label window: u1 label 37
#  01-16  p1   u1   c1      purchase   500      after the label window
#  01-12  p1   u3   c1      view                a user first seen after t: no row
EVENTS_ROWS = [
    (D(7), "p1", "u1", "c1", "view", 0), (D(8), "p1", "u1", "c1", "purchase", 100),
    (D(2), "p2", "u2", "c2", "view", 0), (D(3), "p2", "u2", "c2", "subscribe", 30),
    (D(10), "p1", "u1", "c1", "purchase", 5), (D(12), "p1", "u1", "c1", "purchase", 40),
    (D(14), "p1", "u1", "c1", "refund", -10), (D(15), "p1", "u1", "c1", "purchase", 7),
    (D(16), "p1", "u1", "c1", "purchase", 500), (D(12), "p1", "u3", "c1", "view", 0),
]
LATE = [(D(11), "p1", "u1", "c1", "purchase", 999), (D(11), "p2", "u4", "c2", "view", 0),
        (D(13), "p2", "u2", "c1", "view", 0)]
PLATFORMS, CATEGORIES = ["p1", "p2"], ["tech"]


def events(spark, rows):
    data = [(f"e{i}", plat, str(i), f"a-{user}", user, f"i-{creator}", creator, "tech", etype,
             dt.datetime.combine(day, dt.time(12)), day, 60.0 if etype == "view" else None, None,
             Decimal(amount), None, None, False, None, f"s{i}", "b1", "f")
            for i, (day, plat, user, creator, etype, amount) in enumerate(rows)]
    return spark.createDataFrame(data, EVENTS.schema)


def user_table(spark, rows):
    spec = training.user_spec(PLATFORMS, CATEGORIES)
    evs = events(spark, rows)
    df = training.user_rows(evs, gold.user_platform_daily(evs), T0, 5, 10, 5, spec, PLATFORMS, CATEGORIES)
    return {r.user_id: r.asDict() for r in df.collect()}, spec


def test_user_rows_label_the_next_horizon_and_use_nothing_after_t(spark):
    rows, spec = user_table(spark, EVENTS_ROWS)
    assert sorted(rows) == ["u1", "u2"]
    assert (rows["u1"]["label"], rows["u1"]["monetary_recent"], rows["u1"]["monetary"]) == (37.0, 105.0, 105.0)
    assert (rows["u2"]["label"], rows["u2"]["monetary_recent"], rows["u2"]["monetary"]) == (0.0, 0.0, 30.0)
    assert rows["u1"]["platform_p1"] == 1.0 and rows["u2"]["platform_p2"] == 1.0
    # leakage: more events after t change no feature; inside the label window they change the label
    leaked, _ = user_table(spark, EVENTS_ROWS + LATE)
    assert sorted(leaked) == ["u1", "u2"]
    carried = [c for c in rows["u1"] if c != "label"]  # the features and the RFM summary of BTYD
    assert set(spec.features) - set(carried) == set(training.BTYD_OUTPUTS)  # added later, from the summary
    for user in ("u1", "u2"):
        assert {f: leaked[user][f] for f in carried} == {f: rows[user][f] for f in carried}
    assert leaked["u1"]["label"] == 37.0 + 999.0 and leaked["u2"]["label"] == 0.0


def test_pair_rows_label_the_next_horizon_and_use_nothing_after_t(spark):
    spec = training.pair_spec(PLATFORMS, CATEGORIES)

    def table(rows):
        df = training.pair_rows(events(spark, rows), T0, 5, 10, 5, {"completion": 1.0}, spec, PLATFORMS, CATEGORIES)
        return {(r.creator_id, r.platform): r.asDict() for r in df.collect()}

    plain, leaked = table(EVENTS_ROWS), table(EVENTS_ROWS + LATE)
    assert sorted(plain) == [("c1", "p1"), ("c2", "p2")]
    c1 = plain[("c1", "p1")]
    assert (c1["label"], c1["revenue"], c1["is_p1"], c1["reads_other"]) == (37.0, 105.0, 1.0, 0.0)
    assert (plain[("c2", "p2")]["label"], plain[("c2", "p2")]["revenue"]) == (0.0, 0.0)
    assert sorted(leaked) == sorted(plain)  # (c1, p2) first appears after t: no row
    for key in plain:
        assert {f: leaked[key][f] for f in spec.features} == {f: plain[key][f] for f in spec.features}
    assert leaked[("c1", "p1")]["label"] == 37.0 + 999.0


def test_stratified_sample_caps_rows_and_weights_restore_the_totals(spark):
    # GIVEN 2,000 rows of one stratum and 50 of another
    rows = spark.range(2050).selectExpr("cast(id as string) as user_id",
                                        "case when id < 2000 then 'big' else 'small' end as stratum")
    # WHEN at most about 400 rows are kept
    sample = training.stratified_sample(rows, ["stratum"], 400, seed=3, keys=["user_id"]).cache()
    got = {r.stratum: (r.n, r.w, r.lo, r.hi) for r in sample.groupBy("stratum").agg(
        F.count("*").alias("n"), F.sum("weight").alias("w"), F.min("weight").alias("lo"),
        F.max("weight").alias("hi")).collect()}
    # THEN each stratum aims at 200 rows: the small one is kept whole with weight 1, the big
    # one keeps about 200 of its 2,000, each weighted 10
    assert got["small"] == (50, 50.0, 1.0, 1.0)
    n, w, lo, hi = got["big"]
    assert 150 <= n <= 250 and lo == hi == 10.0 and 1500 <= w <= 2500
    # and the draw is the same whatever the partitioning
    again = training.stratified_sample(rows.repartition(7), ["stratum"], 400, seed=3, keys=["user_id"])
    assert sorted(r.user_id for r in again.collect()) == sorted(r.user_id for r in sample.collect())



def test_every_candidate_round_trips_through_the_registry(tmp_path):
    # GIVEN a trained ensemble, the fitted baselines and a feature frame with a missing value
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from jobs.train import log_candidates

    rng = np.random.default_rng(5)
    x, y = planted(600, rng)
    net = NetSettings(hidden=(8,), max_epochs=5)
    model = revenue.cross_fit(x, y, np.ones(len(y)), np.arange(600) % 2, np.zeros(6, bool), net, seed=2).model
    baselines = revenue.fit_baselines(x, y, np.ones(len(y)), np.zeros(6, bool), seed=2, naive_column=1, naive_factor=2.0,
                                btyd_columns=(2, 3))
    frame = pd.DataFrame(x[:50], columns=[f"f{i}" for i in range(6)])
    frame.iloc[0, 1] = np.nan
    # WHEN every candidate is logged, one registered and promoted, then loaded by alias
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("round-trip", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uris = log_candidates(model, baselines, frame)
    assert sorted(uris) == ["btyd", "hgb", "linear", "naive", "torch"]
    client = MlflowClient()
    for candidate, expected in (("torch", revenue.predict(model, frame.to_numpy())),
                                ("hgb", baselines["hgb"].predict(frame.to_numpy())),
                                ("naive", np.nan_to_num(frame["f1"].to_numpy()) * 2.0),
                                ("btyd", frame["f2"].to_numpy() * frame["f3"].to_numpy())):
        version = mlflow.register_model(uris[candidate], "round-trip-model").version
        client.set_registered_model_alias("round-trip-model", "champion", version)
        loaded = mlflow.pyfunc.load_model("models:/round-trip-model@champion")
        # THEN it expects the same columns and predicts exactly what the fitted model predicts
        assert loaded.metadata.get_input_schema().input_names() == list(frame.columns)
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(np.asarray(loaded.predict(frame)).ravel(), expected, rtol=1e-6)


def test_backtest_splits_the_totals_by_decile_and_cohort():
    # GIVEN 20 users, weights 2, a model that predicts 1.5 x the truth, and two cohorts
    actual = np.arange(20, dtype=float)
    w = np.full(20, 2.0)
    cohort = np.array(["2026-01"] * 5 + ["2026-02"] * 15)
    table = revenue.backtest(actual, {"torch": actual * 1.5, "btyd": actual}, w, cohort)
    # THEN every segment adds up to the weighted totals, and each model keeps its own column
    for segment in ("decile", "cohort", "all"):
        part = table[table["segment"] == segment]
        assert part["population"].sum() == 40 and part["actual"].sum() == 2 * actual.sum()
        assert part["predicted_torch"].sum() == pytest.approx(3 * actual.sum())
    assert len(table[table["segment"] == "decile"]) == 10
    early = table[(table["segment"] == "cohort") & (table["group"] == "2026-01")].iloc[0]
    assert (early["population"], early["actual"], early["predicted_btyd"]) == (10.0, 20.0, 20.0)
