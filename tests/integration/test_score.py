"""jobs.score on the small generated lake (after aggregate, personas and train: small_scored): every
user scored exactly once with the champion's own predictions and full lineage, the synergy
and revenue tables add up, and re-scoring replaces the slice with identical content."""
import mlflow
import numpy as np
import pytest
from pyspark.sql import functions as F

from core import lake, tracking
from core.tables import (
    CREATOR_PLATFORM_PERIOD,
    CREATOR_QUALITY,
    PLATFORM_PERIOD,
    REVENUE_METRICS,
    SYNERGY_SCORES,
    USER_FEATURES,
    USER_PERSONAS,
    USER_REVENUE_SCORES,
)
from jobs import score
from jobs.cli import Summary
from tests.conftest import AS_OF
from transforms import scoring as S
from transforms import training as T

TABLES = (USER_REVENUE_SCORES, SYNERGY_SCORES, REVENUE_METRICS)


def slice_of(spark, settings, table):
    return lake.read(spark, settings, table).where(F.col("as_of_date") == F.lit(AS_OF))


def rows(spark, settings, table):
    df = slice_of(spark, settings, table)
    if "predicted_by_persona" in df.columns:
        df = df.withColumn("predicted_by_persona", F.map_entries("predicted_by_persona"))
    return sorted(tuple(r) for r in df.collect())


@pytest.fixture(scope="module")
def scored(spark, small_scored):
    """The shared lake scored as of AS_OF (the slices as that run wrote them: nothing else
    writes these tables), then scored again here."""
    settings, champions, summary = small_scored
    tracking.experiment(settings, "revenue")  # the tests read the shared lake's MLflow store
    first = {t.name: rows(spark, settings, t) for t in TABLES}
    versions = {t.name: lake.version(spark, settings, t) for t in TABLES}
    score.execute(spark, settings, Summary("score"))
    second = {t.name: rows(spark, settings, t) for t in TABLES}
    return settings, champions, summary, first, second, versions


def test_every_user_is_scored_exactly_once_with_lineage(spark, scored):
    settings, champions, _, _, _, versions = scored
    users = slice_of(spark, settings, USER_FEATURES).select("user_id")
    out = slice_of(spark, settings, USER_REVENUE_SCORES)
    assert out.count() == out.select("user_id").distinct().count() == users.count()
    assert out.join(users, "user_id", "left_anti").count() == 0 and users.join(out, "user_id", "left_anti").count() == 0
    champ = champions["user_revenue"]
    lineage = out.select("model_name", "model_version", "run_id", "user_features_version", "horizon_days").distinct().collect()
    assert [tuple(r) for r in lineage] == [(tracking.model_name(settings, "user_revenue"), str(champ.version),
                                           champ.run_id, lake.version(spark, settings, USER_FEATURES),
                                           settings.train.horizon_days)]
    # personas of the same as_of are attached to every user
    personas = slice_of(spark, settings, USER_PERSONAS).select("user_id", "persona_label")
    assert out.join(personas, ["user_id", "persona_label"], "inner").count() == users.count()


def test_scores_equal_the_models_own_predictions(spark, scored):
    settings, champions, _, _, _, _ = scored
    name = tracking.model_name(settings, "user_revenue")
    model = mlflow.pyfunc.load_model(f"models:/{name}/{champions['user_revenue'].version}")
    inputs = model.metadata.get_input_schema().input_names()
    platforms, categories = S.keys_of(inputs, "platform_"), S.keys_of(inputs, "cat_")
    frame = T.user_model_frame(slice_of(spark, settings, USER_FEATURES), T.user_spec(platforms, categories),
                               platforms, categories).toPandas().sort_values("user_id")
    expected = np.clip(np.asarray(model.predict(frame[inputs])).ravel(), 0, None)
    got = slice_of(spark, settings, USER_REVENUE_SCORES).toPandas().sort_values("user_id")
    assert got["user_id"].tolist() == frame["user_id"].tolist()
    np.testing.assert_allclose(got["predicted_revenue"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    # the champion gives P10 / P50 / P90 (every candidate logged today does): every user has
    # the model's own, ordered and never below 0
    quantiles = ["predicted_revenue_p10", "predicted_revenue_p50", "predicted_revenue_p90"]
    assert got[quantiles].notna().all().all()
    own = model.predict(frame[inputs], params={"intervals": True})
    np.testing.assert_allclose(got[quantiles].to_numpy(), own[["p10", "p50", "p90"]].to_numpy(), rtol=1e-5, atol=1e-6)
    assert (got["predicted_revenue_p10"] >= 0).all()
    assert (got["predicted_revenue_p10"] <= got["predicted_revenue_p50"]).all()
    assert (got["predicted_revenue_p50"] <= got["predicted_revenue_p90"]).all()
    assert (got["predicted_revenue_p90"] > got["predicted_revenue_p10"]).any()  # intervals, not points
    # beside them the churn risk: BTYD's P(alive), fitted on the customers of the scoring date,
    # in [0, 1] for every user who ever paid and empty for the others
    assert "BTYD fitted on " in scored[2].render()
    paid = frame.set_index("user_id")["purchase_days"].fillna(0).loc[got["user_id"]].to_numpy() > 0
    assert paid.any() and got["p_alive"][paid].between(0, 1).all() and got["p_alive"][~paid].isna().all()


def test_synergy_and_revenue_tables_add_up(spark, scored):
    settings, champions, _, _, _, _ = scored
    syn = slice_of(spark, settings, SYNERGY_SCORES).toPandas()
    pairs = slice_of(spark, settings, CREATOR_PLATFORM_PERIOD).toPandas()
    creators = slice_of(spark, settings, CREATOR_QUALITY).count()
    # every creator x configured platform, once
    assert len(syn) == len(syn.drop_duplicates(["creator_id", "platform"])) == creators * len(settings.platforms)
    present = syn.merge(pairs[["creator_id", "platform", "e", "reads"]].rename(columns={"e": "pair_e", "reads": "pair_reads"}),
                        on=["creator_id", "platform"])
    active = present[present["pair_reads"] > 0]
    assert len(active) > 0
    np.testing.assert_allclose(active["synergy"], active["q"] * active["pair_e"], rtol=1e-9)
    assert set(active["status"]) <= {"established", "weak"}
    absent = syn[syn["status"] == "absent"]
    assert absent["synergy"].isna().all() and absent["uplift"].notna().all()
    assert syn[syn["status"] == "established"]["uplift"].isna().all()
    assert (syn["model_version"] == str(champions["creator_platform_revenue"].version)).all()
    rev = slice_of(spark, settings, REVENUE_METRICS).toPandas().set_index("platform")
    plat = slice_of(spark, settings, PLATFORM_PERIOD).toPandas().set_index("platform")
    sums = pairs.groupby("platform")["r_c"].sum()
    for p in settings.platforms:
        assert rev.loc[p, "sum_r_c"] == pytest.approx(sums.get(p, 0.0))
        assert rev.loc[p, "r_p"] == pytest.approx(plat.loc[p, "r_p"])
        assert rev.loc[p, "gap"] == pytest.approx(abs(plat.loc[p, "r_p"] - sums.get(p, 0.0)))
        assert sum(dict(rev.loc[p, "predicted_by_persona"]).values()) == pytest.approx(rev.loc[p, "predicted_revenue_next"])
    # predicted revenue is split across platforms by activity share: the platforms add up to the users
    users_total = slice_of(spark, settings, USER_REVENUE_SCORES).agg(F.sum("predicted_revenue")).first()[0]
    active_users = (slice_of(spark, settings, USER_REVENUE_SCORES)
                    .join(slice_of(spark, settings, USER_FEATURES).where(F.size("platform_share") > 0), "user_id")
                    .agg(F.sum("predicted_revenue")).first()[0])
    assert rev["predicted_revenue_next"].sum() == pytest.approx(active_users, rel=1e-9) and active_users <= users_total + 1e-6


def test_rescoring_replaces_the_slice_with_identical_content(scored):
    _, _, _, first, second, _ = scored
    for name in first:
        assert first[name] and second[name] == first[name], name


def test_summary_and_report(spark, scored):
    settings, _, summary, _, _, _ = scored
    text = summary.render()
    for heading in ("top synergy pairs", "largest expansion opportunities", "revenue balance per platform",
                    "champion ipsynergy-user_revenue", "backtest of the user model on its held-out horizon"):
        assert heading in text
    # the champion's backtest, by acquisition cohort (the small lake starts in April)
    assert "  all users  users " in text and "  2026-04    users " in text
    html = lake.read_text(spark, f"{settings.lake_root}/reports/ipsynergy-{AS_OF.isoformat()}.html")
    assert html.count("data:image/png;base64,") == 5  # four plots and the training run's backtest plot
