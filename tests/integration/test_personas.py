"""jobs.personas on the small generated lake: every user gets one persona, profiles add up,
MLflow holds every candidate and a model that reproduces the table, transitions between two
as_of dates, and the planted personas are recovered."""
import shutil

import mlflow
import mlflow.spark
import pytest
from pyspark.sql import functions as F

from core import lake
from core.tables import IDENTITY_MAP, PERSONA_PROFILES, PERSONA_TRANSITIONS, USER_FEATURES, USER_PERSONAS
from evaluation import recovery
from evaluation.truth import TRUTH_ACCOUNTS
from jobs import evaluate, personas
from jobs.cli import Summary
from ml import personas as persona_model
from tests.conftest import AS_OF, FIRST, SMALL, make_settings, personas_settings


@pytest.fixture(scope="module")
def runs(small_personas):
    """(settings, first, second): the shared lake's personas as of FIRST, then AS_OF."""
    settings, first, second, _ = small_personas
    return settings, first, second


def slice_of(spark, settings, table, as_of=AS_OF):
    return lake.read(spark, settings, table).where(F.col("as_of_date") == F.lit(as_of))


def test_the_runs_leave_nothing_cached(small_personas):
    # Taken right after the runs (by the fixture that made them). The session outlives a job
    # (make run, the bench run every stage in one), and the K-means input once stayed cached.
    _, _, _, left_cached = small_personas
    assert left_cached == {}


def test_every_user_gets_exactly_one_persona(spark, runs):
    settings, _, _ = runs
    users = slice_of(spark, settings, USER_FEATURES).select("user_id")
    got = slice_of(spark, settings, USER_PERSONAS)
    assert got.count() == got.select("user_id").distinct().count() == users.count()
    assert got.join(users, "user_id", "left_anti").count() == 0
    assert got.where("distance < 0 OR persona_label = ''").count() == 0


def test_profiles_add_up_and_labels_are_distinct(spark, runs):
    settings, _, second = runs
    prof = slice_of(spark, settings, PERSONA_PROFILES).collect()
    assigned = {r.persona_id: r["count"] for r in slice_of(spark, settings, USER_PERSONAS).groupBy("persona_id").count().collect()}
    assert {r.persona_id: r.size for r in prof} == assigned
    assert sum(r.user_share for r in prof) == pytest.approx(1.0)
    assert sum(r.revenue_share for r in prof) == pytest.approx(1.0)
    assert len({r.persona_label for r in prof}) == len(prof) >= 3
    assert all(r.top_platforms and r.top_categories and set(r.centre) == set(persona_model.LOG_FEATURES + persona_model.PLAIN_FEATURES) | {
        k for k in r.centre if k.startswith("cat_")} for r in prof)
    # the summary prints the persona table
    assert sum(1 for n in second.notes if any(r.persona_label[:58] in n for r in prof)) >= len(prof)


def test_mlflow_holds_every_candidate_and_a_model_that_reproduces_the_table(spark, runs):
    settings, _, _ = runs
    prof = slice_of(spark, settings, PERSONA_PROFILES).first()
    mlflow.set_tracking_uri(settings.tracking_uri)
    run = mlflow.get_run(prof.mlflow_run_id)
    assert {f"silhouette_k{k}" for k in range(3, 6)} <= set(run.data.metrics)
    assert int(run.data.params["chosen_k"]) == int(run.data.metrics["chosen_k"]) == \
        slice_of(spark, settings, USER_PERSONAS).select("persona_id").distinct().count()
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "silhouette")
    assert sorted(m.step for m in history) == [3, 4, 5]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/persona_centres_z.png", "plots/persona_sizes.png"}
    # log -> load round trip on the real features: the same persona for every user
    model = mlflow.spark.load_model(f"runs:/{run.info.run_id}/persona_pipeline")
    features = slice_of(spark, settings, USER_FEATURES)
    categories = [c[len("cat_"):] for c in prof.centre if c.startswith("cat_")]
    predicted = {r.user_id: r.persona_id for r in model.transform(persona_model.flatten(features, sorted(categories))).collect()}
    assert predicted == {r.user_id: r.persona_id for r in slice_of(spark, settings, USER_PERSONAS).collect()}


def test_transitions_account_for_every_user_of_both_runs(spark, runs):
    settings, _, second = runs
    moves = slice_of(spark, settings, PERSONA_TRANSITIONS).collect()
    assert {r.previous_as_of_date for r in moves} == {FIRST}
    before = slice_of(spark, settings, USER_PERSONAS, FIRST).count()
    now = slice_of(spark, settings, USER_PERSONAS).count()
    assert sum(r.users for r in moves if r.from_label != "(new)") == before
    assert sum(r.users for r in moves if r.to_label != "(gone)") == now
    assert any("transitions from 2026-06-20" in n for n in second.notes)


def test_rerun_replaces_the_slice(spark, runs, tmp_path):
    # On a copy of the shared lake (its own MLflow store): the other tests, and train and score,
    # read the shared lake's personas as the runs above left them.
    settings, _, _ = runs
    shutil.copytree(settings.lake_root, tmp_path / "lake", ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    copy = make_settings(tmp_path / "lake", *SMALL)
    # one candidate k is enough to show the slice is replaced, not appended to
    one_k = personas_settings(copy, AS_OF)
    one_k = one_k.model_copy(update={"personas": one_k.personas.model_copy(update={"k_min": 4, "k_max": 4})})
    personas.execute(spark, one_k, Summary("personas"))
    got = slice_of(spark, copy, USER_PERSONAS)
    assert got.count() == got.select("user_id").distinct().count()
    assert slice_of(spark, copy, PERSONA_PROFILES).select("persona_id").distinct().count() == \
        slice_of(spark, copy, PERSONA_PROFILES).count()


def test_planted_personas_are_recovered(spark, runs):
    settings, _, second = runs
    assigned = slice_of(spark, settings, USER_PERSONAS)
    ari = recovery.personas(assigned, lake.read(spark, settings, IDENTITY_MAP), lake.read(spark, settings, TRUTH_ACCOUNTS))
    # A regression guard far above chance (~0): with 150 people make test measures 0.68 here (a
    # run with the slow tests can measure less: test_bronze_silver's re-keying may merge two people
    # first). The recovery bar (>= 0.8) is met on `make run`'s 3,000 people: 0.97 (README).
    # Raising this is an open task.
    assert ari >= 0.4
    assert not any("planted" in n for n in second.notes)  # the personas job never reads the truth
    shown = evaluate.execute(spark, settings, Summary("evaluate")).notes
    assert any(f"adjusted Rand index vs planted personas {ari:.3f}" in n for n in shown)
