"""Batch-scoring transforms: the counterfactual rows behind the expansion uplift, and the three
score tables (user revenue, creator x platform synergy, platform revenue balance).

Predictions come in as columns computed by the caller (the registered models run in a
pandas UDF); everything here is built-in Spark functions. Pure functions over DataFrames.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from core.tables import REVENUE_METRICS, SYNERGY_SCORES, USER_REVENUE_SCORES, select_contract
from transforms import training

# Pair features that describe the creator's presence on one platform; a counterfactual row
# takes the creator's mean over the platforms where it is active.
PRESENCE = ("k_items", "reads", "r_reads_per_item", "revenue", "x_revenue_per_read", "impressions", "ctr",
            "rec_read_share", "rec_revenue_share")


def keys_of(features: list[str], prefix: str) -> list[str]:
    """The platforms (``is_`` / ``platform_``) or categories (``cat_``) a model was trained on."""
    return [f[len(prefix):] for f in features if f.startswith(prefix)]


def _lineage(lineage: Mapping[str, str]) -> list:
    return [F.lit(lineage[k]).alias(k) for k in ("model_name", "model_version", "run_id")]


def user_scores(scored: DataFrame, personas: DataFrame | None, as_of: dt.date, horizon: int,
                lineage: Mapping[str, str], features_version: int, personas_version: int | None) -> DataFrame:
    """gold.user_revenue_scores: one row per scored user with its persona, lineage, the
    quantiles of its revenue and the BTYD view of it (``scored`` carries the
    training.BTYD_OUTPUTS columns and prediction_p10 / _p50 / _p90, null from a champion
    that gives no intervals)."""
    out = scored.select("user_id", "prediction", F.col("btyd_p_alive").alias("p_alive"),
                        (F.col("btyd_purchases") * F.col("btyd_spend")).alias("btyd_revenue"),
                        *[F.col(f"prediction_{q}").alias(f"predicted_revenue_{q}") for q in ("p10", "p50", "p90")])
    if personas is not None:
        out = out.join(personas.select("user_id", "persona_id", "persona_label"), "user_id", "left")
    else:
        out = out.withColumn("persona_id", F.lit(None)).withColumn("persona_label", F.lit(None))
    out = out.select("*", F.lit(as_of).alias("as_of_date"), F.greatest(F.col("prediction"), F.lit(0.0)).alias("predicted_revenue"),
                     F.lit(horizon).alias("horizon_days"), *_lineage(lineage),
                     F.lit(features_version).alias("user_features_version"),
                     F.lit(personas_version).alias("user_personas_version"))
    return select_contract(out, USER_REVENUE_SCORES)


def potential_frame(frame: DataFrame, creators: DataFrame, platforms: list[str], spec: training.ModelSpec) -> DataFrame:
    """One counterfactual row per (creator, platform): the creator as it is (Q, signals,
    category), its mean presence over the platforms where it is active (K, R, X, funnel),
    the platform's own E(P) as its E, and its reads and revenue elsewhere.

    ``frame``: the pair model's input rows of today (pair_model_frame); ``creators``: one row
    per creator to score (creator_id)."""
    active = frame.where(F.col("reads") > 0)
    mean_presence = active.groupBy("creator_id").agg(
        *[F.avg(c).alias(c) for c in PRESENCE],
        F.sum("reads").alias("_reads_all"), F.sum("revenue").alias("_revenue_all"),
        F.count(F.lit(1)).alias("_active"))
    profile_cols = [c for c in spec.features if c.startswith("cat_")] + \
        ["q", "completion_rate", "engagement_rate", "repeat_rate", "conversion_rate", "retention_rate"]
    profile = frame.groupBy("creator_id").agg(*[F.first(c, ignorenulls=True).alias(c) for c in profile_cols])
    e_p = frame.groupBy("platform").agg(F.avg("e").alias("e_p"))
    spine = creators.select("creator_id").crossJoin(
        frame.sparkSession.createDataFrame([(p,) for p in platforms], "platform string"))
    own = frame.select("creator_id", "platform", F.col("reads").alias("_own_reads"), F.col("revenue").alias("_own_revenue"))
    rows = (spine.join(profile, "creator_id", "left").join(mean_presence, "creator_id", "left")
                 .join(e_p, "platform", "left").join(own, ["creator_id", "platform"], "left")
                 .fillna(0, subset=["_reads_all", "_revenue_all", "_active", "_own_reads", "_own_revenue"])
                 .withColumn("e", F.col("e_p"))
                 .withColumn("reads_other", F.col("_reads_all") - F.col("_own_reads"))
                 .withColumn("revenue_other", F.col("_revenue_all") - F.col("_own_revenue"))
                 .withColumn("platforms_active", F.col("_active") + F.when(F.col("_own_reads") > 0, 0).otherwise(1))
                 .select("*", *[(F.col("platform") == p).cast("double").alias(f"is_{p}") for p in platforms]))
    return rows.select("creator_id", "platform", *[F.col(c).cast("double").alias(c) for c in spec.features])


def synergy_scores(pairs: DataFrame, quality: DataFrame, current: DataFrame, potential: DataFrame,
                   as_of: dt.date, lineage: Mapping[str, str], versions: Mapping[str, int]) -> DataFrame:
    """gold.synergy_scores: every creator x platform. Established / weak pairs carry Q, E,
    synergy = Q * E, R_C and the predicted next-period revenue; absent and weak ones (R_C
    below the platform's median among its active creators) also carry the revenue predicted
    if the creator expanded there (potential) and the uplift over today's prediction.

    ``current``: (creator_id, platform, prediction) for today's pairs; ``potential``: the same
    for the counterfactual rows of :func:`potential_frame`."""
    active = pairs.where(F.col("reads") > 0)
    median = active.groupBy("platform").agg(F.percentile_approx("r_c", 0.5, 10_000).alias("_median_r_c"))
    e_p = pairs.groupBy("platform").agg(F.avg("e").alias("e_p"))
    today = (pairs.select("creator_id", "platform", "e", "r_c", "reads")
                  .join(current.select("creator_id", "platform", F.col("prediction").alias("_now")),
                        ["creator_id", "platform"], "left"))
    out = (potential.select("creator_id", "platform", F.col("prediction").alias("_potential"))
                    .join(today, ["creator_id", "platform"], "left")
                    .join(quality.select("creator_id", "category", "q"), "creator_id", "left")
                    .join(median, "platform", "left").join(e_p, "platform", "left"))
    status = (F.when(F.coalesce(F.col("reads"), F.lit(0)) == 0, "absent")
               .when(F.col("r_c") < F.col("_median_r_c"), "weak").otherwise("established"))
    now = F.greatest(F.coalesce(F.col("_now"), F.lit(0.0)), F.lit(0.0))
    growth = F.col("status").isin("absent", "weak")
    out = (out.withColumn("status", status)
              .withColumn("predicted_revenue", now)
              .withColumn("potential_revenue", F.when(growth, F.greatest(F.col("_potential"), F.lit(0.0))))
              .withColumn("uplift", F.when(growth, F.greatest(F.col("_potential"), F.lit(0.0)) - now))
              .withColumn("e", F.when(F.col("status") != "absent", F.col("e")))
              .withColumn("synergy", F.col("q") * F.col("e"))
              .withColumn("r_c", F.coalesce(F.col("r_c"), F.lit(0.0)))
              .select("*", F.lit(as_of).alias("as_of_date"), *_lineage(lineage),
                      F.lit(versions["creator_quality"]).alias("creator_quality_version"),
                      F.lit(versions["creator_platform_period"]).alias("creator_platform_period_version")))
    return select_contract(out, SYNERGY_SCORES)


def revenue_metrics(platform_period: DataFrame, pairs: DataFrame, scores: DataFrame, features: DataFrame,
                    platforms: list[str], as_of: dt.date, lineage: Mapping[str, str],
                    versions: Mapping[str, int]) -> DataFrame:
    """gold.revenue_metrics: per platform, R_P against the creators' revenue ΣR_C (gap and the
    creators' share), and next period's revenue predicted from the user scores, each user's
    prediction split across platforms by the user's share of activity there, in total and per
    persona."""
    sum_r_c = pairs.groupBy("platform").agg(F.sum("r_c").alias("sum_r_c"))
    shares = features.select("user_id", F.explode("platform_share").alias("platform", "share"))
    split = (scores.select("user_id", "predicted_revenue", F.coalesce("persona_label", F.lit("(none)")).alias("persona"))
                   .join(shares, "user_id", "inner")
                   .withColumn("amount", F.col("predicted_revenue") * F.col("share")))
    by_persona = split.groupBy("platform", "persona").agg(F.sum("amount").alias("amount"))
    predicted = by_persona.groupBy("platform").agg(
        F.sum("amount").alias("predicted_revenue_next"),
        F.map_from_entries(F.collect_list(F.struct("persona", "amount"))).alias("predicted_by_persona"))
    spine = platform_period.sparkSession.createDataFrame([(p,) for p in platforms], "platform string")
    out = (spine.join(platform_period.select("platform", "period_start", "revenue", "r_p"), "platform", "left")
                .join(sum_r_c, "platform", "left").join(predicted, "platform", "left")
                .fillna(0.0, subset=["sum_r_c", "r_p", "predicted_revenue_next"])
                .withColumn("revenue", F.coalesce(F.col("revenue").cast("double"), F.lit(0.0)))
                .withColumn("predicted_by_persona", F.coalesce("predicted_by_persona", F.create_map().cast("map<string,double>")))
                .withColumn("gap", F.abs(F.col("r_p") - F.col("sum_r_c")))
                .withColumn("creator_share", F.when(F.col("r_p") + F.col("sum_r_c") > 0,
                                                    F.col("sum_r_c") / (F.col("r_p") + F.col("sum_r_c"))))
                .select("*", F.lit(as_of).alias("as_of_date"), *_lineage(lineage),
                        F.lit(versions["platform_period"]).alias("platform_period_version"),
                        F.lit(versions["user_features"]).alias("user_features_version")))
    return select_contract(out, REVENUE_METRICS)
