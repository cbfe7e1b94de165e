"""jobs.train on the small generated lake: both models are trained, tracked and registered with
exactly the promised metric keys, the champion follows the rule (R.choose), and a rerun on the
same data version and seed gives the same metrics and does not replace its twin."""
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from core import lake, tracking
from core.tables import EVENTS
from jobs import train
from jobs.cli import Summary
from ml import revenue as R

METRIC_KEYS = {f"test_{m}" for m in R.METRICS} | {f"baseline_{b}_test_{m}" for b in ("naive", "linear", "hgb")
                                                 for m in R.METRICS}
# Where BG/NBD x Gamma-Gamma can be fitted, the user model is also measured against it
# (tests/integration/test_btyd_export.py); the small lake has too few repeat buyers.
BTYD_KEYS = {f"baseline_btyd_test_{m}" for m in R.METRICS}
# The coverage of every candidate's P10-P90 interval on the test split.
COVERAGE_KEYS = {f"{prefix}coverage_p10_p90{part}" for prefix in ("test_", *(f"baseline_{b}_test_" for b in
                 ("naive", "linear", "hgb"))) for part in ("", "_payers")}


@pytest.fixture(scope="module")
def runs(spark, small_trained):
    """(settings, first, second, runs found): the shared lake's training (both models), then a
    rerun of the user model here, on the same data version and seed."""
    settings, first = small_trained
    second = train.execute(spark, settings, Summary("train"), models=("user_revenue",))
    tracking.experiment(settings, "revenue")
    found = mlflow.search_runs(experiment_names=[f"{settings.mlflow.experiment_prefix}-revenue"],
                               order_by=["attributes.start_time ASC"], output_format="list")
    return settings, first, second, found


def test_every_run_logs_the_promised_metrics_inputs_plots_and_model(spark, runs):
    settings, _, _, found = runs
    assert [r.data.params["model"] for r in found] == ["user_revenue", "creator_platform_revenue", "user_revenue"]
    client = MlflowClient()
    silver = f"{EVENTS.qualified}@v{lake.version(spark, settings, EVENTS)}"
    for run in found:
        assert METRIC_KEYS <= set(run.data.metrics) and not BTYD_KEYS & set(run.data.metrics)
        assert COVERAGE_KEYS <= set(run.data.metrics)
        assert all(0 <= run.data.metrics[k] <= 1 for k in COVERAGE_KEYS)
        # and what a calibrated ZILN would cover on the same rows (the atom at zero: not 80 %)
        assert 0.8 <= run.data.metrics["test_expected_coverage_p10_p90"] <= 1
        assert 0 <= run.data.metrics["test_expected_coverage_p10_p90_payers"] <= 0.9
        # and per decile of each candidate's prediction, the candidates' intervals as they were made
        logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/interval_coverage.json")
        coverage = dict(zip(logged["columns"], zip(*logged["data"])))
        assert sorted(set(coverage["candidate"])) == ["hgb", "linear", "naive", "torch"]
        assert [d for c, d in zip(coverage["candidate"], coverage["decile"]) if c == "torch"] == list(range(1, 11))
        torch_rows = [i for i, c in enumerate(coverage["candidate"]) if c == "torch"]
        share = sum(coverage["coverage"][i] * coverage["population"][i] for i in torch_rows) / \
            sum(coverage["population"][i] for i in torch_rows)
        assert share == pytest.approx(run.data.metrics["test_coverage_p10_p90"])
        assert mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/interval_sources.json") == {
            "torch": "ziln mixture", "naive": "errors on the training rows", "linear": "out-of-fold errors",
            "hgb": "out-of-fold errors"}
        if run.data.params["model"] == "user_revenue":  # each feature date's fit was tried, none could be made
            fits = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/btyd_fits.json")
            assert fits == {"2026-04-24": None, "2026-05-01": None, "2026-05-31": None}
        for k in range(settings.train.folds):
            epochs = int(run.data.metrics[f"epochs_fold{k}"])
            assert len(client.get_metric_history(run.info.run_id, f"train_loss_fold{k}")) == epochs
            assert len(client.get_metric_history(run.info.run_id, f"val_loss_fold{k}")) == epochs
        assert silver in [d.dataset.name for d in run.inputs.dataset_inputs]
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        user = run.data.params["model"] == "user_revenue"
        assert plots == {"plots/predicted_vs_actual.png", "plots/decile_calibration.png", "plots/loss_curve.png",
                         *(["plots/backtest.png"] if user else [])}
        if user:  # the backtest: predicted against realised by decile and acquisition cohort, and in total
            logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/backtest.json")
            table = dict(zip(logged["columns"], zip(*logged["data"])))
            assert set(table["segment"]) == {"decile", "cohort", "all"} and table["segment"].count("decile") == 10
            total = table["segment"].index("all")
            assert table["predicted_torch"][total] == pytest.approx(
                sum(v for seg, v in zip(table["segment"], table["predicted_torch"]) if seg == "cohort"))
        name = tracking.model_name(settings, run.data.params["model"])
        versions = {v.run_id: v for v in client.search_model_versions(f"name = '{name}'")}
        assert run.info.run_id in versions and versions[run.info.run_id].tags["gate"] == run.data.tags["gate"]


def test_the_champion_follows_the_rule_and_a_rerun_does_not_replace_its_twin(runs):
    settings, _, _, found = runs
    client = MlflowClient()
    first, _, second = found

    def scores(run, prefix="test_"):
        return {m: run.data.metrics[f"{prefix}{m}"] for m in R.METRICS}

    candidates = {"torch": scores(first), **{b: scores(first, f"baseline_{b}_test_") for b in ("naive", "linear", "hgb")}}
    # the first user model had no champion to beat: the run's winner becomes the champion
    decision = R.choose(candidates, None)
    assert first.data.tags["winner"] == decision.winner and first.data.tags["promoted"] == "true"
    name = tracking.model_name(settings, "user_revenue")
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id == first.info.run_id and champion.tags["candidate"] == decision.winner
    # same data version, same seed: the same metrics and winner; equal is not better, the champion stays
    assert scores(second) == scores(first) and second.data.tags["winner"] == decision.winner
    assert second.data.tags["promoted"] == "false" and "the champion stays" in second.data.tags["gate"]


def test_summary_names_the_dates_baselines_and_verdict(runs):
    _, first, _, _ = runs
    text = first.render()
    assert "user_revenue: train dates 2026-04-24, 2026-05-01; test date 2026-05-31" in text
    assert "baselines: naive Gini" in text and "gate: winner " in text and "promoted to @champion" in text
    assert text.count("P10-P90 covers ") >= 4  # the network and each baseline, per model
    assert "P10-P90 coverage by decile of the torch prediction (1 = lowest): 1:" in text
    assert "user_revenue: no BTYD baseline (too few repeat customers" in text
    assert first.counts["user_revenue rows test"] > 100
