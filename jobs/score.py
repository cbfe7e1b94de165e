"""Score one --as-of date with the champion models and write the synergy and revenue tables.

- gold.user_revenue_scores: every user of gold.user_features at --as-of, scored once by
  models:/<prefix>-user_revenue@champion (Arrow pandas UDF: mlflow.pyfunc.spark_udf): the
  expected revenue and, from a champion that gives them, P10 / P50 / P90 of it (null from one
  logged before intervals), with persona, P(alive), model name / version / run id and the
  input table versions.
- gold.synergy_scores: every creator x platform: Q, E, synergy = Q * E, R_C, next period's
  predicted revenue (models:/<prefix>-creator_platform_revenue@champion) and, where the creator
  is absent or weak, the revenue predicted if it expanded there and the uplift.
- gold.revenue_metrics: per platform, R_P vs the creators' ΣR_C (gap, share) and next period's
  revenue predicted from the user scores, in total and per persona.

Each table replaces its as_of slice, so re-scoring with the same models gives identical tables.
The summary lists the top synergy pairs, the largest expansion opportunities, the revenue
balance and the champions' metrics, and an HTML report with plots goes to
<lake root>/reports/ipsynergy-<as_of>.html.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import lake, tracking
from core.errors import InputRejected, MissingInput
from core.settings import Settings
from core.tables import (
    CREATOR_PLATFORM_PERIOD,
    CREATOR_QUALITY,
    PERSONA_PROFILES,
    PLATFORM_PERIOD,
    REVENUE_METRICS,
    SYNERGY_SCORES,
    USER_FEATURES,
    USER_PERSONAS,
    USER_REVENUE_SCORES,
)
from jobs import report
from jobs.cli import Summary, run_job
from ml import btyd, revenue
from transforms import gold, scoring, training

log = logging.getLogger(__name__)


def champion(settings: Settings, model: str) -> tuple[dict[str, str], list[str], dict[str, float]] | None:
    """(lineage, input columns, logged test metrics) of ``model``'s current champion, or None.
    The lineage's ``intervals`` says whether the champion gives P10 / P50 / P90 ("true"/"false")."""
    version = tracking.champion(settings, model)
    if version is None:
        return None
    name, uri = version.name, f"models:/{version.name}/{version.version}"
    signature = mlflow.models.get_model_info(uri).signature
    inputs = signature.inputs.input_names()
    run = MlflowClient().get_run(version.run_id)
    candidate = version.tags.get("candidate", "torch")
    prefix = "test_" if candidate == "torch" else f"baseline_{candidate}_test_"
    metrics = {m: run.data.metrics.get(f"{prefix}{m}", float("nan")) for m in revenue.METRICS}
    return ({"model_name": name, "model_version": str(version.version), "run_id": version.run_id, "uri": uri,
             "candidate": candidate, "intervals": str(gives_intervals(signature)).lower()}, list(inputs), metrics)


def gives_intervals(signature) -> bool:
    """Whether a logged model gives P10 / P50 / P90: its signature has the ``intervals``
    parameter (jobs.train.log_candidates). A model logged before returns the mean only."""
    params = signature.params if signature is not None else None
    return params is not None and revenue.INTERVALS in [p.name for p in params.params]


# What a model that gives intervals returns per row, as spark_udf's struct result type: its
# fields are taken from the returned DataFrame's columns by name.
RESULT = ", ".join(f"{c} double" for c in revenue.OUTPUT_COLUMNS)


def predict(spark: SparkSession, frame: DataFrame, uri: str, inputs: list[str], intervals: bool = False) -> DataFrame:
    """``frame`` with ``prediction`` and ``prediction_p10`` / ``_p50`` / ``_p90`` columns from
    the logged model, in Arrow batches on the executors. The quantiles are null unless
    ``intervals`` (only a model that gives_intervals can be asked: one logged before has no
    such parameter and MLflow refuses it)."""
    quantiles = [f"prediction_{c}" for c in revenue.INTERVAL_COLUMNS]
    if not intervals:
        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", env_manager="local")
        return frame.withColumn("prediction", udf(*inputs)).select(
            "*", *[F.lit(None).cast("double").alias(c) for c in quantiles])
    udf = mlflow.pyfunc.spark_udf(spark, uri, result_type=RESULT, env_manager="local", params={revenue.INTERVALS: True})
    out = frame.withColumn("_out", udf(*inputs))
    return out.select(*frame.columns, F.col("_out.prediction").alias("prediction"),
                      *[F.col(f"_out.{c}").alias(q) for c, q in zip(revenue.INTERVAL_COLUMNS, quantiles)])


def _slice(spark: SparkSession, settings: Settings, table) -> tuple[DataFrame, int]:
    if not lake.exists(spark, settings, table):
        raise MissingInput(f"{table.qualified} not found under {settings.lake_root}: run jobs.aggregate "
                                f"--as-of {settings.as_of} first")
    v = lake.version(spark, settings, table)
    df = lake.read(spark, settings, table, as_of_version=v).where(F.col("as_of_date") == F.lit(settings.as_of))
    return df, v


def _check_inputs(model: str, inputs: list[str], spec: training.ModelSpec) -> None:
    missing = [c for c in inputs if c not in spec.features]
    if missing:
        raise InputRejected(f"the {model} champion reads {missing}, which today's features cannot give: retrain with "
                       f"jobs.train --as-of <date>, or score with the lake (and registry) it was trained for")


def execute(spark: SparkSession, settings: Settings, summary: Summary) -> Summary:
    as_of = settings.as_of
    tracking.experiment(settings, "revenue")
    features, features_v = _slice(spark, settings, USER_FEATURES)
    if features.limit(1).count() == 0:
        raise MissingInput(f"gold.user_features has no slice for {as_of}: run jobs.aggregate --as-of {as_of}")
    quality, quality_v = _slice(spark, settings, CREATOR_QUALITY)
    pairs, pairs_v = _slice(spark, settings, CREATOR_PLATFORM_PERIOD)
    platform_period, platform_v = _slice(spark, settings, PLATFORM_PERIOD)
    as_of_slice = f"as_of_date = DATE'{as_of.isoformat()}'"

    user_lineage, user_metrics, users = score_users(spark, settings, summary, features, features_v)
    scores_v = lake.replace_where(spark, settings, USER_REVENUE_SCORES, users, as_of_slice)
    summary.table(USER_REVENUE_SCORES.qualified, scores_v)
    champions = {"user_revenue": (user_lineage, user_metrics)}

    pair_found = champion(settings, "creator_platform_revenue")
    if pair_found is None:
        summary.skip("synergy and expansion skipped: no creator x platform model (the events name no creator, or "
                     "too few creator x platform pairs to train one)")
    else:
        pair_lineage, pair_inputs, pair_metrics = pair_found
        champions["creator_platform_revenue"] = (pair_lineage, pair_metrics)
        frame, synergy = score_pairs(spark, quality, pairs, pair_found, as_of,
                                     {"creator_quality": quality_v, "creator_platform_period": pairs_v})
        summary.table(SYNERGY_SCORES.qualified, lake.replace_where(spark, settings, SYNERGY_SCORES, synergy, as_of_slice))
        frame.unpersist()

    written = lake.read(spark, settings, USER_REVENUE_SCORES, as_of_version=scores_v).where(F.col("as_of_date") == F.lit(as_of))
    metrics = scoring.revenue_metrics(platform_period, pairs, written, features, gold.platforms_in(platform_period), as_of,
                                user_lineage, {"platform_period": platform_v, "user_features": features_v})
    summary.table(REVENUE_METRICS.qualified, lake.replace_where(spark, settings, REVENUE_METRICS, metrics, as_of_slice))

    result = {**scoring_result(spark, settings, champions), "btyd": summary.results.get("btyd")}
    summary.count("users scored", written.count())
    summary.count("creator x platform rows", len(result["tables"]["synergy_scores"]))
    for line in report.scoring_lines(result):
        summary.note(line)
    path = f"{settings.lake_root}/reports/ipsynergy-{as_of.isoformat()}.html"
    lake.write_text(spark, path, report.html_page(as_of, result, backtest_plot(user_lineage["run_id"])))
    summary.note(f"report: {path}")
    summary.result("scoring", {**result, "report": path})
    return summary


def score_users(spark: SparkSession, settings: Settings, summary: Summary, features: DataFrame,
                features_v: int) -> tuple[dict[str, str], dict[str, float], DataFrame]:
    """(lineage, logged metrics, scores) of every user of today's features, scored by the
    user model's champion, with P(alive) and the BTYD revenue from a fit on today's customers."""
    as_of = settings.as_of
    found = champion(settings, "user_revenue")
    if found is None:
        name = tracking.model_name(settings, "user_revenue")
        raise MissingInput(f"no @champion for {name} in {settings.tracking_uri}: run jobs.train --as-of {as_of} "
                           f"(every training run leaves one)")
    lineage, inputs, metrics = found
    platforms, categories = scoring.keys_of(inputs, "platform_"), scoring.keys_of(inputs, "cat_")
    spec = training.user_spec(platforms, categories)
    _check_inputs("user_revenue", inputs, spec)
    personas, personas_v = None, None
    if lake.exists(spark, settings, USER_PERSONAS):
        personas_v = lake.version(spark, settings, USER_PERSONAS)
        personas = (lake.read(spark, settings, USER_PERSONAS, as_of_version=personas_v)
                    .where(F.col("as_of_date") == F.lit(as_of)))
    frame = training.user_model_frame(features, spec, platforms, categories)
    # BG/NBD x Gamma-Gamma fitted on today's customers: P(alive) for the scores, and the
    # champion's BTYD features when it reads them.
    fitted = btyd.fit(btyd.rfm_sample(frame, settings.train.btyd_sample_cap, settings.train.seed))
    if fitted is None:
        summary.skip(f"BTYD: too few repeat customers as of {as_of} to fit BG/NBD x Gamma-Gamma: p_alive and "
                     f"btyd_revenue stay empty")
    else:
        summary.result("btyd", {"customers": fitted.customers, "repeat_customers": fitted.repeat_customers})
    frame = btyd.with_outputs(frame, fitted, settings.train.horizon_days)
    intervals = lineage["intervals"] == "true"
    if not intervals:
        summary.skip(f"{lineage['model_name']} v{lineage['model_version']} was logged before prediction intervals: "
                     f"predicted_revenue_p10 / _p50 / _p90 stay empty (retrain with jobs.train to fill them)")
    scored = predict(spark, frame, lineage["uri"], inputs, intervals)
    log.info("scoring users with %s v%s", lineage["model_name"], lineage["model_version"])
    return lineage, metrics, scoring.user_scores(scored, personas, as_of, settings.train.horizon_days, lineage, features_v,
                                           personas_v)


def score_pairs(spark: SparkSession, quality: DataFrame, pairs: DataFrame, found: tuple, as_of,
                versions: dict[str, int]) -> tuple[DataFrame, DataFrame]:
    """(the cached model frame, to release after the write; the synergy scores) of every
    creator x platform: the champion's prediction where the creator is, and where it could expand."""
    lineage, inputs, _ = found
    platforms, categories = scoring.keys_of(inputs, "is_"), scoring.keys_of(inputs, "cat_")
    spec = training.pair_spec(platforms, categories)
    _check_inputs("creator_platform_revenue", inputs, spec)
    frame = training.pair_model_frame(quality, pairs, spec, platforms, categories).cache()
    current = predict(spark, frame, lineage["uri"], inputs)
    potential = predict(spark, scoring.potential_frame(frame, quality, platforms, spec), lineage["uri"], inputs)
    return frame, scoring.synergy_scores(pairs, quality, current, potential, as_of, lineage, versions)


def scoring_result(spark: SparkSession, settings: Settings, champions: dict) -> dict:
    """What the summary and the report show, as data: today's synergy and revenue tables and
    persona profiles (pandas), the champions' lineage and metrics, the user model's backtest."""
    as_of = settings.as_of

    def today(table, empty_if_missing: bool = False):
        if lake.exists(spark, settings, table):
            return lake.read(spark, settings, table).where(F.col("as_of_date") == F.lit(as_of)).toPandas()
        return spark.createDataFrame([], table.schema).toPandas() if empty_if_missing else None

    tables = {t.name: today(t, empty_if_missing=True) for t in (SYNERGY_SCORES, REVENUE_METRICS)}
    return {"tables": tables, "profiles": today(PERSONA_PROFILES), "champions": champions,
            "backtest": backtest_of(champions["user_revenue"][0]["run_id"])}


def backtest_of(run_id: str) -> pd.DataFrame | None:
    """The backtest table logged by the user model's training run (None for a model trained
    before runs logged one)."""
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/backtest.json")
    except Exception:  # noqa: BLE001 - an older run without the artifact: nothing to show
        return None
    return pd.DataFrame(logged["data"], columns=logged["columns"])


def backtest_plot(run_id: str) -> bytes | None:
    """plots/backtest.png of the user model's training run (None for an older run)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/plots/backtest.png", dst_path=tmp)).read_bytes()
    except Exception:  # noqa: BLE001 - an older run without the plot: nothing to show
        return None


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.score", __doc__, argv, execute)


if __name__ == "__main__":
    sys.exit(main())
