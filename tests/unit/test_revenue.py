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



def logged_candidates(tmp_path):
    """(uris, in-process candidates, frame): a small trained ensemble and the fitted
    baselines, each with its intervals, logged to a run of a registry under ``tmp_path``; the
    frame of features has a missing value."""
    import mlflow
    import pandas as pd

    from jobs.train import log_candidates

    rng = np.random.default_rng(5)
    x, y = planted(600, rng)
    net = NetSettings(hidden=(8,), max_epochs=5)
    fold = np.arange(600) % 2
    model = revenue.cross_fit(x, y, np.ones(len(y)), fold, np.zeros(6, bool), net, seed=2).model
    baselines = revenue.fit_baselines(x, y, np.ones(len(y)), np.zeros(6, bool), seed=2, naive_column=1, naive_factor=2.0,
                                btyd_columns=(2, 3))
    oof = revenue.baseline_out_of_fold(baselines, x, y, np.ones(len(y)), fold)
    candidates = {"torch": revenue.RevenueModel(model),
                  **{b: revenue.RevenueModel(m, revenue.ResidualQuantiles.fit(oof[b], y, np.ones(len(y))))
                     for b, m in baselines.items()}}
    frame = pd.DataFrame(x[:50], columns=[f"f{i}" for i in range(6)])
    frame.iloc[0, 1] = np.nan
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("round-trip", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uris = log_candidates(candidates, frame)
    return uris, candidates, frame


def test_every_candidate_round_trips_through_the_registry(tmp_path):
    # GIVEN every candidate logged: a trained ensemble and the fitted baselines
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.score import gives_intervals

    uris, candidates, frame = logged_candidates(tmp_path)
    assert sorted(uris) == ["btyd", "hgb", "linear", "naive", "torch"]
    model, baselines = candidates["torch"].model, {b: c.model for b, c in candidates.items() if b != "torch"}
    client = MlflowClient()
    for candidate, expected in (("torch", revenue.predict(model, frame.to_numpy())),
                                ("hgb", baselines["hgb"].predict(frame.to_numpy())),
                                ("linear", baselines["linear"].predict(frame.to_numpy())),
                                ("naive", np.nan_to_num(frame["f1"].to_numpy()) * 2.0),
                                ("btyd", frame["f2"].to_numpy() * frame["f3"].to_numpy())):
        # WHEN one is registered and promoted, then loaded by alias
        version = mlflow.register_model(uris[candidate], "round-trip-model").version
        client.set_registered_model_alias("round-trip-model", "champion", version)
        loaded = mlflow.pyfunc.load_model("models:/round-trip-model@champion")
        # THEN it expects the same columns and predicts exactly what the fitted model predicts
        assert loaded.metadata.get_input_schema().input_names() == list(frame.columns)
        assert gives_intervals(loaded.metadata.signature), candidate
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(np.asarray(loaded.predict(frame)).ravel(), expected, rtol=1e-6)
        # and, asked for intervals, the same mean beside its own P10 <= P50 <= P90, >= 0
        out = loaded.predict(frame, params={revenue.INTERVALS: True})
        assert list(out.columns) == ["prediction", "p10", "p50", "p90"], candidate
        np.testing.assert_allclose(out["prediction"], expected, rtol=1e-6)
        bounds = revenue.intervals(candidates[candidate].model, frame.to_numpy(), candidates[candidate].residuals)
        np.testing.assert_allclose(out[["p10", "p50", "p90"]].to_numpy(), bounds, rtol=1e-6, atol=1e-9)
        assert (out["p10"] >= 0).all() and (out["p10"] <= out["p50"]).all() and (out["p50"] <= out["p90"]).all()
        assert (out["p90"] > out["p10"]).any(), candidate  # an interval, not a point


def test_spark_scoring_gives_the_quantiles_and_an_older_champion_still_scores(spark, tmp_path):
    # GIVEN a candidate logged as today, and one logged as before intervals (the scikit-learn
    # flavour, one output column, no intervals parameter)
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from jobs import score

    uris, candidates, frame = logged_candidates(tmp_path)
    naive = candidates["naive"].model
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("round-trip").experiment_id):
        older = mlflow.sklearn.log_model(naive, name="older", signature=infer_signature(frame, naive.predict(frame.to_numpy())),
                                         serialization_format="pickle").model_uri
    assert not score.gives_intervals(mlflow.models.get_model_info(older).signature)
    rows = spark.createDataFrame(frame.assign(user_id=[f"u{i}" for i in range(len(frame))]))
    inputs = list(frame.columns)
    # WHEN both score in Spark, each as jobs.score asks it
    new = score.predict(spark, rows, uris["hgb"], inputs, intervals=True).toPandas()
    old = score.predict(spark, rows, older, inputs).toPandas()
    # THEN today's gives its own mean and quantiles per row, the older one its mean and nulls
    hgb = candidates["hgb"]
    np.testing.assert_allclose(new["prediction"], hgb.model.predict(frame.to_numpy()), rtol=1e-9)
    np.testing.assert_allclose(new[["prediction_p10", "prediction_p50", "prediction_p90"]].to_numpy(),
                               revenue.intervals(hgb.model, frame.to_numpy(), hgb.residuals), rtol=1e-9)
    np.testing.assert_allclose(old["prediction"], naive.predict(frame.to_numpy()), rtol=1e-9)
    assert old[["prediction_p10", "prediction_p50", "prediction_p90"]].isna().all().all()
    assert set(new.columns) == set(old.columns) == {*inputs, "user_id", "prediction", "prediction_p10",
                                                    "prediction_p50", "prediction_p90"}


def test_a_scores_table_of_the_previous_release_takes_the_quantiles(spark, settings):
    # GIVEN gold.user_revenue_scores as the previous release wrote it: no quantile columns
    from dataclasses import replace

    from pyspark.sql.types import StructType

    from core import lake
    from core.tables import USER_REVENUE_SCORES
    from transforms import scoring

    new_columns = ("predicted_revenue_p10", "predicted_revenue_p50", "predicted_revenue_p90")
    old = replace(USER_REVENUE_SCORES, schema=StructType([f for f in USER_REVENUE_SCORES.schema.fields
                                                          if f.name not in new_columns]),
                  checks={"prediction_not_negative": "predicted_revenue >= 0"})
    lineage = {"model_name": "m", "model_version": "1", "run_id": "r"}
    before = spark.createDataFrame([("u1", D(1), 3.0, 30, None, None, "m", "1", "r", 4, None, 0.5, 2.0)], old.schema)
    lake.replace_where(spark, settings, old, before, "as_of_date = DATE'2026-01-01'")

    def scored(*quantiles):
        return spark.createDataFrame(
            [("u1", 4.0, *quantiles, 0.9, 1.0, 2.0)],
            "user_id string, prediction double, prediction_p10 double, prediction_p50 double, prediction_p90 double, "
            "btyd_p_alive double, btyd_purchases double, btyd_spend double")

    # WHEN today's release scores a new date into it
    users = scoring.user_scores(scored(0.0, 2.5, 9.0), None, D(2), 30, lineage, 5, None)
    lake.replace_where(spark, settings, USER_REVENUE_SCORES, users, "as_of_date = DATE'2026-01-02'")
    # THEN the table gains the columns: the old row reads null there, the new one its quantiles
    got = {r.as_of_date: r.asDict() for r in lake.read(spark, settings, USER_REVENUE_SCORES).collect()}
    assert [got[D(1)][c] for c in new_columns] == [None, None, None]
    assert [got[D(2)][c] for c in new_columns] == [0.0, 2.5, 9.0]
    assert (got[D(2)]["predicted_revenue"], got[D(2)]["p_alive"], got[D(2)]["btyd_revenue"]) == (4.0, 0.9, 2.0)
    # and the contract refuses quantiles out of order
    with pytest.raises(Exception, match="quantiles_ordered"):
        lake.replace_where(spark, settings, USER_REVENUE_SCORES,
                           scoring.user_scores(scored(3.0, 2.5, 9.0), None, D(3), 30, lineage, 5, None),
                           "as_of_date = DATE'2026-01-03'")


# -- prediction intervals -------------------------------------------------------------------
def test_ziln_quantiles_on_worked_cases():
    from scipy.stats import lognorm

    mu, sigma = np.array([1.0, -0.5]), np.array([0.5, 1.2])
    for q in (0.1, 0.5, 0.9):
        # p = 1: no zeros, a lognormal's quantiles
        np.testing.assert_allclose(revenue.ziln_quantile(np.ones(2), mu, sigma, q),
                                   lognorm.ppf(q, s=sigma, scale=np.exp(mu)), rtol=1e-12)
    # p = 0.4: 60 % at zero, so P10 and P50 are 0; P90 is the lognormal's (0.9 - 0.6) / 0.4 = 75 % point
    p = np.full(2, 0.4)
    assert revenue.ziln_quantile(p, mu, sigma, 0.1).tolist() == [0.0, 0.0]
    assert revenue.ziln_quantile(p, mu, sigma, 0.6).tolist() == [0.0, 0.0]  # exactly 1 - p: still the atom
    np.testing.assert_allclose(revenue.ziln_quantile(p, mu, sigma, 0.9), lognorm.ppf(0.75, s=sigma, scale=np.exp(mu)),
                               rtol=1e-12)
    # one member, or K identical ones: the mixture is that ZILN, and bisection finds its closed form
    p, mu, sigma = np.array([1.0, 0.4, 0.95, 0.05]), np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.5, 1.2, 0.3, 1.0])
    closed = np.stack([revenue.ziln_quantile(p, mu, sigma, q) for q in revenue.QUANTILES], axis=1)
    np.testing.assert_allclose(revenue.mixture_quantiles(p[None], mu[None], sigma[None]), closed, rtol=1e-9)
    np.testing.assert_allclose(revenue.mixture_quantiles(np.stack([p] * 3), np.stack([mu] * 3), np.stack([sigma] * 3)),
                               closed, rtol=1e-9)
    assert closed[3].tolist() == [0.0, 0.0, 0.0]  # 95 % spend nothing: the whole interval is 0


def test_mixture_quantiles_solve_the_mixture_not_the_mean_of_quantiles():
    from scipy.stats import lognorm

    # GIVEN three members per row that disagree
    rng = np.random.default_rng(2)
    p, mu, sigma = rng.uniform(0.3, 1.0, (3, 40)), rng.normal(1.0, 1.0, (3, 40)), rng.uniform(0.2, 1.4, (3, 40))
    got = revenue.mixture_quantiles(p, mu, sigma)
    atom = (1 - p).mean(axis=0)
    # THEN the mixture's CDF (scipy) at each quantile is the level, or the level is in the atom at 0
    for j, q in enumerate(revenue.QUANTILES):
        cdf = (1 - p + p * lognorm.cdf(got[:, j], s=sigma, scale=np.exp(mu))).mean(axis=0)
        positive = q > atom
        np.testing.assert_allclose(cdf[positive], q, rtol=1e-9)
        assert (got[~positive, j] == 0).all()
    assert (np.diff(got, axis=1) >= 0).all() and (got >= 0).all()
    # and a Monte Carlo draw of one row's mixture agrees with it
    k = rng.integers(0, 3, 400_000)
    draw = np.where(rng.random(k.size) < p[k, 0], np.exp(mu[k, 0] + sigma[k, 0] * rng.normal(size=k.size)), 0.0)
    np.testing.assert_allclose(np.quantile(draw, revenue.QUANTILES), got[0], rtol=0.02, atol=1e-9)
    # the members' average quantile is another, narrower thing where they disagree
    members = np.stack([np.stack([revenue.ziln_quantile(p[i], mu[i], sigma[i], q) for q in revenue.QUANTILES], 1)
                        for i in range(3)]).mean(axis=0)
    assert not np.allclose(members, got, rtol=1e-3)


def test_the_network_gives_its_mixture_quantiles_scaled_like_its_mean():
    # GIVEN an ensemble of two (untrained) ZILN members with a calibration factor of 1.7
    members = [revenue.RevenueNet(3, (4,), 0.0, np.zeros(3, bool), np.zeros(3), np.zeros(3), np.ones(3))
               for _ in range(2)]
    torch.manual_seed(0)
    for m in members:
        torch.nn.init.normal_(m.head.weight, std=1.0)
    ensemble = revenue.Ensemble(members, scale=1.7)
    x = np.random.default_rng(0).normal(size=(30, 3))
    # THEN its quantiles are 1.7 x those of the mixture of its members' distributions
    with torch.no_grad():
        params = [m.parameters_of(torch.as_tensor(x, dtype=torch.float32)) for m in members]
    p, mu, sigma = (np.stack([t[i].double().numpy() for t in params]) for i in range(3))
    expected = 1.7 * revenue.mixture_quantiles(1 / (1 + np.exp(-p)), mu, sigma)
    np.testing.assert_allclose(revenue.intervals(ensemble, x), expected, rtol=1e-6)
    # a Tweedie network has no distribution: its intervals must come from its errors
    tweedie = revenue.Ensemble([revenue.RevenueNet(3, (4,), 0.0, np.zeros(3, bool), np.zeros(3), np.zeros(3), np.ones(3),
                                                   loss="tweedie")])
    assert not tweedie.has_distribution
    with pytest.raises(ValueError, match="no distribution of its own"):
        revenue.intervals(tweedie, x)


def constant_ziln(logit: float, mu: float, raw_sigma: float) -> revenue.RevenueNet:
    """A ZILN member that predicts the same distribution for every row."""
    net = revenue.RevenueNet(1, (1,), 0.0, np.zeros(1, bool), np.zeros(1), np.zeros(1), np.ones(1))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([logit, mu, raw_sigma]))
    return net


def test_a_calibrated_ziln_covers_more_than_80_percent_of_users_and_fewer_payers():
    x, w = np.zeros((1, 1)), np.ones(1)
    # worked cases, P(no revenue) = a: 0.05 -> [P10, P90] holds 0.8, of the payers 0.8 / 0.95;
    # 0.5 -> P10 = 0: 0.9, of the payers (0.9 - 0.5) / 0.5; 0.95 -> P90 = 0: 0.95, no payer
    for a, everyone, payers in ((0.05, 0.8, 0.8 / 0.95), (0.5, 0.9, 0.8), (0.95, 0.95, 0.0)):
        model = revenue.Ensemble([constant_ziln(math.log((1 - a) / a), 1.0, 0.0)])
        assert revenue.expected_coverage(model, x, w) == pytest.approx(
            {"coverage_p10_p90": everyone, "coverage_p10_p90_payers": payers}, rel=1e-5)
    # GIVEN a mixture of two members, 70 % and 40 % zeros; WHEN revenue is drawn from it
    model = revenue.Ensemble([constant_ziln(math.log(0.3 / 0.7), 1.0, 0.0), constant_ziln(math.log(0.6 / 0.4), 2.0, 1.0)])
    p10, _, p90 = revenue.intervals(model, x)[0]
    rng = np.random.default_rng(9)
    member = rng.integers(0, 2, 400_000)
    with torch.no_grad():  # each member's (logit, mu, sigma), one value each
        logit, mu, sigma = (np.array([float(v) for v in t])
                            for t in zip(*[m.parameters_of(torch.zeros(1, 1)) for m in model.members]))
    pays = rng.random(member.size) < 1 / (1 + np.exp(-logit[member]))
    draw = np.where(pays, np.exp(mu[member] + sigma[member] * rng.normal(size=member.size)), 0.0)
    # THEN the share inside [P10, P90] is what the model expects, over everyone and the payers
    measured = revenue.coverage(draw, np.full(draw.size, p10), np.full(draw.size, p90), np.ones(draw.size))
    expected = revenue.expected_coverage(model, x, w)
    assert measured == pytest.approx(expected, abs=0.005)
    assert expected["coverage_p10_p90"] == pytest.approx(0.9) and expected["coverage_p10_p90_payers"] < 0.8


def test_weighted_quantiles_count_weights_as_copies():
    rng = np.random.default_rng(4)
    values, weights = rng.normal(size=41), rng.integers(1, 4, 41)
    copies = np.repeat(values, weights)
    for q in (0.1, 0.25, 0.5, 0.9):
        assert revenue.weighted_quantile(values, np.ones(41), q) == np.quantile(values, q, method="inverted_cdf")
        assert revenue.weighted_quantile(values, weights.astype(float), q) == np.quantile(copies, q, method="inverted_cdf")


def test_residual_quantiles_per_bin_of_the_prediction():
    # GIVEN 100 rows predicted 0 (80 spend 0, 20 spend 5) and 100 predicted 10 (half spend 0,
    # half 30): ties make the deciles two bins, and the empty top one is merged away
    predicted = np.repeat([0.0, 10.0], 100)
    actual = np.concatenate([np.zeros(80), np.full(20, 5.0), np.zeros(50), np.full(50, 30.0)])
    fitted = revenue.ResidualQuantiles.fit(predicted, actual, np.ones(200))
    assert fitted.edges.tolist() == [0.0]
    # THEN each bin's interval is its own errors' quantiles, floored at 0
    np.testing.assert_allclose(fitted(np.array([0.0, 10.0])), [[0.0, 0.0, 5.0], [0.0, 0.0, 30.0]])
    # above the bins' range the top bin's errors carry over: 25 + (-10, -10, +20)
    np.testing.assert_allclose(fitted(np.array([25.0])), [[15.0, 15.0, 45.0]])
    # weights count as copies: the 50 spenders of 30 at weight 2 move the top bin's median to them
    weighted = revenue.ResidualQuantiles.fit(predicted, actual, np.where(actual == 30.0, 2.0, 1.0))
    np.testing.assert_allclose(weighted(np.array([10.0])), [[0.0, 30.0, 30.0]])
    # too few rows for two bins: one, over everyone
    assert revenue.ResidualQuantiles.fit(predicted[::5], actual[::5], np.ones(40)).edges.size == 0


def test_baselines_errors_are_measured_out_of_fold():
    # GIVEN the baselines fitted on a planted relation, and two folds of the rows
    rng = np.random.default_rng(6)
    x, y = planted(400, rng)
    w, fold = np.ones(len(y)), np.arange(len(y)) % 2
    baselines = revenue.fit_baselines(x, y, w, np.zeros(6, bool), seed=2, naive_column=1, naive_factor=2.0)
    oof = revenue.baseline_out_of_fold(baselines, x, y, w, fold)
    # THEN naive learns nothing from the labels: its own predictions are out of sample already
    np.testing.assert_array_equal(oof["naive"], baselines["naive"].predict(x))
    # the learners predict each fold with a copy fitted on the other one, worse than in sample
    held = fold == 1
    alone = revenue.fit_baselines(x[~held], y[~held], w[~held], np.zeros(6, bool), seed=2, naive_column=1,
                                  naive_factor=2.0)
    for b in revenue.LEARNS_FROM_LABELS:
        np.testing.assert_allclose(oof[b][held], alone[b].predict(x[held]), rtol=1e-9)
        assert np.mean((oof[b] - y) ** 2) > np.mean((baselines[b].predict(x) - y) ** 2)


def test_coverage_on_a_worked_example():
    actual = np.array([0.0, 5.0, 10.0, -1.0])
    lower, upper = np.array([0.0, 6.0, 0.0, 0.0]), np.array([1.0, 7.0, 10.0, 3.0])
    # inside: yes (0 in [0, 1]), no, yes (ends count), no (a refund below 0); weights 1, 1, 2, 1
    got = revenue.coverage(actual, lower, upper, np.array([1.0, 1.0, 2.0, 1.0]))
    assert got == pytest.approx({"coverage_p10_p90": 3 / 5, "coverage_p10_p90_payers": 2 / 3})
    table = revenue.coverage_by_decile(np.arange(20.0), np.arange(20.0),
                                       np.stack([np.arange(20.0) - 1, np.arange(20.0), np.arange(20.0) + (np.arange(20) < 10)], 1),
                                       np.ones(20))
    assert table["decile"].tolist() == list(range(1, 11))
    assert table["coverage"].tolist() == [1.0] * 10  # every actual is its own P50, inside [P50 - 1, P50 + ...]
    assert table["payers"].tolist() == [1.0] + [2.0] * 9  # the 0 of decile 1 is no payer


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
