"""Faults at write time, in process: a crash between two table writes of one job, constraint
violations, and two writers committing to the same table at once. Each ends with the tables
equal to an uninterrupted, serial run (whole-table comparisons), or unchanged."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import lake
from core.tables import (
    ACCOUNTS_RAW,
    EVENTS,
    EVENTS_RAW,
    IDENTITY_MAP,
    INGEST_MANIFEST,
    QUARANTINE,
    REFINE_LOG,
    select_contract,
)
from jobs import ingest, refine
from jobs.cli import Summary
from tests.conftest import make_settings
from tests.reliability.helpers import (
    assert_same_table,
    assert_unique_keys,
    differences,
    rows_of,
    tally,
    write_accounts,
    write_events,
    write_records,
)

# Fault injection at write time: the slow suite (make test-slow, CI), like the process faults.
pytestmark = pytest.mark.slow

SILVER = (EVENTS, QUARANTINE, IDENTITY_MAP, REFINE_LOG)
BRONZE = (EVENTS_RAW, ACCOUNTS_RAW, INGEST_MANIFEST)


class InjectedCrash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Valid exports of four platforms with accounts, plus a few records refine rejects."""
    root = tmp_path_factory.mktemp("writes") / "raw"
    write_events(root, 25, seed=3)
    write_accounts(root)
    write_records(root / "zhixue" / "events" / "bad.jsonl", "zhixue", ['{"eid": 1', "", '{"eid": "z", "act": "dance"}'])
    return root


def lake_on(tmp_path: Path, raw: Path, name: str):
    return make_settings(tmp_path / name, f"lake.raw={raw}")


@pytest.fixture(scope="module")
def reference(spark, raw, tmp_path_factory):
    """The uninterrupted run on the same raw files: ingest, then refine."""
    settings = lake_on(tmp_path_factory.mktemp("reference"), raw, "lake")
    ingest.execute(spark, settings, Summary("ingest"))
    refine.execute(spark, settings, Summary("refine"))
    return settings


def crash_on(monkeypatch, table, after=None):
    """Make the lake's keyed writes raise when they reach ``table`` (once ``after`` has been
    written, if given); the writes before it commit."""
    real = lake.merge_insert
    written = set()

    def merge_insert(spark, settings, t, df):
        if t is table and (after is None or after.qualified in written):
            raise InjectedCrash(f"crash before writing {t.qualified}")
        out = real(spark, settings, t, df)
        written.add(t.qualified)
        return out

    monkeypatch.setattr(lake, "merge_insert", merge_insert)


def test_refine_crash_between_events_and_quarantine_then_rerun_is_exact(spark, raw, reference, tmp_path, monkeypatch):
    # GIVEN bronze ingested, and a refine that dies after silver.events is committed, before
    # silver.quarantine and silver.refine_log
    settings = lake_on(tmp_path, raw, "lake")
    shutil.copytree(Path(reference.lake_root) / "bronze", Path(settings.lake_root) / "bronze")  # = ingest
    with monkeypatch.context() as m:
        crash_on(m, QUARANTINE, after=EVENTS)
        with pytest.raises(InjectedCrash):
            refine.execute(spark, settings, Summary("refine"))
    assert lake.read(spark, settings, EVENTS).count() == lake.read(spark, reference, EVENTS).count()
    assert not lake.exists(spark, settings, REFINE_LOG)
    # WHEN refine runs again
    again = refine.execute(spark, settings, Summary("refine"))
    # THEN every silver table, the reconciliation log included, equals the uninterrupted run's:
    # no duplicate, no gap, and the batch's new rows are still counted as new
    for table in SILVER:
        assert_same_table(spark, settings, reference, table)
    assert_unique_keys(spark, settings, EVENTS)
    ev = lake.read(spark, settings, EVENTS)
    log = lake.read(spark, settings, REFINE_LOG).first()
    assert again.counts["new silver rows"] == log.new_rows == ev.count() and log.duplicates == 0


def test_ingest_crash_between_events_and_accounts_then_rerun_is_exact(spark, raw, reference, tmp_path, monkeypatch):
    # GIVEN an ingest that dies after bronze.events_raw, before accounts_raw and the manifest
    settings = lake_on(tmp_path, raw, "lake")
    with monkeypatch.context() as m:
        crash_on(m, ACCOUNTS_RAW)
        with pytest.raises(InjectedCrash):
            ingest.execute(spark, settings, Summary("ingest"))
    assert lake.exists(spark, settings, EVENTS_RAW) and not lake.exists(spark, settings, INGEST_MANIFEST)
    # WHEN ingest runs again THEN bronze equals the uninterrupted run's, batch ids included (so
    # refine sees the same batch); bronze's ingested_at is each run's wall clock, not compared
    again = ingest.execute(spark, settings, Summary("ingest"))
    assert again.counts["events rows new in bronze"] == 0
    for table in BRONZE:
        assert_same_table(spark, settings, reference, table, drop=("ingested_at",))


# -- constraints ---------------------------------------------------------------------------

def _silver_rows(spark, reference, n, **changes):
    """``n`` silver rows of the reference lake as new events (new keys), with ``changes``."""
    df = lake.read(spark, reference, EVENTS).where("event_type = 'purchase'").orderBy("event_key").limit(n)
    df = df.withColumn("event_key", F.concat(F.lit("new:"), "event_key"))
    for name, value in changes.items():
        df = df.withColumn(name, F.when(F.col("event_key") == F.lit(df.first().event_key), F.expr(value))
                                  .otherwise(F.col(name)))
    return select_contract(df, EVENTS)


@pytest.fixture(scope="module")
def constrained(raw, reference, tmp_path_factory):
    """A lake whose silver tables are copies of the reference's (Delta tables relocate)."""
    settings = lake_on(tmp_path_factory.mktemp("constrained"), raw, "lake")
    shutil.copytree(Path(reference.lake_root) / "silver", Path(settings.lake_root) / "silver")
    return settings


@pytest.mark.parametrize("change, error", [
    ({"amount": "CAST(-5 AS DECIMAL(18,2))"}, "amount_sign"),     # a negative purchase
    ({"event_key": "CAST(NULL AS STRING)"}, "event_key"),           # a null key
    ({"user_id": "CAST(NULL AS STRING)"}, "user_id"),
    ({"progress": "1.5"}, "progress_in_unit_range"),
    ({"event_type": "'dance'"}, "known_event_type"),
])
def test_a_constraint_violation_rejects_the_whole_write(spark, reference, constrained, change, error):
    # GIVEN silver.events, and a batch of three new events of which one breaks a constraint
    settings = constrained
    before = (lake.version(spark, settings, EVENTS), rows_of(spark, settings, EVENTS))
    batch = _silver_rows(spark, reference, 3, **change)
    # WHEN it is written THEN Delta rejects it, naming the constraint, and commits nothing:
    # not even the two valid rows
    with pytest.raises(Exception, match=error):
        lake.merge_insert(spark, settings, EVENTS, batch)
    assert (lake.version(spark, settings, EVENTS), rows_of(spark, settings, EVENTS)) == before
    assert before[1] == rows_of(spark, reference, EVENTS)


def test_a_quarantine_row_without_reason_is_rejected(spark, reference, constrained):
    settings = constrained
    version = lake.version(spark, settings, QUARANTINE)
    bad = lake.read(spark, reference, QUARANTINE).limit(1).withColumn("source_position", F.lit(10**6).cast("long")) \
        .withColumn("reasons", F.array().cast("array<string>"))
    with pytest.raises(Exception, match="has_reason"):
        lake.merge_insert(spark, settings, QUARANTINE, bad)
    assert lake.version(spark, settings, QUARANTINE) == version


# -- two writers at once ---------------------------------------------------------------------

def _held_back(df, marks: str):
    """``df`` whose rows are produced only after the other writer has committed: the first
    time it is computed it signals ``waiting`` and waits (bounded) for ``other-done``."""
    def gate(batches):
        done = os.path.join(marks, "other-done")
        if not os.path.exists(done):
            open(os.path.join(marks, "waiting"), "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(done) and time.monotonic() < deadline:
                time.sleep(0.05)
        yield from batches
    return df.coalesce(1).mapInPandas(gate, df.schema)


def _race(spark, settings, first, second, marks: Path):
    """Writer A starts MERGEing ``first``; while its MERGE runs, writer B MERGEs ``second`` and
    commits; then A tries to commit. Returns A's outcome (None or its exception)."""
    outcome = {}

    def writer_a():
        try:
            lake.merge_insert(spark, settings, EVENTS, _held_back(first, str(marks)))
            outcome["a"] = None
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome["a"] = err

    a = threading.Thread(target=writer_a)
    a.start()
    deadline = time.monotonic() + 120
    while not (marks / "waiting").exists() and a.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (marks / "waiting").exists(), f"writer A never started its MERGE: {outcome}"
    lake.merge_insert(spark, settings, EVENTS, second)
    (marks / "other-done").touch()
    a.join(timeout=180)
    assert not a.is_alive()
    return outcome["a"]


@pytest.fixture
def race_lake(spark, raw, reference, tmp_path):
    """silver.events holding half of the reference rows; A and B each bring new rows plus
    ten rows both bring (the same events, delivered twice)."""
    settings = lake_on(tmp_path, raw, "lake")
    rows = lake.read(spark, reference, EVENTS).orderBy("event_key").collect()
    third = len(rows) // 3
    part = lambda rs: spark.createDataFrame(rs, EVENTS.schema)  # noqa: E731
    lake.merge_insert(spark, settings, EVENTS, part(rows[:third]))
    both = rows[third:third + 10]
    marks = tmp_path / "marks"
    marks.mkdir()
    return settings, part(rows[third + 10:2 * third] + both), part(rows[2 * third:] + both), marks, rows


def test_two_writers_at_once_conflict_is_retried_and_equals_a_serial_run(spark, race_lake, caplog):
    settings, a_rows, b_rows, marks, rows = race_lake
    with caplog.at_level("WARNING", logger="core.lake"):
        error = _race(spark, settings, a_rows, b_rows, marks)
    assert error is None
    # the conflict did happen, and was retried
    assert any("silver.events" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    # THEN the table is what running the writers one after the other gives: every row once
    expected = [tuple(r) for r in rows]
    assert tally("rerun differences", differences(rows_of(spark, settings, EVENTS), expected)) == 0
    assert_unique_keys(spark, settings, EVENTS)


def test_a_writer_that_keeps_losing_fails_clearly_and_commits_nothing(spark, race_lake, monkeypatch):
    settings, a_rows, b_rows, marks, rows = race_lake
    monkeypatch.setattr(lake, "COMMIT_ATTEMPTS", 1)
    before = {r.event_key for r in lake.read(spark, settings, EVENTS).select("event_key").collect()}
    error = _race(spark, settings, a_rows, b_rows, marks)
    assert isinstance(error, lake.ConcurrentWriteError)
    assert "silver.events" in str(error) and "concurrent writer" in str(error) and "unchanged" in str(error)
    # only B's rows were added: none of A's own
    after = {r.event_key for r in lake.read(spark, settings, EVENTS).select("event_key").collect()}
    assert after - before == {r.event_key for r in b_rows.collect()} - before
