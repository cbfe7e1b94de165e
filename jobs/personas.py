"""Personas for one --as-of date: Spark MLlib K-means over gold.user_features.

Prepares the features (signed log of heavy-tailed counts, median imputation, z-scores), fits
K-means (k-means|| initialisation, several restarts) for every k in personas.k_min..k_max,
and keeps the best silhouette among the candidates that are stable across bootstrap samples
and whose smallest persona is big enough. Writes gold.user_personas, gold.persona_profiles
and gold.persona_transitions (from the previous as_of), replacing this as_of's slice, and logs
every candidate, the choice, plots and the fitted pipeline to MLflow (experiment
<prefix>-personas).
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.spark
import pyspark
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import lake, tracking
from core.errors import MissingInput
from core.settings import Settings
from core.tables import (
    PERSONA_PROFILES,
    PERSONA_TRANSITIONS,
    USER_FEATURES,
    USER_PERSONAS,
)
from jobs import report
from jobs.cli import Summary, run_job
from ml import personas as persona_model
from transforms.gold import map_keys_in

log = logging.getLogger(__name__)


def execute(spark: SparkSession, settings: Settings, summary: Summary) -> Summary:
    as_of, cfg = settings.as_of, settings.personas
    if not lake.exists(spark, settings, USER_FEATURES):
        raise MissingInput(f"gold.user_features not found under {settings.lake_root}: run jobs.aggregate "
                           f"--as-of {as_of} first")
    features_version = lake.version(spark, settings, USER_FEATURES)
    features = (lake.read(spark, settings, USER_FEATURES, as_of_version=features_version)
                .where(F.col("as_of_date") == F.lit(as_of)))
    n_users = features.count()
    summary.count("users", n_users)
    if n_users < 2 * cfg.k_min:
        summary.skip(f"personas skipped: gold.user_features holds {n_users} users for as_of {as_of}, too few for "
                     f"{cfg.k_min} personas (K-means needs at least {2 * cfg.k_min}); later stages go on without")
        return summary
    if n_users < 2 * cfg.k_max:  # few users: fewer candidate personas, each with at least two of them
        cfg = cfg.model_copy(update={"k_max": n_users // 2})
        summary.note(f"only {n_users} users: candidate k limited to {cfg.k_min}..{cfg.k_max}")
    categories = map_keys_in(features, "category_share")
    platforms = map_keys_in(features, "platform_share")
    flat = persona_model.model_input(features, categories, cfg.partitions).persist(StorageLevel.MEMORY_AND_DISK)
    cols, dropped = persona_model.model_columns(flat, categories)
    if dropped:
        summary.skip(f"features left out (null or one value for every user): {', '.join(dropped)}")
    if not cols:
        flat.unpersist()
        summary.skip("personas skipped: no feature varies between users")
        return summary
    prep = persona_model.prep_pipeline(cols).fit(flat)
    data = prep.transform(flat).select("user_id", persona_model.PREP_OUT).persist(StorageLevel.MEMORY_AND_DISK)
    selection = persona_model.choose_k(data, cfg, _progress)
    best = selection.chosen
    z = persona_model.centres_z(best.model, cols)
    names = dict(enumerate(persona_model.labels(z)))
    assigned = best.model.transform(data)
    assigned = (assigned.withColumn("distance", persona_model.distance_to_centre(assigned, best.model))
                .persist(StorageLevel.MEMORY_AND_DISK))
    run_id = log_run(settings, cfg, features, features_version, cols, dropped, selection, prep, z, names)

    as_of_slice = f"as_of_date = DATE'{as_of.isoformat()}'"
    personas = persona_model.user_personas(assigned, names, as_of)
    summary.table(USER_PERSONAS.qualified, lake.replace_where(spark, settings, USER_PERSONAS, personas, as_of_slice))
    profiles = persona_model.profiles(flat, assigned, cols, categories, platforms, names, as_of, run_id)
    summary.table(PERSONA_PROFILES.qualified,
                  lake.replace_where(spark, settings, PERSONA_PROFILES, profiles, as_of_slice))
    write_transitions(spark, settings, summary)
    for df in (assigned, data, flat):
        df.unpersist()
    summary.note(f"k = {best.k} ({selection.reason}); silhouette {best.silhouette:.3f}, "
                 f"stability ARI {best.stability:.3f}; MLflow run {run_id}")
    summary.note("candidates: " + "; ".join(f"k={c.k} sil {c.silhouette:.3f} ari {c.stability:.2f} "
                                             f"min {c.min_share:.1%}" for c in selection.candidates))
    written = lake.read(spark, settings, PERSONA_PROFILES).where(F.col("as_of_date") == F.lit(as_of))
    for line in report.persona_lines(written.orderBy(F.desc("size")).toPandas()):
        summary.note(line)
    return summary


def _progress(c: persona_model.Candidate) -> None:
    log.info("k=%d silhouette %.3f stability (ARI) %.3f smallest share %.3f cost %.1f",
             c.k, c.silhouette, c.stability, c.min_share, c.cost)


def log_run(settings: Settings, cfg, features: DataFrame, features_version: int, cols: list[str],
            dropped: list[str], selection, prep, z, names: dict[int, str]) -> str:
    """One MLflow run of the k sweep: every candidate's metrics, the choice, the plots and the
    fitted pipeline (preparation + K-means). Returns its run id."""
    best, as_of = selection.chosen, settings.as_of
    tracking.experiment(settings, "personas")
    with mlflow.start_run(run_name=f"personas-{as_of}") as run:
        mlflow.log_params({"as_of": str(as_of), "k_range": f"{cfg.k_min}-{cfg.k_max}", "restarts": cfg.restarts,
                           "seed": cfg.seed, "max_iter": cfg.max_iter, "init_mode": "k-means||",
                           "init_steps": cfg.init_steps, "min_share": cfg.min_share,
                           "min_stability": cfg.min_stability, "features": ",".join(cols),
                           "features_dropped": ",".join(dropped) or "(none)",
                           "chosen_k": best.k, "selection": selection.reason})
        mlflow.log_input(mlflow.data.from_spark(features, path=lake.path_of(settings, USER_FEATURES),
                                                name=f"{USER_FEATURES.qualified}@v{features_version}"), context="training")
        for c in selection.candidates:
            for key, value in c.metrics.items():
                mlflow.log_metric(key, value, step=c.k)          # one chart per metric across k
                mlflow.log_metric(f"{key}_k{c.k}", value)        # one column per k in the runs table
        mlflow.log_metrics({"chosen_k": best.k, "silhouette_chosen": best.silhouette,
                            "stability_ari_chosen": best.stability})
        with tempfile.TemporaryDirectory() as tmp:
            ordered = [names[i] for i in range(best.k)]
            sizes = best.model.summary.clusterSizes  # counted when the model was fitted on these rows
            for path in report.persona_plots(z.set_axis(ordered), ordered, sizes, Path(tmp)):
                mlflow.log_artifact(str(path), "plots")
        mlflow.spark.log_model(persona_model.fitted_pipeline(prep, best.model), artifact_path="persona_pipeline",
                               pip_requirements=[f"pyspark=={pyspark.__version__}"])
        return run.info.run_id


def write_transitions(spark: SparkSession, settings: Settings, summary: Summary) -> None:
    """gold.persona_transitions from the previous as_of's personas to this one's (none on the first run)."""
    as_of = settings.as_of
    written = lake.read(spark, settings, USER_PERSONAS)
    previous_as_of = written.where(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date")).first()[0]
    if previous_as_of is None:
        return
    moves = persona_model.transitions(written.where(F.col("as_of_date") == F.lit(as_of)),
                                      written.where(F.col("as_of_date") == F.lit(previous_as_of)), as_of, previous_as_of)
    summary.table(PERSONA_TRANSITIONS.qualified,
                  lake.replace_where(spark, settings, PERSONA_TRANSITIONS, moves, f"as_of_date = DATE'{as_of.isoformat()}'"))
    stayed = moves.where("from_label = to_label").agg(F.sum("users")).first()[0] or 0
    summary.note(f"transitions from {previous_as_of}: {stayed:,} users kept their persona (gold.persona_transitions)")


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.personas", __doc__, argv, execute)


if __name__ == "__main__":
    sys.exit(main())
