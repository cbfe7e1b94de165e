"""ml.personas in the style of Spark's own test_clustering.py: tiny deterministic data with
known clusters, fixed seeds, centres compared with np.allclose, exact output columns, and a
log -> load round trip through MLflow."""
import datetime as dt

import mlflow
import mlflow.spark
import numpy as np
import pandas as pd
import pytest
from pyspark.ml.linalg import Vectors
from sklearn.metrics import adjusted_rand_score

from core.settings import PersonaSettings
from core.tables import USER_FEATURES
from ml import personas
from ml.personas import transitions

CFG = PersonaSettings(k_min=2, k_max=5, restarts=2, seed=3, max_iter=30, init_steps=3, min_share=0.05,
                      min_stability=0.8, bootstrap_fraction=0.8)
CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
# gold.user_features' purchase rhythm (personas do not read it): a user who never paid
NO_RHYTHM = (0, None, None, None, None, None, None, None)


@pytest.fixture(scope="module")
def blobs(spark):
    """Three well-separated blobs of 20 points each around CENTRES (deterministic offsets)."""
    rng = np.random.default_rng(42)
    rows = [(f"u{c}_{i}", Vectors.dense(CENTRES[c] + rng.normal(0, 0.3, 2)), c) for c in range(3) for i in range(20)]
    return spark.createDataFrame(rows, ["user_id", personas.PREP_OUT, "planted"]).cache()


def test_kmeans_finds_the_planted_centres(blobs):
    model = personas.fit_best_of(blobs, 3, CFG, seed=1)
    assert model.getK() == 3 and model.getInitMode() == "k-means||" and model.getInitSteps() == 3
    by_position = lambda c: (round(c[0]), round(c[1]))  # noqa: E731
    found = sorted(model.clusterCenters(), key=by_position)
    assert np.allclose(found, sorted(CENTRES, key=by_position), atol=0.2)
    out = model.transform(blobs)
    assert out.columns == ["user_id", personas.PREP_OUT, "planted", "persona_id"]
    assert sorted(r["count"] for r in out.groupBy("persona_id").count().collect()) == [20, 20, 20]
    assert personas.adjusted_rand_index(out, "persona_id", "planted") == pytest.approx(1.0)


def test_k_selection_picks_the_planted_k(blobs):
    seen = []
    selection = personas.choose_k(blobs, CFG, progress=seen.append)
    assert [c.k for c in selection.candidates] == [2, 3, 4, 5] == [c.k for c in seen]
    assert selection.chosen.k == 3
    assert selection.chosen.silhouette > 0.9 and selection.chosen.stability == pytest.approx(1.0)


def test_adjusted_rand_index_agrees_with_scikit_learn(spark):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 4, 300)
    b = np.where(rng.random(300) < 0.6, a, rng.integers(0, 5, 300))
    df = spark.createDataFrame(pd.DataFrame({"a": a, "b": b}))
    assert personas.adjusted_rand_index(df, "a", "b") == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_labels_name_what_stands_out_and_are_distinct():
    z = pd.DataFrame([
        {"monetary": 2.0, "orders": 1.5, "recency_days": -0.2, "cat_finance": 1.0},
        {"monetary": -0.1, "orders": -0.3, "recency_days": 2.5, "cat_finance": -0.8},
        {"monetary": 2.0, "orders": 1.5, "recency_days": 0.1, "cat_finance": -0.9},
        {"monetary": 0.1, "orders": 0.2, "recency_days": 0.1, "cat_finance": 0.3},
    ])
    got = personas.labels(z)
    assert got[0] == "high-spend, frequent buyers, finance-focused"   # grown to tell it from persona 2
    assert got[1] == "lapsed"                                          # a low category share is not a trait
    assert got[2] == "high-spend, frequent buyers"
    assert got[3] == "typical users"
    assert personas.labels(z) == got                                          # deterministic


def test_transitions_count_moves_new_and_gone_users(spark):
    before = spark.createDataFrame([("u1", "a"), ("u2", "a"), ("u3", "b")], "user_id string, persona_label string")
    after = spark.createDataFrame([("u1", "a"), ("u2", "b"), ("u4", "b")], "user_id string, persona_label string")
    got = {(r.from_label, r.to_label): r.users for r in
           transitions(after, before, dt.date(2026, 2, 1), dt.date(2026, 1, 1)).collect()}
    assert got == {("a", "a"): 1, ("a", "b"): 1, ("b", "(gone)"): 1, ("(new)", "b"): 1}


def test_fitted_pipeline_logs_and_loads_with_the_same_predictions(spark, tmp_path):
    # GIVEN user_features rows of two obvious kinds (spenders, lapsed) with nulls in the rates
    rows = []
    for i in range(30):
        spender = i % 2 == 0
        rows.append((f"u{i}", dt.date(2026, 1, 1), 1 if spender else 60, 90, 40 if spender else 1,
                     200 if spender else 3, 50 if spender else 1, 900.0 + i if spender else 0.0, 300.0, 6 if spender else 0,
                     150.0 if spender else None, 1, 20.0, 0.8 if spender else None, 2 if spender else 1,
                     {"p1": 1.0}, {"finance": 1.0} if spender else {"health": 1.0}, 0.5, 10, 0.2, None, 0.0, 4,
                     *NO_RHYTHM))
    features = spark.createDataFrame(rows, USER_FEATURES.schema)
    flat = personas.flatten(features, ["finance", "health"])
    prep = personas.prep_pipeline(personas.model_columns(flat, ["finance", "health"])[0]).fit(flat)
    model = personas.fit_best_of(prep.transform(flat), 2, CFG, seed=5)
    pipeline = personas.fitted_pipeline(prep, model)
    direct = {r.user_id: r.persona_id for r in pipeline.transform(flat).collect()}
    assert len(set(direct.values())) == 2
    assert len({direct[f"u{i}"] for i in range(0, 30, 2)}) == 1            # spenders together
    # WHEN it is logged to MLflow and loaded back
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.spark.log_model(pipeline, artifact_path="persona_pipeline", pip_requirements=["pyspark"])
    loaded = mlflow.spark.load_model(f"runs:/{run.info.run_id}/persona_pipeline")
    # THEN it gives the same persona to every user
    assert {r.user_id: r.persona_id for r in loaded.transform(flat).collect()} == direct


def test_model_columns_drop_what_says_nothing_about_users(spark):
    # GIVEN purchase-only users: no watch time, no funnel (rates null), one platform, and a
    # category column only one user has
    rows = [(f"u{i}", dt.date(2026, 1, 1), i % 7, 90, 3 + i, i, 0, 10.0 * i, 0.0, i % 3, 10.0 + i, 0, 0.0, None, 1,
             {"p1": 1.0}, {"books": 1.0} if i == 0 else {}, None, 0, None, 0.0, 0.0, 0, *NO_RHYTHM)
            for i in range(12)]
    flat = personas.flatten(spark.createDataFrame(rows, USER_FEATURES.schema), ["books"])
    # WHEN the model's columns are chosen
    kept, dropped = personas.model_columns(flat, ["books"])
    # THEN all-null and constant columns are dropped, the rest kept in input order
    assert dropped == ["watch_hours", "social_actions", "completion_rate", "rec_ctr", "refund_rate", "platforms_used"]
    assert kept == ["events", "active_days", "monetary", "orders", "avg_order_value", "recency_days", "cat_books"]
    # AND the preparation fits on what is kept (the imputer failed on all-null columns)
    assert personas.prep_pipeline(kept).fit(flat).transform(flat).count() == 12
