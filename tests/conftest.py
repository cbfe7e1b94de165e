"""One SparkSession for the whole test run (built by the suite's own builder); each test
gets settings whose lake lives under its own tmp_path."""
from __future__ import annotations

import pytest

from jobs.config import Settings, load_settings
from jobs.session import build_session

TEST_OVERRIDES = ["spark.master=local[2]", "spark.shuffle_partitions=2", "spark.app_name=ipsynergy-tests"]


def make_settings(lake_root, *overrides: str) -> Settings:
    return load_settings("local", [*TEST_OVERRIDES, f"lake.root={lake_root}", *overrides])


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    session = build_session(make_settings(tmp_path_factory.mktemp("lake")))
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path / "lake")
