"""One SparkSession for the whole test run (built by the suite's own builder); each test
gets settings whose lake lives under its own tmp_path.

The integration tests share one small generated lake, brought through the pipeline's stages
by session fixtures, each built on the one before it the first time a test asks for it:

    small_lake (generate, ingest, refine) -> small_gold (aggregate) -> small_personas
        -> small_trained (train) -> small_scored (score)

so any module, run alone or in any order, finds the stages it asks for, and no stage runs
twice in a session. A test that changes the shared lake does it through the jobs, leaving it
consistent (the slow re-keying and replay tests of test_bronze_silver), or works on a copy.
"""
from __future__ import annotations

import datetime as dt

import pytest

from core.session import build_session
from core.settings import Settings, load_settings

# A small generated lake shared by the integration tests (built once per test run).
SMALL = ["generate.users=150", "generate.creators=24", "generate.sessions=2500", "generate.defect_rate=0.04",
         "generate.start_date=2026-04-01", "generate.days=91", "gold.lookback_days=60"]
# The tests' hand-written account exports are not generated data, and no test needs a secret
# key: they may hash with the development key (test_pii checks the refusal without this).
TEST_OVERRIDES = ["spark.master=local[2]", "spark.shuffle_partitions=2", "spark.app_name=ipsynergy-tests",
                  "refine.allow_development_key=true"]
# The two as_of dates the shared lake is aggregated and clustered on (its events end 2026-06-30):
# the second aggregate run is incremental, and personas move between the two.
FIRST, AS_OF = dt.date(2026, 6, 20), dt.date(2026, 6, 30)
# Few candidate k and one restart: the persona tests check the mechanics, not the best k.
PERSONAS_QUICK = {"k_min": 3, "k_max": 5, "restarts": 1}


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order: shows that no module relies on one run before it")


def pytest_collection_modifyitems(session, config, items):
    if config.getoption("--reverse"):
        items.reverse()


def make_settings(lake_root, *overrides: str) -> Settings:
    return load_settings("local", [*TEST_OVERRIDES, f"lake.root={lake_root}", *overrides])


def persisted_rdds(spark, since: dict[int, str] | None = None) -> dict[int, str]:
    """The RDDs kept cached in the session (DataFrame caches included), by id and name, for
    checking that a job released what it cached: a pipeline or the bench runs every stage in
    one session. With ``since`` (an earlier result), only those added after it: an RDD that
    Spark's cleaner dropped in between is not a leak. Delta's own snapshot caches ("Delta
    Table State #v - path"), which Delta evicts itself, are left out."""
    rdds = spark.sparkContext._jsc.getPersistentRDDs()
    named = {int(i): str(rdds[i].name()) for i in rdds.keySet()}
    return {i: n for i, n in named.items() if not n.startswith("Delta Table State") and i not in (since or {})}


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    session = build_session(make_settings(tmp_path_factory.mktemp("lake")))
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path / "lake")


@pytest.fixture(scope="session")
def small_lake(spark, tmp_path_factory):
    """(settings, refine summary) of a small generated lake after generate -> ingest -> refine."""
    from jobs import generate, ingest, refine
    from jobs.cli import Summary

    settings = make_settings(tmp_path_factory.mktemp("small") / "lake", *SMALL)
    generate.execute(spark, settings, Summary("generate"))
    ingest.execute(spark, settings, Summary("ingest"))
    return settings, refine.execute(spark, settings, Summary("refine"))


def at(settings: Settings, as_of: dt.date) -> Settings:
    return settings.model_copy(update={"as_of": as_of})


def personas_settings(settings: Settings, as_of: dt.date) -> Settings:
    return at(settings, as_of).model_copy(update={"personas": settings.personas.model_copy(update=PERSONAS_QUICK)})


def train_settings(settings: Settings) -> Settings:
    """The small lake starts 2026-04-01: short histories allowed; two training dates; a small,
    quick network."""
    return settings.model_copy(update={"train": settings.train.model_copy(update={
        "min_history_days": 7, "windows": 2, "folds": 2,
        "net": settings.train.net.model_copy(update={"hidden": (16,), "max_epochs": 25, "patience": 6})})})


@pytest.fixture(scope="session")
def small_gold(spark, small_lake):
    """(settings, first, second): aggregate on the small lake as of FIRST (a full recompute), then
    as of AS_OF (incremental); the aggregate summaries of both runs."""
    from jobs import aggregate
    from jobs.cli import Summary

    settings, _ = small_lake
    first = aggregate.execute(spark, at(settings, FIRST), Summary("aggregate"))
    second = aggregate.execute(spark, at(settings, AS_OF), Summary("aggregate"))
    return settings, first, second


@pytest.fixture(scope="session")
def small_personas(spark, small_gold):
    """(settings, first, second, left cached): personas as of FIRST, then AS_OF (transitions
    between them), with PERSONAS_QUICK; and the RDDs the two runs left cached in the session,
    taken right after them (a job must release what it cached: the session outlives it)."""
    from jobs import personas
    from jobs.cli import Summary

    settings, _, _ = small_gold
    before = persisted_rdds(spark)
    first = personas.execute(spark, personas_settings(settings, FIRST), Summary("personas"))
    second = personas.execute(spark, personas_settings(settings, AS_OF), Summary("personas"))
    return settings, first, second, persisted_rdds(spark, since=before)


@pytest.fixture(scope="session")
def small_trained(spark, small_personas):
    """(train settings, summary): both revenue models trained once on the small lake (after
    personas, which train samples by), with train_settings. The first run on a lake promotes
    each model's winner to @champion."""
    from jobs import train
    from jobs.cli import Summary

    settings = train_settings(small_personas[0])
    return settings, train.execute(spark, settings, Summary("train"))


@pytest.fixture(scope="session")
def small_scored(spark, small_gold, small_personas, small_trained):
    """(settings, champions, summary): score as of AS_OF with the champions train promoted (by
    model name, the registered versions it scored with)."""
    from core import tracking
    from jobs import score
    from jobs.cli import Summary

    settings = at(small_gold[0], AS_OF)
    tracking.experiment(settings, "revenue")
    champions = {model: tracking.champion(settings, model) for model in ("user_revenue", "creator_platform_revenue")}
    assert all(champions.values()), champions  # train's first run on a lake always promotes its winner
    return settings, champions, score.execute(spark, settings, Summary("score"))
