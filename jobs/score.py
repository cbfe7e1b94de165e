"""Score one --as-of date with the champion models and write the synergy and revenue tables.

- gold.user_revenue_scores: every user of gold.user_features at --as-of, scored once by
  models:/<prefix>-user_revenue@champion (Arrow pandas UDF: mlflow.pyfunc.spark_udf), with
  persona, model name / version / run id and the input table versions.
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
from ml import btyd
from ml import revenue as R
from transforms import gold
from transforms import scoring as S
from transforms import training as T

log = logging.getLogger(__name__)


def champion(settings: Settings, model: str) -> tuple[dict[str, str], list[str], dict[str, float]] | None:
    """(lineage, input columns, logged test metrics) of ``model``'s current champion, or None."""
    version = tracking.champion(settings, model)
    if version is None:
        return None
    name, uri = version.name, f"models:/{version.name}/{version.version}"
    inputs = mlflow.models.get_model_info(uri).signature.inputs.input_names()
    run = MlflowClient().get_run(version.run_id)
    candidate = version.tags.get("candidate", "torch")
    prefix = "test_" if candidate == "torch" else f"baseline_{candidate}_test_"
    metrics = {m: run.data.metrics.get(f"{prefix}{m}", float("nan")) for m in R.METRICS}
    return ({"model_name": name, "model_version": str(version.version), "run_id": version.run_id, "uri": uri,
             "candidate": candidate}, list(inputs), metrics)


def predict(spark: SparkSession, frame: DataFrame, uri: str, inputs: list[str]) -> DataFrame:
    """``frame`` with a ``prediction`` column from the logged model, in Arrow batches on the executors."""
    udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", env_manager="local")
    return frame.withColumn("prediction", udf(*inputs))


def _slice(spark: SparkSession, settings: Settings, table) -> tuple[DataFrame, int]:
    if not lake.exists(spark, settings, table):
        raise MissingInput(f"{table.qualified} not found under {settings.lake_root}: run jobs.aggregate "
                                f"--as-of {settings.as_of} first")
    v = lake.version(spark, settings, table)
    df = lake.read(spark, settings, table, as_of_version=v).where(F.col("as_of_date") == F.lit(settings.as_of))
    return df, v


def _check_inputs(model: str, inputs: list[str], spec: T.ModelSpec) -> None:
    missing = [c for c in inputs if c not in spec.features]
    if missing:
        raise InputRejected(f"the {model} champion reads {missing}, which today's features cannot give: retrain with "
                       f"jobs.train --as-of <date>, or score with the lake (and registry) it was trained for")


def execute(spark: SparkSession, settings: Settings, summary: Summary) -> Summary:
    as_of = settings.as_of
    tracking.experiment(settings, "revenue")
    features, features_v = _slice(spark, settings, USER_FEATURES)
    quality, quality_v = _slice(spark, settings, CREATOR_QUALITY)
    pairs, pairs_v = _slice(spark, settings, CREATOR_PLATFORM_PERIOD)
    platform_period, platform_v = _slice(spark, settings, PLATFORM_PERIOD)
    if features.limit(1).count() == 0:
        raise MissingInput(f"gold.user_features has no slice for {as_of}: run jobs.aggregate --as-of {as_of}")
    as_of_slice = f"as_of_date = DATE'{as_of.isoformat()}'"

    # -- users ------------------------------------------------------------------------------
    found = champion(settings, "user_revenue")
    if found is None:
        name = tracking.model_name(settings, "user_revenue")
        raise MissingInput(f"no @champion for {name} in {settings.tracking_uri}: run jobs.train --as-of {as_of} "
                       f"(every training run leaves one)")
    user_lineage, inputs, user_metrics = found
    platforms, categories = S.keys_of(inputs, "platform_"), S.keys_of(inputs, "cat_")
    spec = T.user_spec(platforms, categories)
    _check_inputs("user_revenue", inputs, spec)
    personas, personas_v = None, None
    if lake.exists(spark, settings, USER_PERSONAS):
        personas_v = lake.version(spark, settings, USER_PERSONAS)
        personas = (lake.read(spark, settings, USER_PERSONAS, as_of_version=personas_v)
                    .where(F.col("as_of_date") == F.lit(as_of)))
    frame = T.user_model_frame(features, spec, platforms, categories)
    # BG/NBD x Gamma-Gamma fitted on today's customers: P(alive) for the scores, and the
    # champion's BTYD features when it reads them.
    fitted = btyd.fit(btyd.rfm_sample(frame, settings.train.btyd_sample_cap, settings.train.seed))
    if fitted is None:
        summary.note(f"BTYD: too few repeat customers as of {as_of} to fit BG/NBD x Gamma-Gamma: p_alive and "
                     f"btyd_revenue stay empty")
    else:
        summary.note(f"BTYD fitted on {fitted.customers:,} customers ({fitted.repeat_customers:,} repeat)")
    frame = btyd.with_outputs(frame, fitted, settings.train.horizon_days)
    scored = predict(spark, frame, user_lineage["uri"], inputs)
    users = S.user_scores(scored, personas, as_of, settings.train.horizon_days, user_lineage, features_v, personas_v)
    log.info("scoring users with %s v%s", user_lineage["model_name"], user_lineage["model_version"])
    scores_v = lake.replace_where(spark, settings, USER_REVENUE_SCORES, users, as_of_slice)
    summary.table(USER_REVENUE_SCORES.qualified, scores_v)

    # -- creator x platform -------------------------------------------------------------------
    pair_found = champion(settings, "creator_platform_revenue")
    champions = {"user_revenue": (user_lineage, user_metrics)}
    if pair_found is None:
        summary.note("synergy and expansion skipped: no creator x platform model (the events name no creator, or "
                     "too few creator x platform pairs to train one)")
    else:
        pair_lineage, pair_inputs, pair_metrics = pair_found
        champions["creator_platform_revenue"] = (pair_lineage, pair_metrics)
        pair_platforms, pair_categories = S.keys_of(pair_inputs, "is_"), S.keys_of(pair_inputs, "cat_")
        pspec = T.pair_spec(pair_platforms, pair_categories)
        _check_inputs("creator_platform_revenue", pair_inputs, pspec)
        frame = T.pair_model_frame(quality, pairs, pspec, pair_platforms, pair_categories).cache()
        current = predict(spark, frame, pair_lineage["uri"], pair_inputs)
        potential = predict(spark, S.potential_frame(frame, quality, pair_platforms, pspec), pair_lineage["uri"],
                            pair_inputs)
        synergy = S.synergy_scores(pairs, quality, current, potential, as_of, pair_lineage,
                                   {"creator_quality": quality_v, "creator_platform_period": pairs_v})
        summary.table(SYNERGY_SCORES.qualified, lake.replace_where(spark, settings, SYNERGY_SCORES, synergy, as_of_slice))
        frame.unpersist()

    # -- platforms ----------------------------------------------------------------------------
    written = lake.read(spark, settings, USER_REVENUE_SCORES, as_of_version=scores_v).where(F.col("as_of_date") == F.lit(as_of))
    metrics = S.revenue_metrics(platform_period, pairs, written, features, gold.platforms_in(platform_period), as_of,
                                user_lineage, {"platform_period": platform_v, "user_features": features_v})
    summary.table(REVENUE_METRICS.qualified, lake.replace_where(spark, settings, REVENUE_METRICS, metrics, as_of_slice))

    tables = {t.name: (lake.read(spark, settings, t).where(F.col("as_of_date") == F.lit(as_of))
                       if lake.exists(spark, settings, t) else spark.createDataFrame([], t.schema)).toPandas()
              for t in (SYNERGY_SCORES, REVENUE_METRICS)}
    summary.count("users scored", written.count())
    summary.count("creator x platform rows", len(tables["synergy_scores"]))
    profiles = (lake.read(spark, settings, PERSONA_PROFILES).where(F.col("as_of_date") == F.lit(as_of)).toPandas()
                if lake.exists(spark, settings, PERSONA_PROFILES) else None)
    backtest = backtest_of(user_lineage["run_id"])
    lines = report.summary_lines(tables, profiles, champions) + report.backtest_lines(backtest)
    for line in lines:
        summary.note(line)
    path = f"{settings.lake_root}/reports/ipsynergy-{as_of.isoformat()}.html"
    lake.write_text(spark, path, report.html_page(as_of, tables, profiles, lines, backtest_plot(user_lineage["run_id"])))
    summary.note(f"report: {path}")
    return summary


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
