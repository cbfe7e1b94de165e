"""Faults that take a whole process: a job killed with SIGKILL in the middle of a Delta write,
and Spark task failures retried (local[N,F]). The jobs run in child processes (their own
JVM); the tables they leave are compared with an uninterrupted run in this process."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import lake
from core.settings import PROJECT_ROOT
from core.tables import ACCOUNTS_RAW, EVENTS, EVENTS_RAW, IDENTITY_MAP, INGEST_MANIFEST, QUARANTINE, REFINE_LOG
from jobs import ingest, refine
from jobs.cli import Summary
from tests.conftest import make_settings
from tests.reliability.helpers import (
    assert_same_table,
    assert_unique_keys,
    child_env,
    job_command,
    rows_of,
    write_accounts,
    write_events,
)

pytestmark = pytest.mark.slow
SILVER = (EVENTS, QUARANTINE, IDENTITY_MAP, REFINE_LOG)


def data_files(table_dir: Path) -> set[Path]:
    return {p for p in table_dir.rglob("*.parquet") if "_delta_log" not in p.parts}


def commits(table_dir: Path) -> set[str]:
    return {p.name for p in (table_dir / "_delta_log").glob("*.json")}


def test_sigkill_in_the_middle_of_a_delta_write(spark, tmp_path):
    # GIVEN a lake refined once, and a second delivery ingested but not refined yet
    raw = tmp_path / "raw"
    write_events(raw, 15, seed=11)
    settings = make_settings(tmp_path / "killed", f"lake.raw={raw}")
    ingest.execute(spark, settings, Summary("ingest"))
    refine.execute(spark, settings, Summary("refine"))
    write_events(raw, 60, seed=12, name="part-00001", prefix="b2-")
    ingest.execute(spark, settings, Summary("ingest"))
    # ... and an identical copy of that lake, refined without interruption: the reference
    reference = make_settings(tmp_path / "reference", f"lake.raw={raw}")
    shutil.copytree(settings.lake_root, reference.lake_root)
    refine.execute(spark, reference, Summary("refine"))

    table_dir = Path(settings.table_path("silver", "events"))
    version, rows = lake.version(spark, settings, EVENTS), rows_of(spark, settings, EVENTS)
    files, logged = data_files(table_dir), commits(table_dir)
    # WHEN refine runs in a child process that writes one file per row (so the write of
    # silver.events lasts long enough), and is killed with SIGKILL once that write has
    # put files in the table's folder
    cmd = job_command("refine", Path(settings.lake_root), f"lake.raw={raw}",
                      "spark.conf={spark.sql.files.maxRecordsPerFile: 1}")
    # Its own process group: the SIGKILL reaches the JVM that does the write, not only Python.
    child = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while child.poll() is None and time.monotonic() < deadline:
            if len(data_files(table_dir) - files) >= 5:
                break
            time.sleep(0.02)
        assert child.poll() is None, f"refine ended before it was killed:\n{child.stdout.read()[-3000:]}"
        assert len(data_files(table_dir) - files) >= 5, "the write of silver.events never started"
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait(timeout=60)
    # THEN the write left files but no commit: the table reads exactly as before, at its
    # previous version, and the batch is not logged as refined
    assert data_files(table_dir) - files and commits(table_dir) == logged
    assert lake.version(spark, settings, EVENTS) == version
    assert rows_of(spark, settings, EVENTS) == rows
    assert lake.read(spark, settings, REFINE_LOG).count() == 1
    # WHEN refine runs again THEN it completes the work exactly once: every silver table
    # equals the uninterrupted run's (the killed write's files are not part of the table)
    refine.execute(spark, settings, Summary("refine"))
    for table in (EVENTS, REFINE_LOG):
        assert_same_table(spark, settings, reference, table)
    assert_unique_keys(spark, settings, EVENTS)
    assert lake.read(spark, settings, EVENTS).count() == (15 + 60) * 4


def test_task_failures_retried_give_the_same_tables_as_a_clean_run(spark, tmp_path):
    # GIVEN exports, and the clean ingest + refine of them in this process
    raw = tmp_path / "raw"
    write_events(raw, 40, seed=21)
    write_accounts(raw)
    (raw / "zhixue" / "events" / "bad.jsonl").write_text('{"eid": 1\nnot json\n')
    reference = make_settings(tmp_path / "reference", f"lake.raw={raw}")
    ingest.execute(spark, reference, Summary("ingest"))
    refine.execute(spark, reference, Summary("refine"))
    # WHEN the same jobs run with two cores and up to three attempts per task, and the first
    # attempt of a task in every write fails after part of its output
    marks = tmp_path / "marks"
    marks.mkdir()
    flaky = tmp_path / "flaky"
    out = subprocess.run([sys.executable, "-m", "tests.reliability.flaky_job", str(flaky), str(raw),
                          str(marks), "local[2,3]"], cwd=PROJECT_ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    failures = len(list(marks.iterdir()))
    # THEN tasks did fail (once in each write) and were retried ...
    assert failures >= 8, failures
    # ... and every table equals the clean run's (bronze's ingested_at is the wall clock)
    settings = make_settings(flaky, f"lake.raw={raw}")
    for table in (EVENTS_RAW, ACCOUNTS_RAW, INGEST_MANIFEST):
        assert_same_table(spark, settings, reference, table, drop=("ingested_at",))
    for table in SILVER:
        assert_same_table(spark, settings, reference, table)
    assert_unique_keys(spark, settings, EVENTS)
    assert "reconciliation batch" in out.stdout
