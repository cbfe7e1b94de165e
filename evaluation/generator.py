"""Synthetic cross-platform logs with planted truth, built from ``spark.range`` (no driver loops).

Every random draw is a hash of (seed, salt, ids), so the output depends on the seed and the
sizes only, never on partitioning or on how many executors ran it. Behind the logs:

* each person has a persona (activity, spend, social, completion, platforms used);
* each creator has a quality q in [0.1, 0.95] that drives completion, social actions,
  purchase conversion and (inversely) refunds;
* each platform has a promotion strength e that drives how often its recommendations are
  shown and clicked, and how much recommended reads convert.

When each person's sessions happen is set by ``generate.dynamics``:

* ``btyd`` (the default): customers as real ones behave. A share of the people is there on the
  first day, the rest arrive in weekly cohorts over the first ``acquisition_days``. Each
  person visits as a Poisson process at a gamma-distributed rate (mean set by the persona),
  modulated by the day of the week, and after every session leaves for good with a
  beta-distributed probability (set by the persona): the buy-till-you-die heterogeneity.
  Each person also has a gamma-distributed spend multiplier. The truth keeps every person's
  parameters, so the expected spend of any horizon can be computed (:func:`expected_revenue`).
* ``steady``: everyone from the first day, sessions spread uniformly over the persona's
  active share of the period (the generator before cohorts and dropout).

The four exporters below produce the raw shapes that ``conf/platforms/*.yaml`` describe.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, LongType, StructField, StructType
from scipy.optimize import brentq

from core.settings import GenerateSettings
from core.sources import UNIFIED_EVENT_TYPES, PlatformMapping

CATEGORIES = ("finance", "career", "tech", "parenting", "culture", "health")
PRICE_CNY = {"finance": 199.0, "career": 99.0, "tech": 129.0, "parenting": 49.0, "culture": 29.0, "health": 39.0}


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    sessions: float          # mean sessions per person over the whole period
    platforms: int           # accounts held
    spend: float             # purchase propensity multiplier
    social: float            # like/comment/share/follow multiplier
    completion: float        # completion propensity
    rec_affinity: float      # how much the person browses recommendations
    active_share: float      # steady: share of the period the person is active (from the start)
    categories: tuple[str, str]
    dropout: float           # btyd: mean chance of leaving after a session (Beta(1, 1/dropout - 1))


PERSONAS = (
    Persona("casual_browsers", 0.35, 10, 1, 0.15, 0.3, 0.25, 0.9, 1.0, ("culture", "health"), 0.06),
    Persona("power_learners", 0.20, 90, 2, 0.7, 0.4, 0.95, 0.3, 1.0, ("tech", "career"), 0.008),
    Persona("big_spenders", 0.15, 30, 2, 4.0, 0.2, 0.6, 0.5, 1.0, ("finance", "career"), 0.02),
    Persona("social_fans", 0.15, 45, 4, 0.4, 3.0, 0.5, 0.6, 1.0, ("culture", "parenting"), 0.015),
    Persona("lapsed", 0.15, 14, 1, 0.3, 0.2, 0.4, 0.5, 0.25, ("finance", "health"), 0.12),
)
# btyd dynamics: the share of people there on the first day, the shape of the gamma rates and
# spend multipliers (coefficient of variation 1/sqrt(shape)), and the relative session rate
# by day of the week (Monday first; a mean of 1).
EXISTING_SHARE = 0.35
RATE_SHAPE = 2.0
SPEND_SHAPE = 4.0
WEEKDAY = (0.9, 0.9, 0.95, 0.95, 1.0, 1.2, 1.1)


@dataclass(frozen=True)
class PlatformModel:
    name: str
    promotion: float         # planted promotion strength e
    popularity: float        # weight when a person picks platforms
    audio: bool              # reads are plays rather than views
    account_prefix: str


PLATFORM_MODELS = (
    PlatformModel("zhixue", 0.85, 1.0, False, "zx_"),
    PlatformModel("ketang", 0.60, 0.8, False, "KT-"),
    PlatformModel("tingshu", 0.40, 0.9, True, ""),
    PlatformModel("globalearn", 0.20, 0.5, False, "g"),
)

# Defects each exporter can carry (exact duplicates and replays apply to every platform).
DEFECTS = {
    "zhixue": ("malformed", "missing_field", "bad_type", "bad_timestamp", "future_timestamp",
               "unknown_event_type", "negative_amount"),
    "tingshu": ("malformed", "missing_field", "bad_type", "bad_timestamp", "future_timestamp",
                "unknown_event_type", "negative_amount"),
    "ketang": ("missing_field", "bad_timestamp", "future_timestamp", "unknown_event_type",
               "unknown_currency", "negative_amount"),
    "globalearn": ("malformed", "missing_field", "bad_type", "bad_timestamp", "future_timestamp",
                   "unknown_event_type", "unknown_currency", "negative_amount"),
}
DUPLICATE_KINDS = ("duplicate", "replay")

FX_EXPORT = {"USD": 7.1, "HKD": 0.91}


class Draw:
    """Deterministic uniforms in [0, 1) from hashes of the seed, a salt and id columns."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, salt: str, *cols: Column | str) -> Column:
        h = F.xxhash64(F.lit(self.seed), F.lit(salt), *[F.col(c) if isinstance(c, str) else c for c in cols])
        return F.pmod(h, F.lit(2_147_483_647)) / F.lit(2_147_483_647.0)


def _pick(u: Column, options: tuple[str, ...]) -> Column:
    """The option at floor(u * len(options))."""
    arr = F.array(*[F.lit(o) for o in options])
    return F.element_at(arr, (F.floor(u * len(options)) + 1).cast("int"))


def people(spark: SparkSession, cfg: GenerateSettings) -> DataFrame:
    """One row per person: persona, persona parameters, and the platforms the person uses."""
    u = Draw(cfg.seed)
    df = spark.range(cfg.users).withColumnRenamed("id", "person_id")
    pick = u("persona", "person_id")
    persona = F.lit(PERSONAS[-1].name)
    edge = 0.0
    bounds = []
    for p in PERSONAS:
        edge += p.share
        bounds.append((edge, p))
    for upper, p in reversed(bounds):
        persona = F.when(pick < upper, F.lit(p.name)).otherwise(persona)
    df = df.withColumn("persona", persona)
    for attr in ("sessions", "platforms", "spend", "social", "completion", "rec_affinity", "active_share", "dropout"):
        expr = F.lit(None)
        for p in PERSONAS:
            expr = F.when(F.col("persona") == p.name, F.lit(getattr(p, attr))).otherwise(expr)
        df = df.withColumn(attr, expr)
    cat_a = F.lit(None)
    cat_b = F.lit(None)
    for p in PERSONAS:
        cat_a = F.when(F.col("persona") == p.name, F.lit(p.categories[0])).otherwise(cat_a)
        cat_b = F.when(F.col("persona") == p.name, F.lit(p.categories[1])).otherwise(cat_b)
    scored = F.array(*[
        F.struct((u(f"plat_{m.name}", "person_id") * m.popularity).alias("score"), F.lit(m.name).alias("platform"))
        for m in PLATFORM_MODELS
    ])
    ranked = F.sort_array(scored, asc=False)
    return (df.withColumn("cat_a", cat_a).withColumn("cat_b", cat_b)
              .withColumn("platform_list", F.transform(F.slice(ranked, 1, F.col("platforms").cast("int")),
                                                       lambda s: s["platform"])))


TIMELINE = StructType([StructField("person_id", LongType()), StructField("acquired_day", LongType()),
                       StructField("rate", DoubleType()), StructField("dropout_p", DoubleType()),
                       StructField("spend_scale", DoubleType()), StructField("times", ArrayType(DoubleType())),
                       StructField("died", DoubleType())])


def _weekday_weights(cfg: GenerateSettings) -> np.ndarray:
    """Relative session rate of each day of the period (mean of WEEKDAY is 1)."""
    w = np.asarray(WEEKDAY) / np.mean(WEEKDAY)
    return w[(cfg.start_date.weekday() + np.arange(cfg.days)) % 7]


def rate_scale(cfg: GenerateSettings) -> float:
    """Factor on the personas' session rates that makes the expected number of sessions of the
    btyd dynamics about ``cfg.sessions`` (acquisition and dropout cut each person's
    sessions short): solved on the driver over the parameters of 20,000 people drawn with a
    fixed seed."""
    rng = np.random.default_rng(cfg.seed)
    shares = np.array([p.share for p in PERSONAS])
    which = rng.choice(len(PERSONAS), 20_000, p=shares / shares.sum())
    mean_rate = np.array([p.sessions / cfg.days for p in PERSONAS])[which]
    dropout = np.array([p.dropout for p in PERSONAS])[which]
    acquired = np.where(rng.random(which.size) < EXISTING_SHARE, 0, rng.integers(0, acquisition_days(cfg), which.size))
    rate = rng.gamma(RATE_SHAPE, mean_rate / RATE_SHAPE)
    p = rng.beta(1.0, 1.0 / dropout - 1.0)
    exposure = rate * (cfg.days - acquired)

    def expected(factor: float) -> float:
        # E[min(N, D)] with N ~ Poisson(factor * exposure), D ~ Geometric(p): (1 - exp(-factor * exposure * p)) / p
        return float((-np.expm1(-factor * exposure * p) / p).mean()) * cfg.users

    # Dropout caps what a higher rate can add: a person leaves after 1/p sessions on average.
    if expected(1e4) <= cfg.sessions:
        raise ValueError(f"generate.sessions={cfg.sessions} is more than {cfg.users} people leaving at the btyd "
                         f"dynamics' dropout can have: lower generate.sessions or raise generate.users")
    return brentq(lambda f: expected(f) - cfg.sessions, 1e-6, 1e4)


def acquisition_days(cfg: GenerateSettings) -> int:
    """New people arrive in weekly cohorts over the first 60 % of the period."""
    return max(7, int(cfg.days * 0.6) // 7 * 7)


def timelines(cfg: GenerateSettings, persons: DataFrame) -> DataFrame:
    """btyd dynamics: per person, the day acquired, rate (sessions a day), dropout chance,
    spend multiplier, session times (days since the start) and whether they left before the
    end (1.0) or not (0.0). A pandas function over people, each drawn from numpy with a
    generator seeded by (seed, person_id): the same whatever the partitioning."""
    weights = _weekday_weights(cfg)
    top = float(weights.max())
    scale = rate_scale(cfg)
    cohorts = acquisition_days(cfg) // 7
    days = cfg.days

    def draw(batches):
        for pdf in batches:
            out = []
            for pid, sessions, dropout in zip(pdf["person_id"], pdf["sessions"], pdf["dropout"]):
                rng = np.random.default_rng([cfg.seed, int(pid)])
                acquired = 0 if rng.random() < EXISTING_SHARE else int(rng.integers(0, cohorts)) * 7 + int(rng.integers(0, 7))
                rate = rng.gamma(RATE_SHAPE, sessions / days * scale / RATE_SHAPE)
                p = rng.beta(1.0, 1.0 / dropout - 1.0)
                spend_scale = rng.gamma(SPEND_SHAPE, 1.0 / SPEND_SHAPE)
                # a Poisson process at rate * weekday weight: candidates at the top rate, thinned
                n = rng.poisson(rate * top * (days - acquired))
                t = np.sort(acquired + rng.random(n) * (days - acquired))
                t = t[rng.random(n) < weights[t.astype(int)] / top]
                lifetime = rng.geometric(p)  # sessions until leaving, the last one included
                out.append((int(pid), acquired, rate, p, spend_scale, t[:lifetime].tolist(),
                            1.0 if t.size >= lifetime else 0.0))
            yield pd.DataFrame(out, columns=TIMELINE.fieldNames())

    return persons.select("person_id", "sessions", "dropout").mapInPandas(draw, TIMELINE)


def expected_revenue(people: DataFrame, start: dt.date, days: int, as_of: dt.date, horizon: int) -> DataFrame:
    """(person_id, expected_revenue): the expected net revenue of each person in the ``horizon``
    days after ``as_of`` given the generator's own parameters (truth.people) and whether the
    person is still there at ``as_of``: 0 for one who left, (1 - exp(-L p)) / p sessions for one
    who stays (L: rate times the weekday weights of the horizon's days; p: the dropout chance),
    times the expected spend of a session. People acquired after ``as_of`` are left out."""
    if (as_of - start).days + horizon >= days:
        raise ValueError(f"the horizon after {as_of} runs past the generated period ({days} days from {start})")
    w = np.asarray(WEEKDAY) / np.mean(WEEKDAY)
    first = (as_of - start).days + 1
    weight = float(sum(w[(start.weekday() + d) % 7] for d in range(first, first + horizon)))
    end_of_as_of = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time()).replace(tzinfo=dt.timezone.utc)
    there = F.col("left_at").isNull() | (F.col("left_at") >= F.lit(end_of_as_of.timestamp()).cast("timestamp"))
    lam_p = F.col("rate_per_day") * F.lit(weight) * F.col("dropout_p")
    sessions = -F.expm1(-lam_p) / F.col("dropout_p")
    return (people.where(F.col("acquired_on") <= F.lit(as_of))
                  .select("person_id", F.when(there, sessions * F.col("spend_per_session")).otherwise(F.lit(0.0))
                          .alias("expected_revenue")))


def accounts(spark: SparkSession, cfg: GenerateSettings, persons: DataFrame) -> DataFrame:
    """One row per (person, platform): the account id and the person's identifiers, if shared."""
    u = Draw(cfg.seed)
    df = persons.select("person_id", "persona", F.explode("platform_list").alias("platform"))
    phone_digits = (F.lit(13_000_000_000) + F.pmod(F.col("person_id") * 7919, F.lit(1_000_000_000))).cast("string")
    email = F.concat(F.lit("l"), F.substring(F.sha2(F.col("person_id").cast("string"), 256), 1, 16),
                     F.lit("@mail.example.com"))
    union_id = F.concat(F.lit("oU"), F.substring(F.sha2(F.concat(F.lit("u"), F.col("person_id").cast("string")), 256), 1, 26))
    has_phone = u("has_phone", "person_id", "platform") < 0.75
    has_email = u("has_email", "person_id", "platform") < 0.55
    has_union = (u("has_union", "person_id", "platform") < 0.5) & (F.col("platform") != "globalearn")
    has_phone = has_phone | ~(has_email | has_union)
    prefix = F.lit("")
    for m in PLATFORM_MODELS:
        prefix = F.when(F.col("platform") == m.name, F.lit(m.account_prefix)).otherwise(prefix)
    account_id = F.concat(prefix, F.substring(F.sha2(F.concat_ws(":", "platform", F.col("person_id").cast("string")), 256), 1, 12))
    return df.select(
        "platform", account_id.alias("account_id"), "person_id", "persona",
        F.when(has_phone, phone_digits).alias("phone"),
        F.when(has_email, email).alias("email"),
        F.when(has_union, union_id).alias("union_id"),
    )


def creators(spark: SparkSession, cfg: GenerateSettings) -> DataFrame:
    u = Draw(cfg.seed)
    df = spark.range(cfg.creators).withColumnRenamed("id", "creator_idx")
    present = F.array(*[
        F.when((u(f"on_{m.name}", "creator_idx") < 0.6) | (F.pmod("creator_idx", F.lit(len(PLATFORM_MODELS))) == i),
               F.lit(m.name))
        for i, m in enumerate(PLATFORM_MODELS)
    ])
    return df.select(
        F.concat(F.lit("c"), F.lpad(F.col("creator_idx").cast("string"), 5, "0")).alias("creator_id"),
        (F.lit(0.1) + F.lit(0.85) * u("quality", "creator_idx")).alias("quality"),
        _pick(u("category", "creator_idx"), CATEGORIES).alias("category"),
        F.filter(present, lambda p: p.isNotNull()).alias("platforms"),
    )


def items(cfg: GenerateSettings, creators_df: DataFrame) -> DataFrame:
    """Content per (platform, creator): what sessions pick from, indexed within (platform, category)."""
    from pyspark.sql import Window

    u = Draw(cfg.seed)
    df = (creators_df.select("creator_id", "quality", "category", F.explode("platforms").alias("platform"))
          .withColumn("n", F.explode(F.sequence(F.lit(1), F.lit(cfg.items_per_creator)))))
    price = F.lit(0.0)
    for cat, p in PRICE_CNY.items():
        price = F.when(F.col("category") == cat, F.lit(p)).otherwise(price)
    w = Window.partitionBy("platform", "category").orderBy("content_id")
    return (df.withColumn("content_id", F.concat_ws("-", "platform", "creator_id", F.col("n").cast("string")))
              .withColumn("price", F.round(price * (F.lit(0.5) + u("price", "content_id")), 1))
              .withColumn("length_s", F.lit(300) + F.floor(u("length", "content_id") * 3300))
              .withColumn("idx", F.row_number().over(w) - 1)
              .select("platform", "category", "idx", "content_id", "creator_id", "quality", "price", "length_s"))


def sessions(spark: SparkSession, cfg: GenerateSettings, persons: DataFrame, items_df: DataFrame,
             lines: DataFrame | None = None) -> DataFrame:
    """One row per session: who, where, when, which item, and the draws that decide its events.
    ``lines``: the :func:`timelines` of the btyd dynamics (None: steady)."""
    u = Draw(cfg.seed)
    start = dt.datetime.combine(cfg.start_date, dt.time()).replace(tzinfo=dt.timezone.utc)
    if lines is not None:
        df = (persons.join(lines.select("person_id", "spend_scale", "times"), "person_id")
                     .select("*", F.posexplode("times").alias("_pos", "_t")).drop("times"))
        df = df.withColumn("s", F.col("_pos") + 1).withColumn("sid", F.col("person_id") * (1 << 20) + F.col("s"))
        df = df.withColumn("t0", F.lit(int(start.timestamp())) + F.floor(F.col("_t") * 86400)).drop("_pos", "_t")
    else:
        mean_sessions = sum(p.share * p.sessions for p in PERSONAS)
        scale = cfg.sessions / (cfg.users * mean_sessions)
        n = F.greatest(F.lit(1), F.round(F.col("sessions") * scale * (F.lit(0.5) + u("n", "person_id")))).cast("int")
        df = persons.withColumn("s", F.explode(F.sequence(F.lit(1), n))).withColumn("spend_scale", F.lit(1.0))
        df = df.withColumn("sid", F.col("person_id") * (1 << 20) + F.col("s"))
        day = F.floor(u("day", "sid") * F.lit(cfg.days) * F.col("active_share")).cast("int")
        df = df.withColumn("t0", F.lit(int(start.timestamp())) + day * 86400 + F.floor(u("time", "sid") * 86000))
    df = df.withColumn("platform", F.element_at("platform_list", (F.floor(u("which_platform", "sid") * F.size("platform_list")) + 1).cast("int")))
    category = F.when(u("cat_pref", "sid") < 0.75,
                      F.when(u("cat_ab", "sid") < 0.5, F.col("cat_a")).otherwise(F.col("cat_b"))) \
                .otherwise(_pick(u("cat_any", "sid"), CATEGORIES))
    df = df.withColumn("category", category)
    # How many items each (platform, category) offers; a session picks one of them uniformly.
    # A session whose (platform, category) has no item drops out in the inner join.
    n_items = items_df.groupBy("platform", "category").agg(F.count("*").alias("n_items"))
    df = (df.join(F.broadcast(n_items), on=["platform", "category"], how="inner")
            .withColumn("idx", F.floor(u("item", "sid") * F.col("n_items")).cast("long")).drop("n_items"))
    return (df.withColumn("promotion", _promotion())
              .join(F.broadcast(items_df), on=["platform", "category", "idx"], how="inner"))


def _promotion() -> Column:
    promotion = F.lit(0.0)
    for m in PLATFORM_MODELS:
        promotion = F.when(F.col("platform") == m.name, F.lit(m.promotion)).otherwise(promotion)
    return promotion


def spend_per_session(persons: DataFrame, lines: DataFrame, items_df: DataFrame) -> DataFrame:
    """(person_id, spend_per_session): a person's expected net revenue from one session, over
    the platform, category and item the session picks and the draws of :func:`events`:
    purchases at the item's price less expected refunds, and subscriptions. Exact while no
    probability of :func:`events` reaches its clamp, which the shipped personas never do
    (the largest, a big spender's recommended purchase, is 0.69)."""
    stats = items_df.groupBy("platform", "category").agg(
        F.avg("price").alias("m0"), F.avg(F.col("price") * F.col("quality")).alias("m1"),
        F.avg(F.col("price") * F.col("quality") ** 2).alias("m2"))
    s, e = F.col("spend"), F.col("promotion")
    rec = F.lit(0.15) + 0.7 * e * F.col("rec_affinity")
    click = F.lit(0.05) + 0.6 * e
    read = (1 - rec) + rec * click
    a0 = read * 0.01 * s
    a1 = (1 - rec) * 0.075 * s + rec * click * 0.075 * s * (1 + 1.5 * e)
    multiplier = F.when(s > 2, F.lit(1.5)).otherwise(F.lit(1.0)) * F.col("spend_scale")
    purchases = multiplier * (0.65 * a0 * F.col("m0") + (0.35 * a0 + 0.65 * a1) * F.col("m1") + 0.35 * a1 * F.col("m2"))
    subscriptions = read * 0.004 * s * (0.5 + F.col("completion")) * 30.0
    weight = (F.lit(1.0) / F.size("platform_list")) * (
        F.when(F.col("category") == F.col("cat_a"), 0.375).otherwise(0.0)
        + F.when(F.col("category") == F.col("cat_b"), 0.375).otherwise(0.0) + 0.25 / len(CATEGORIES))
    rows = (persons.join(lines.select("person_id", "spend_scale"), "person_id")
                   .select("*", F.explode("platform_list").alias("platform"))
                   .select("*", F.explode(F.array(*[F.lit(c) for c in CATEGORIES])).alias("category"))
                   .join(F.broadcast(stats), ["platform", "category"], "inner")  # no item: the session drops out
                   .withColumn("promotion", _promotion()))
    return rows.groupBy("person_id").agg(F.sum(weight * (purchases + subscriptions)).alias("spend_per_session"))


def truth_people(cfg: GenerateSettings, persons: DataFrame, lines: DataFrame, items_df: DataFrame) -> DataFrame:
    """truth.people: each person's btyd parameters, sessions, when they left (null: still
    there at the end) and expected spend per session."""
    start = dt.datetime.combine(cfg.start_date, dt.time()).replace(tzinfo=dt.timezone.utc)
    left = F.when(F.col("died") > 0, F.timestamp_seconds(F.lit(int(start.timestamp()))
                                                        + F.floor(F.element_at("times", -1) * 86400)))
    return (lines.join(persons.select("person_id", "persona"), "person_id")
                 .join(spend_per_session(persons, lines, items_df), "person_id", "left")
                 .select("person_id", "persona",
                         F.date_add(F.lit(cfg.start_date), F.col("acquired_day").cast("int")).alias("acquired_on"),
                         F.col("rate").alias("rate_per_day"), "dropout_p", "spend_scale",
                         F.size("times").alias("sessions"), left.alias("left_at"),
                         F.coalesce("spend_per_session", F.lit(0.0)).alias("spend_per_session")))


def events(cfg: GenerateSettings, sessions_df: DataFrame) -> DataFrame:
    """Expand sessions into unified events (true values, before any exporter or defect)."""
    u = Draw(cfg.seed)
    q, e = F.col("quality"), F.col("promotion")

    def clamp(x: Column) -> Column:
        return F.least(F.greatest(x, F.lit(0.0)), F.lit(0.97))

    rec = u("rec", "sid") < clamp(0.15 + 0.7 * e * F.col("rec_affinity"))
    click = rec & (u("click", "sid") < clamp(0.05 + 0.6 * e))
    read = ~rec | click
    audio = F.col("platform") == "tingshu"
    read_type = F.when(audio | (u("play", "sid") < 0.35), F.lit("play")).otherwise(F.lit("view"))
    complete = read & (u("complete", "sid") < clamp(0.05 + 0.45 * q + 0.4 * F.col("completion") * q))
    progress = F.when(complete, F.lit(1.0)).otherwise(F.round(u("progress", "sid") * 0.9, 3))
    duration = F.round(progress * F.col("length_s"))
    social = F.col("social")
    like = read & (u("like", "sid") < clamp(0.01 + 0.25 * q * social))
    comment = read & (u("comment", "sid") < clamp(0.005 + 0.06 * q * social))
    share = read & (u("share", "sid") < clamp(0.005 + 0.08 * q * social))
    follow = read & (u("follow", "sid") < clamp(0.002 + 0.04 * q * social))
    rec_lift = F.when(rec, F.lit(1.0) + 1.5 * e).otherwise(F.lit(1.0))
    purchase = read & (u("purchase", "sid") < clamp(0.01 * F.col("spend") + 0.15 * q * F.col("spend") * rec_lift * 0.5))
    subscribe = read & (u("subscribe", "sid") < clamp(0.004 * F.col("spend") * (0.5 + F.col("completion"))))
    refund = purchase & (u("refund", "sid") < clamp(0.35 * (1 - q)))
    price = F.col("price") * F.when(F.col("spend") > 2, F.lit(1.5)).otherwise(F.lit(1.0)) * F.col("spend_scale")

    def ev(k: int, cond: Column, etype: Column | str, offset: Column | int, amount=None, prog=None, dur=None) -> Column:
        return F.when(cond, F.struct(
            F.lit(k).alias("k"), (F.lit(etype) if isinstance(etype, str) else etype).alias("event_type"),
            (F.col("t0") + offset).cast("long").alias("ts"),
            (amount if amount is not None else F.lit(None).cast("double")).cast("double").alias("amount_cny"),
            (prog if prog is not None else F.lit(None).cast("double")).cast("double").alias("progress"),
            (dur if dur is not None else F.lit(None).cast("double")).cast("double").alias("duration_s"),
        ))

    arr = F.array(
        ev(0, rec, "impression", 0),
        ev(1, click, "click", 4),
        ev(2, read, read_type, 9, prog=progress, dur=duration),
        ev(3, complete, "complete", F.col("length_s") + 10, prog=F.lit(1.0), dur=F.col("length_s")),
        ev(4, like, "like", duration + 12),
        ev(5, comment, "comment", duration + 20),
        ev(6, share, "share", duration + 25),
        ev(7, follow, "follow", duration + 30),
        ev(8, purchase, "purchase", 60, amount=price),
        ev(9, subscribe, "subscribe", 70, amount=F.lit(30.0)),
        ev(10, refund, "refund", 3600, amount=-price),
    )
    campaign = F.when(u("campaign", "sid") < 0.05,
                      F.concat(F.lit("cmp-"), F.col("creator_id"), F.lit("-"), (F.floor((F.col("t0") / 86400) / 30)).cast("string")))
    df = sessions_df.withColumn("ev", F.explode(F.filter(arr, lambda x: x.isNotNull())))
    return df.select(
        "platform", "person_id", "sid", (F.col("sid") * 16 + F.col("ev.k")).alias("event_num"),
        "content_id", "creator_id", "category",
        F.col("ev.event_type").alias("event_type"), F.col("ev.ts").alias("ts_epoch"),
        F.col("ev.amount_cny").alias("amount_cny"), F.col("ev.progress").alias("progress"),
        F.col("ev.duration_s").alias("duration_s"), rec.alias("is_recommended"), campaign.alias("campaign_id"),
    )


def build(spark: SparkSession, cfg: GenerateSettings) -> dict[str, DataFrame]:
    """All generated frames: persons, accounts, creators, items, unified events with account ids,
    and with the btyd dynamics the people's parameters (truth.people)."""
    persons = people(spark, cfg)
    accts = accounts(spark, cfg, persons)
    creators_df = creators(spark, cfg)
    items_df = items(cfg, creators_df)
    lines = timelines(cfg, persons) if cfg.dynamics == "btyd" else None
    evs = events(cfg, sessions(spark, cfg, persons, items_df, lines)).join(
        accts.select("platform", "person_id", "account_id"), on=["platform", "person_id"], how="inner")
    frames = {"persons": persons, "accounts": accts, "creators": creators_df, "items": items_df, "events": evs}
    if lines is not None:
        frames["people"] = truth_people(cfg, persons, lines, items_df)
    return frames


def with_defects(cfg: GenerateSettings, platform: str, df: DataFrame) -> DataFrame:
    """Add ``defect`` (null for clean records) and ``copy`` (0, or 1 for the duplicated copy)."""
    u = Draw(cfg.seed)
    kinds = DEFECTS[platform] + DUPLICATE_KINDS
    hit = u("defect", "event_num") < cfg.defect_rate
    df = df.withColumn("defect", F.when(hit, _pick(u("defect_kind", "event_num"), kinds)))
    dup = F.col("defect").isin(*DUPLICATE_KINDS)
    return df.withColumn("copy", F.explode(F.when(dup, F.array(F.lit(0), F.lit(1))).otherwise(F.array(F.lit(0)))))


def _local(ts_epoch: Column, zone: str, pattern: str) -> Column:
    return F.date_format(F.from_utc_timestamp(F.timestamp_seconds(ts_epoch), zone), pattern)


def export_codes(mapping: PlatformMapping) -> dict[str, str]:
    """Unified type -> the code the platform's exporter writes: the inverse of its mapping's
    event_types (a type the mapping does not rename is written as it is)."""
    written: dict[str, str] = {}
    for code, unified in mapping.events.event_types.items():
        written.setdefault(unified, code)
    return {t: written.get(t, t) for t in UNIFIED_EVENT_TYPES}


def export_events(cfg: GenerateSettings, mapping: PlatformMapping, df: DataFrame) -> DataFrame:
    """Shape unified events as the platform's exporter writes them, in the codes its mapping
    reads back.

    Returns ``file_idx``, ``ord`` and either one ``value`` text column (json/csv) or the
    typed columns of the Parquet export.
    """
    platform = mapping.name
    d = F.col("defect")
    codes = export_codes(mapping)
    code = F.lit(None).cast("string")
    for unified, c in codes.items():
        code = F.when(F.col("event_type") == unified, F.lit(c)).otherwise(code)
    code = F.when(d == "unknown_event_type", F.lit("mystery_action")).otherwise(code)
    code = F.when(d == "negative_amount", F.lit(codes["purchase"])).otherwise(code)
    amount_cny = F.when(d == "negative_amount", -F.abs(F.coalesce(F.col("amount_cny"), F.lit(0.0))) - 1).otherwise(F.col("amount_cny"))
    ts = F.when(d == "future_timestamp", F.col("ts_epoch") + 400 * 86400).otherwise(F.col("ts_epoch"))
    account = F.when(d == "missing_field", F.lit(None)).otherwise(F.col("account_id"))
    files = cfg.files_per_platform
    base_file = F.pmod(F.xxhash64(F.lit(cfg.seed), F.col("sid")), F.lit(files))
    file_idx = F.when((d == "replay") & (F.col("copy") == 1), F.pmod(base_file + 1, F.lit(files))).otherwise(base_file)
    out = df.withColumn("file_idx", file_idx).withColumn("ord", F.struct("ts_epoch", "event_num", "copy"))
    dur = F.when(d == "bad_type", F.lit("abc")).otherwise(F.col("duration_s").cast("string"))

    if platform == "zhixue":
        ts_text = F.when(d == "bad_timestamp", F.lit("not-a-time")).otherwise((ts * 1000).cast("string"))
        rec = F.struct(
            F.concat(F.lit("zx-"), F.col("event_num").cast("string")).alias("eid"),
            F.struct(account.alias("uid")).alias("user"),
            F.struct(F.col("content_id").alias("id"), F.col("creator_id").alias("author"), F.col("category").alias("cat")).alias("item"),
            code.alias("act"), ts_text.alias("ts"), dur.alias("dur"), F.col("progress").alias("prog"),
            F.round(amount_cny * 100).cast("long").alias("amt"),
            F.col("is_recommended").cast("int").alias("rec"), F.col("campaign_id").alias("cmp"),
            F.concat(F.lit("s"), F.col("sid").cast("string")).alias("sid"),
        )
        full = F.to_json(rec)
    elif platform == "globalearn":
        ts_text = F.when(d == "bad_timestamp", F.lit("13/45/2026 99:99:99")).otherwise(_local(ts, "America/Los_Angeles", "MM/dd/yyyy HH:mm:ss"))
        cur = F.when(d == "unknown_currency", F.lit("XYZ")).otherwise(F.lit("USD"))
        rec = F.struct(
            F.concat(F.lit("ge"), F.col("event_num").cast("string")).alias("id"), account.alias("user_id"),
            F.col("content_id").alias("content"), F.col("creator_id").alias("creator"), F.col("category").alias("topic"),
            code.alias("type"), ts_text.alias("time"), dur.alias("seconds"), F.col("progress").alias("pct_done"),
            F.round(amount_cny / FX_EXPORT["USD"] * 100).cast("long").alias("cents"), cur.alias("cur"),
            F.col("is_recommended").alias("via_rec"), F.col("campaign_id").alias("promo"),
            F.col("sid").cast("string").alias("visit"),
        )
        full = F.to_json(rec)
    elif platform == "tingshu":
        ts_text = F.when(d == "bad_timestamp", F.lit("2026-02-30 25:61:00")).otherwise(_local(ts, "Asia/Shanghai", "yyyy-MM-dd HH:mm:ss"))
        cols = [
            F.concat(F.lit("TS"), F.col("event_num").cast("string")), account, F.col("content_id"), F.col("creator_id"),
            F.col("category"), code, ts_text, dur, F.round(F.col("progress") * 100, 1).cast("string"),
            F.when(amount_cny.isNotNull(), F.format_string("%.2f", amount_cny)), F.when(F.col("is_recommended"), F.lit("Y")).otherwise(F.lit("N")),
            F.col("campaign_id"), F.col("sid").cast("string"),
        ]
        full = F.concat_ws(",", *[F.regexp_replace(F.coalesce(c.cast("string"), F.lit("")), ",", "") for c in cols])
    else:  # ketang: typed Parquet
        currency = F.when(F.pmod(F.col("person_id"), F.lit(10)) < 3, F.lit("HKD")).otherwise(F.lit("CNY"))
        currency = F.when(d == "unknown_currency", F.lit("XYZ")).otherwise(currency)
        amount_src = F.when(currency == "HKD", amount_cny / FX_EXPORT["HKD"]).otherwise(amount_cny)
        ts_val = F.when(d == "bad_timestamp", F.timestamp_seconds(F.lit(0))).otherwise(F.timestamp_seconds(ts))
        return out.select(
            "file_idx", "ord",
            F.col("event_num").alias("event_id"), account.alias("account"), F.col("content_id").alias("course_id"),
            F.col("creator_id").alias("teacher_id"), F.col("category").alias("subject"), code.alias("event_name"),
            ts_val.alias("event_time"), F.col("duration_s").alias("watch_s"), F.col("progress").alias("progress"),
            F.round(amount_src * 100).cast("long").alias("amount_minor"), currency.alias("currency"),
            F.col("is_recommended").alias("recommended"), F.col("campaign_id").alias("campaign_id"),
            F.col("sid").alias("visit_id"),
        )
    # A malformed record is a line cut short (a torn write).
    cut = F.expr("substring(value_full, 1, int(length(value_full) / 2))")
    return (out.withColumn("value_full", full)
               .select("file_idx", "ord", F.when(d == "malformed", cut).otherwise(F.col("value_full")).alias("value")))


def source_event_id(platform: str) -> Column:
    """The id the exporter writes for ``event_num`` (used to label planted defects)."""
    prefix = {"zhixue": "zx-", "globalearn": "ge", "tingshu": "TS", "ketang": ""}[platform]
    return F.concat(F.lit(prefix), F.col("event_num").cast("string"))


def export_accounts(platform: str, df: DataFrame) -> DataFrame:
    """Account export rows (json/csv: ``value`` text; parquet: typed columns)."""
    phone = F.col("phone")
    if platform == "zhixue":
        phone = F.concat(F.lit("+86 "), F.substring(phone, 1, 3), F.lit("-"), F.substring(phone, 4, 4), F.lit("-"), F.substring(phone, 8, 4))
        return df.select(F.to_json(F.struct(F.col("account_id").alias("uid"), F.when(F.col("phone").isNotNull(), phone).alias("mobile"),
                                            F.col("email").alias("mail"), F.col("union_id").alias("wx_union"))).alias("value"), "account_id")
    if platform == "globalearn":
        return df.select(F.to_json(F.struct(F.col("account_id").alias("user_id"), F.upper("email").alias("email"),
                                            F.concat(F.lit("+86-"), phone).alias("phone"))).alias("value"), "account_id")
    if platform == "tingshu":
        cols = [F.col("account_id"), phone, F.concat(F.lit(" "), F.col("email"), F.lit(" ")), F.col("union_id")]
        return df.select(F.concat_ws(",", *[F.coalesce(c, F.lit("")) for c in cols]).alias("value"), "account_id")
    return df.select(F.col("account_id").alias("account"), F.concat(F.lit("+86"), phone).alias("phone_number"),
                     F.col("email").alias("email_address"), "union_id", "account_id")
