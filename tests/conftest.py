"""One SparkSession for the whole test run (built by the suite's own builder); each test
gets settings whose lake lives under its own tmp_path."""
from __future__ import annotations

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


# Integration modules share the small lake and build on each other's tables and models, in
# this order (a module run alone builds what it needs itself).
INTEGRATION_ORDER = ("test_bronze_silver", "test_gold", "test_personas", "test_train", "test_score", "test_own_exports",
                     "test_readme_own_data", "test_btyd_export")
# The fault-injection modules run after the chain: test_pii reads what the chain leaves on the
# shared small lake, and the others must not be the first to register <layer>.<name> in the
# session's catalog (the first lake registered keeps the names; the chain asserts on them).
AFTER_INTEGRATION = "tests.reliability."


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        if item.module.__name__.startswith(AFTER_INTEGRATION):
            return len(INTEGRATION_ORDER)
        folder, _, module = item.module.__name__.rpartition(".")
        return INTEGRATION_ORDER.index(module) if folder.endswith("integration") else -1
    items.sort(key=rank)  # stable: unit tests first, in file order; then the integration chain


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
    """(settings, refine summary) of a small generated lake after generate -> ingest -> refine.

    Shared by every integration module, which run in file order; a module that changes the
    lake says so and leaves it consistent."""
    from jobs import generate, ingest, refine
    from jobs.cli import Summary

    settings = make_settings(tmp_path_factory.mktemp("small") / "lake", *SMALL)
    generate.execute(spark, settings, Summary("generate"))
    ingest.execute(spark, settings, Summary("ingest"))
    return settings, refine.execute(spark, settings, Summary("refine"))
