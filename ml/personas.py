"""User personas with Spark MLlib: feature preparation, K-means over candidate k, selection by
silhouette, stability and minimum share, readable labels, and per-persona profiles.

Pure functions over DataFrames; nothing here reads or writes storage or MLflow. Everything
that touches users runs in Spark; only k x k contingency tables and k centres reach the driver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import Imputer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from core.settings import PersonaSettings
from core.tables import PERSONA_PROFILES, PERSONA_TRANSITIONS, USER_PERSONAS, select_contract
from transforms.training import share_columns

# Heavy-tailed counts and amounts enter as sign(x) * ln(1 + |x|).
LOG_FEATURES = ("events", "active_days", "monetary", "orders", "avg_order_value", "watch_hours",
                "social_actions", "recency_days")
PLAIN_FEATURES = ("completion_rate", "rec_ctr", "refund_rate", "platforms_used")
# What a high (or low) centre on a feature says about a persona; None: not worth saying.
PHRASES = {
    "events": ("very active", "barely active"),
    "active_days": ("frequent visitors", "rare visitors"),
    "monetary": ("high-spend", "low-spend"),
    "orders": ("frequent buyers", "non-buyers"),
    "avg_order_value": ("premium buyers", "budget buyers"),
    "watch_hours": ("long watchers", "short watchers"),
    "social_actions": ("social", "quiet"),
    "recency_days": ("lapsed", "recently active"),
    "completion_rate": ("completers", "drop-outs"),
    "rec_ctr": ("recommendation-driven", "recommendation-averse"),
    "refund_rate": ("refund-prone", "refund-free"),
    "platforms_used": ("cross-platform", "single-platform"),
}
PREP_OUT = "features"


def category_column(category: str) -> str:
    return f"cat_{category}"


def flatten(features: DataFrame, categories: list[str]) -> DataFrame:
    """gold.user_features with the category mix as one column per category (0 when absent)."""
    return features.select("*", *share_columns(F.col("category_share"), categories, category_column("")))


def model_input(features: DataFrame, categories: list[str], partitions: int) -> DataFrame:
    """:func:`flatten`, hash-partitioned by user into a fixed number of partitions in user order.
    K-means|| samples per partition, so this makes the same data and seed give the same
    personas on any cluster and shuffle setting."""
    return flatten(features, categories).repartition(partitions, "user_id").sortWithinPartitions("user_id")


def input_columns(categories: list[str]) -> list[str]:
    return [*LOG_FEATURES, *PLAIN_FEATURES, *[category_column(c) for c in categories]]


def model_columns(flat: DataFrame, categories: list[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped) of :func:`input_columns`: a column that is null for every user, or
    holds one value for all of them, says nothing about who is who (and the imputer cannot fill
    an all-null one); nor does platforms_used when nobody uses two platforms. Exports without a
    funnel, without watch time or with one platform have such columns. One aggregation in Spark."""
    cols = input_columns(categories)
    stats = flat.agg(*[F.count(c).alias(f"n_{i}") for i, c in enumerate(cols)],
                     *[F.min(F.col(c).cast("double")).alias(f"lo_{i}") for i, c in enumerate(cols)],
                     *[F.max(F.col(c).cast("double")).alias(f"hi_{i}") for i, c in enumerate(cols)]).first()
    kept = [c for i, c in enumerate(cols) if stats[f"n_{i}"] and stats[f"lo_{i}"] != stats[f"hi_{i}"]
            # with one platform in the data it only tells active from inactive users, and
            # would label them "cross-platform"
            and not (c == "platforms_used" and stats[f"hi_{i}"] <= 1)]
    return kept, [c for c in cols if c not in kept]


def prep_pipeline(cols: list[str]) -> Pipeline:
    """signed log1p -> median imputation -> assembly -> standardisation (z-scores) of ``cols``
    (names from :func:`input_columns`)."""
    # back-quoted: category columns carry the category's own name (e.g. cat_历史)
    transforms = [f"SIGN(`{c}`) * LN(1 + ABS(`{c}`)) AS `_t_{c}`" if c in LOG_FEATURES
                  else f"CAST(`{c}` AS DOUBLE) AS `_t_{c}`" for c in cols]
    sql = SQLTransformer(statement=f"SELECT *, {', '.join(transforms)} FROM __THIS__")
    transformed = [f"_t_{c}" for c in cols]
    imputed = [f"_i_{c}" for c in cols]
    return Pipeline(stages=[
        sql,
        Imputer(inputCols=transformed, outputCols=imputed, strategy="median"),
        VectorAssembler(inputCols=imputed, outputCol="_raw_vector"),
        StandardScaler(inputCol="_raw_vector", outputCol=PREP_OUT, withMean=True, withStd=True),
    ])


def kmeans(k: int, seed: int, cfg: PersonaSettings) -> KMeans:
    return KMeans(k=k, seed=seed, initMode="k-means||", initSteps=cfg.init_steps, maxIter=cfg.max_iter,
                  tol=cfg.tol, featuresCol=PREP_OUT, predictionCol="persona_id")


def fit_best_of(data: DataFrame, k: int, cfg: PersonaSettings, seed: int) -> KMeansModel:
    """The lowest-cost of ``cfg.restarts`` fits (different seeds): a guard against poor local optima."""
    fits = [kmeans(k, seed + 1000 * r, cfg).fit(data) for r in range(cfg.restarts)]
    return min(fits, key=lambda m: m.summary.trainingCost)  # first of equals: deterministic


def adjusted_rand_index(df: DataFrame, a: str, b: str) -> float:
    """Adjusted Rand index of two labelings of the same rows, from their contingency table
    (computed in Spark; only the k_a x k_b counts reach the driver)."""
    counts = [r["n"] for r in df.groupBy(a, b).agg(F.count(F.lit(1)).alias("n")).collect()]
    rows = df.groupBy(a).agg(F.count(F.lit(1)).alias("n")).collect()
    cols = df.groupBy(b).agg(F.count(F.lit(1)).alias("n")).collect()
    pairs = lambda n: n * (n - 1) / 2  # noqa: E731
    n = sum(counts)
    index = sum(pairs(c) for c in counts)
    sum_a, sum_b = sum(pairs(r["n"]) for r in rows), sum(pairs(r["n"]) for r in cols)
    expected = sum_a * sum_b / pairs(n) if n > 1 else 0.0
    maximum = (sum_a + sum_b) / 2
    return 1.0 if math.isclose(maximum, expected) else (index - expected) / (maximum - expected)


@dataclass
class Candidate:
    k: int
    model: KMeansModel
    silhouette: float
    stability: float
    min_share: float
    cost: float

    @property
    def metrics(self) -> dict[str, float]:
        return {"silhouette": self.silhouette, "stability_ari": self.stability, "min_share": self.min_share,
                "cost": self.cost}


@dataclass
class Selection:
    chosen: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    reason: str = ""


def evaluate_k(data: DataFrame, k: int, cfg: PersonaSettings) -> Candidate:
    """Fit k on all rows; score its silhouette, its smallest share, and its stability: the
    agreement (ARI) on all rows of two fits made on different bootstrap samples."""
    model = fit_best_of(data, k, cfg, cfg.seed)
    predicted = model.transform(data)
    silhouette = ClusteringEvaluator(featuresCol=PREP_OUT, predictionCol="persona_id", metricName="silhouette",
                                     distanceMeasure="squaredEuclidean").evaluate(predicted)
    sizes = [r["n"] for r in predicted.groupBy("persona_id").agg(F.count(F.lit(1)).alias("n")).collect()]
    boots = []
    for b in (1, 2):
        sample = data.sample(withReplacement=False, fraction=cfg.bootstrap_fraction, seed=cfg.seed + 77 * b)
        boots.append(fit_best_of(sample, k, cfg, cfg.seed + 7919 * b))
    both = boots[1].transform(boots[0].transform(data).withColumnRenamed("persona_id", "a")).withColumnRenamed("persona_id", "b")
    stability = adjusted_rand_index(both, "a", "b")
    return Candidate(k, model, silhouette, stability, min(sizes) / sum(sizes) if len(sizes) == k else 0.0,
                     model.summary.trainingCost)


def choose_k(data: DataFrame, cfg: PersonaSettings, progress=lambda c: None) -> Selection:
    """Every k in [k_min, k_max]; the best silhouette among the stable candidates whose
    smallest persona is big enough (else the best silhouette overall, and say so)."""
    candidates = []
    for k in range(cfg.k_min, cfg.k_max + 1):
        candidates.append(evaluate_k(data, k, cfg))
        progress(candidates[-1])
    ok = [c for c in candidates if c.min_share >= cfg.min_share and c.stability >= cfg.min_stability]
    if ok:
        best = max(ok, key=lambda c: (c.silhouette, -c.k))
        return Selection(best, candidates, f"best silhouette among {len(ok)} stable candidates with min share "
                                           f">= {cfg.min_share}")
    best = max(candidates, key=lambda c: (c.silhouette, -c.k))
    return Selection(best, candidates, "no candidate met the stability and minimum-share bars; best silhouette")


def centres_z(model: KMeansModel, cols: list[str]) -> pd.DataFrame:
    """Persona x feature centres in z-scores of the prepared ``cols``."""
    return pd.DataFrame(np.array(model.clusterCenters()), columns=cols)


def labels(z: pd.DataFrame, threshold: float = 0.5) -> list[str]:
    """A readable, distinct label per persona from the features where its centre stands out
    most (largest |z|, ties by name), e.g. "lapsed, single-platform, finance-focused"."""
    def phrases(row: pd.Series) -> list[str]:
        order = sorted(row.index, key=lambda c: (-abs(row[c]), c))
        out = []
        for col in order:
            if abs(row[col]) < threshold:
                break
            if col.startswith("cat_"):
                if row[col] > 0:
                    out.append(f"{col[4:]}-focused")
            else:
                high, low = PHRASES[col]
                out.append(high if row[col] > 0 else low)
        return out or ["typical users"]

    all_phrases = [phrases(z.loc[i]) for i in z.index]
    depth = [min(2, len(p)) for p in all_phrases]
    while True:
        names = [", ".join(p[:d]) for p, d in zip(all_phrases, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(all_phrases[i])]
        if not clashes:
            return names
        if not grow:  # identical phrase lists: number them
            return [f"{n} #{i}" if n in clashes else n for i, n in enumerate(names)]
        for i in grow:
            depth[i] += 1


def label_column(names: dict[int, str]) -> Column:
    """The label of each row's ``persona_id``."""
    return F.create_map(*[x for i, n in sorted(names.items()) for x in (F.lit(i), F.lit(n))])[F.col("persona_id")]


def distance_to_centre(predicted: DataFrame, model: KMeansModel) -> Column:
    """Euclidean distance (z-space) from each row's features to its persona's centre, in Spark."""
    centres = F.array(*[F.array(*[F.lit(float(v)) for v in c]) for c in model.clusterCenters()])
    mine = F.element_at(centres, F.col("persona_id") + 1)
    diff = F.zip_with(vector_to_array(F.col(PREP_OUT)), mine, lambda x, c: (x - c) * (x - c))
    return F.sqrt(F.aggregate(diff, F.lit(0.0), lambda acc, x: acc + x))


def fitted_pipeline(prep: PipelineModel, model: KMeansModel) -> PipelineModel:
    """One model that turns gold.user_features (flattened) into persona ids."""
    return PipelineModel(stages=[*prep.stages, model])


# -- the persona tables -----------------------------------------------------------------

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
        F.lit(as_of).alias("as_of_date"), "persona_id", label_column(names).alias("persona_label"), "size",
        (F.col("size") / F.lit(total["n"])).alias("user_share"),
        (F.col("_revenue") / F.lit(total["m"]) if total["m"] else F.lit(None)).alias("revenue_share"),
        F.map_from_arrays(F.array(*[F.lit(c) for c in cols]), F.array(*[F.col(f"_c_{c}") for c in cols])).alias("centre"),
        top("_p_", platforms).alias("top_platforms"),
        top("_c_cat_", [c for c in categories if category_column(c) in cols]).alias("top_categories"),
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


def user_personas(assigned: DataFrame, names: dict[int, str], as_of) -> DataFrame:
    """gold.user_personas rows: each user's persona, its label and the distance to its centre."""
    return select_contract(assigned.select("user_id", F.lit(as_of).alias("as_of_date"), "persona_id",
                                           label_column(names).alias("persona_label"), "distance"), USER_PERSONAS)
