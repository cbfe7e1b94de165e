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
    select_contract,
)
from jobs import report
from jobs.cli import Summary, run_job
from ml import personas as P
from transforms.gold import map_keys_in

log = logging.getLogger(__name__)


def profiles(flat: DataFrame, assigned: DataFrame, cols: list[str], categories: list[str], platforms: list[str],
             names: dict[int, str], as_of, run_id: str) -> DataFrame:
    """Size, user and revenue shares, centre in original units (of the model's ``cols``), top
    platforms and categories."""
    df = assigned.select("user_id", "persona_id").join(flat, "user_id", "inner")
    total = df.agg(F.count(F.lit(1)).alias("n"), F.sum("monetary").alias("m")).first()
    plat = [F.avg(F.coalesce(F.col("platform_share")[p], F.lit(0.0))).alias(f"_p_{p}") for p in platforms]
    agg = df.groupBy("persona_id").agg(
        F.count(F.lit(1)).alias("size"), F.sum("monetary").alias("_revenue"),
        *[F.avg(c).alias(f"_c_{c}") for c in cols], *plat)

    def top(prefix: str, keys: list[str], n: int = 2):
        if not keys:
            return F.array().cast("array<string>")
        ranked = F.array_sort(F.array(*[F.struct((-F.col(f"{prefix}{k}")).alias("neg"), F.lit(k).alias("key"))
                                        for k in keys]))
        return F.slice(F.transform(F.filter(ranked, lambda s: s["neg"] < 0), lambda s: s["key"]), 1, n)

    out = agg.select(
        F.lit(as_of).alias("as_of_date"), "persona_id", P.label_column(names).alias("persona_label"), "size",
        (F.col("size") / F.lit(total["n"])).alias("user_share"),
        (F.col("_revenue") / F.lit(total["m"]) if total["m"] else F.lit(None)).alias("revenue_share"),
        F.map_from_arrays(F.array(*[F.lit(c) for c in cols]), F.array(*[F.col(f"_c_{c}") for c in cols])).alias("centre"),
        top("_p_", platforms).alias("top_platforms"),
        top("_c_cat_", [c for c in categories if P.category_column(c) in cols]).alias("top_categories"),
        F.lit(run_id).alias("mlflow_run_id"),
    )
    return select_contract(out, PERSONA_PROFILES)


def transitions(current: DataFrame, previous: DataFrame, as_of, previous_as_of) -> DataFrame:
    """Users per (persona before, persona now); "(new)" / "(gone)" for users in one run only."""
    joined = (previous.select("user_id", F.col("persona_label").alias("from_label"))
              .join(current.select("user_id", F.col("persona_label").alias("to_label")), "user_id", "full"))
    out = (joined.fillna({"from_label": "(new)", "to_label": "(gone)"})
                 .groupBy("from_label", "to_label").agg(F.count(F.lit(1)).alias("users"))
                 .withColumn("as_of_date", F.lit(as_of)).withColumn("previous_as_of_date", F.lit(previous_as_of)))
    return select_contract(out, PERSONA_TRANSITIONS)


def execute(spark: SparkSession, settings: Settings, summary: Summary) -> Summary:
    as_of, cfg = settings.as_of, settings.personas
    if not lake.exists(spark, settings, USER_FEATURES):
        raise MissingInput(f"gold.user_features not found under {settings.lake_root}: run jobs.aggregate "
                                f"--as-of {as_of} first")
    features = lake.read(spark, settings, USER_FEATURES).where(F.col("as_of_date") == F.lit(as_of))
    n_users = features.count()
    summary.count("users", n_users)
    if n_users < 2 * cfg.k_min:
        summary.note(f"personas skipped: gold.user_features holds {n_users} users for as_of {as_of}, too few for "
                     f"{cfg.k_min} personas (K-means needs at least {2 * cfg.k_min}); later stages go on without")
        return summary
    if n_users < 2 * cfg.k_max:  # few users: fewer candidate personas, each with at least two of them
        cfg = cfg.model_copy(update={"k_max": n_users // 2})
        summary.note(f"only {n_users} users: candidate k limited to {cfg.k_min}..{cfg.k_max}")
    features_version = lake.version(spark, settings, USER_FEATURES)
    categories = map_keys_in(features, "category_share")
    platforms = map_keys_in(features, "platform_share")
    flat = P.model_input(features, categories, cfg.partitions).persist(StorageLevel.MEMORY_AND_DISK)
    cols, dropped = P.model_columns(flat, categories)
    if dropped:
        summary.note(f"features left out (null or one value for every user): {', '.join(dropped)}")
    if not cols:
        flat.unpersist()
        summary.note("personas skipped: no feature varies between users")
        return summary
    prep = P.prep_pipeline(cols).fit(flat)
    data = prep.transform(flat).select("user_id", P.PREP_OUT).persist(StorageLevel.MEMORY_AND_DISK)

    def progress(c: P.Candidate) -> None:
        log.info("k=%d silhouette %.3f stability (ARI) %.3f smallest share %.3f cost %.1f",
                 c.k, c.silhouette, c.stability, c.min_share, c.cost)

    selection = P.choose_k(data, cfg, progress)
    best = selection.chosen
    z = P.centres_z(best.model, cols)
    names = dict(enumerate(P.labels(z)))
    assigned = best.model.transform(data)
    assigned = assigned.withColumn("distance", P.distance_to_centre(assigned, best.model)).persist(StorageLevel.MEMORY_AND_DISK)
    sizes = best.model.summary.clusterSizes  # counted when the model was fitted on these rows

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
            for path in report.persona_plots(z.set_axis(ordered), ordered, sizes, Path(tmp)):
                mlflow.log_artifact(str(path), "plots")
        mlflow.spark.log_model(P.fitted_pipeline(prep, best.model), artifact_path="persona_pipeline",
                               pip_requirements=[f"pyspark=={pyspark.__version__}"])
        run_id = run.info.run_id

    as_of_slice = f"as_of_date = DATE'{as_of.isoformat()}'"
    personas = select_contract(assigned.select("user_id", F.lit(as_of).alias("as_of_date"), "persona_id",
                                               P.label_column(names).alias("persona_label"), "distance"),
                               USER_PERSONAS)
    summary.table(USER_PERSONAS.qualified, lake.replace_where(spark, settings, USER_PERSONAS, personas, as_of_slice))
    prof = profiles(flat, assigned, cols, categories, platforms, names, as_of, run_id)
    summary.table(PERSONA_PROFILES.qualified, lake.replace_where(spark, settings, PERSONA_PROFILES, prof, as_of_slice))

    written = lake.read(spark, settings, USER_PERSONAS)
    previous_as_of = written.where(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date")).first()[0]
    if previous_as_of is not None:
        moves = transitions(written.where(F.col("as_of_date") == F.lit(as_of)),
                            written.where(F.col("as_of_date") == F.lit(previous_as_of)), as_of, previous_as_of)
        summary.table(PERSONA_TRANSITIONS.qualified,
                      lake.replace_where(spark, settings, PERSONA_TRANSITIONS, moves, as_of_slice))
        stayed = moves.where("from_label = to_label").agg(F.sum("users")).first()[0] or 0
        summary.note(f"transitions from {previous_as_of}: {stayed:,} users kept their persona "
                     "(gold.persona_transitions)")

    summary.note(f"k = {best.k} ({selection.reason}); silhouette {best.silhouette:.3f}, "
                 f"stability ARI {best.stability:.3f}; MLflow run {run_id}")
    summary.note("candidates: " + "; ".join(f"k={c.k} sil {c.silhouette:.3f} ari {c.stability:.2f} "
                                             f"min {c.min_share:.1%}" for c in selection.candidates))
    summary.note(f"{'persona':<58} {'users':>7} {'share':>7} {'revenue':>8}")
    for r in lake.read(spark, settings, PERSONA_PROFILES).where(F.col("as_of_date") == F.lit(as_of)).orderBy(F.desc("size")).collect():
        rev = "n/a" if r.revenue_share is None else f"{r.revenue_share:.1%}"
        summary.note(f"{r.persona_label[:58]:<58} {r.size:>7,} {r.user_share:>7.1%} {rev:>8}")
    for df in (assigned, data, flat):
        df.unpersist()
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.personas", __doc__, argv, execute)


if __name__ == "__main__":
    sys.exit(main())
