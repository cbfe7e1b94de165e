"""How well the pipeline recovers what the generator planted: identities, creator quality,
platform promotion, personas and synergy. Each function takes the pipeline's output and the
truth as DataFrames and returns a figure (None when there is too little to compare); only
small aggregates reach the driver."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.stats import spearmanr

from ml.personas import adjusted_rand_index


def identity(identity_map: DataFrame, accounts: DataFrame) -> dict[str, float] | None:
    """Identity stitching against the planted people: ``purity`` (share of user ids whose
    accounts all belong to one person) and ``completeness`` (share of people whose accounts
    all got one user id)."""
    joined = identity_map.join(accounts, ["platform", "account_id"], "inner")
    users = joined.groupBy("user_id").agg(F.countDistinct("person_id").alias("n"))
    people = joined.groupBy("person_id").agg(F.countDistinct("user_id").alias("n"))
    purity = users.agg(F.avg((F.col("n") == 1).cast("double"))).first()[0]
    if purity is None:  # no account of the map is a planted one
        return None
    completeness = people.agg(F.avg((F.col("n") == 1).cast("double"))).first()[0]
    return {"purity": float(purity), "completeness": float(completeness)}


def _spearman(frame: DataFrame, a: str, b: str) -> tuple[float, int] | None:
    pdf = frame.select(a, b).dropna().toPandas()
    return (float(spearmanr(pdf[a], pdf[b]).statistic), len(pdf)) if len(pdf) >= 3 else None


def quality(creator_quality: DataFrame, creators: DataFrame) -> tuple[float, int] | None:
    """Spearman of Q(C) against the planted creator quality, and the creators compared."""
    return _spearman(creator_quality.join(creators.select("creator_id", "quality"), "creator_id"), "q", "quality")


def promotion(platform_period: DataFrame, platforms: DataFrame) -> tuple[float, int] | None:
    """Spearman of E(P) against the planted platform promotion, and the platforms compared."""
    return _spearman(platform_period.join(platforms, "platform"), "e_p", "promotion")


def personas(user_personas: DataFrame, identity_map: DataFrame, accounts: DataFrame) -> float | None:
    """Adjusted Rand index of the personas against the planted ones (a user's planted persona:
    that of the person behind its accounts)."""
    planted = (accounts.join(identity_map, ["platform", "account_id"], "inner")
               .groupBy("user_id").agg(F.min("persona").alias("planted")))
    joined = user_personas.join(planted, "user_id", "inner")
    return adjusted_rand_index(joined, "persona_id", "planted") if joined.limit(1).count() else None


def synergy(synergy_scores: DataFrame, creators: DataFrame, platforms: DataFrame) -> tuple[float, int] | None:
    """Spearman of the synergy against planted quality x promotion over the scored pairs."""
    planted = (creators.select("creator_id", "quality").crossJoin(platforms)
               .select("creator_id", "platform", (F.col("quality") * F.col("promotion")).alias("planted")))
    return _spearman(synergy_scores.join(planted, ["creator_id", "platform"]), "synergy", "planted")
