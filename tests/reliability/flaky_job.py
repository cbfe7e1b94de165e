"""Child process of test_process_faults: ingest then refine with Spark task failures injected.

    python -m tests.reliability.flaky_job LAKE_ROOT RAW_ROOT MARKS_DIR MASTER

Every DataFrame the lake writes passes through an Arrow map that, on the first attempt of
partition 0, lets its first batch through and then fails the task (leaving a marker file
in MARKS_DIR). With MASTER = local[N,F] Spark retries the task, up to F attempts.
"""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

from pyspark import TaskContext

from core import lake
from core.session import build_session
from jobs import ingest, refine
from jobs.cli import Summary
from tests.conftest import make_settings


def flaky(df, marks: str):
    def fail_first_attempt(batches):
        ctx = TaskContext.get()
        for i, batch in enumerate(batches):
            if i == 1 and ctx.attemptNumber() == 0 and ctx.partitionId() == 0:
                Path(marks, f"failed-{uuid.uuid4().hex}").touch()
                raise RuntimeError("injected task failure")
            yield batch
        if ctx.attemptNumber() == 0 and ctx.partitionId() == 0:  # a single batch: fail after it
            Path(marks, f"failed-{uuid.uuid4().hex}").touch()
            raise RuntimeError("injected task failure")
    return df.repartition(2).mapInArrow(fail_first_attempt, df.schema)


def main(lake_root: str, raw_root: str, marks: str, master: str) -> int:
    settings = make_settings(lake_root, f"lake.raw={raw_root}", f"spark.master={master}",
                             "spark.conf={spark.sql.execution.arrow.maxRecordsPerBatch: 16}")
    spark = build_session(settings)
    real_merge, real_upsert = lake.merge_insert, lake.upsert
    lake.merge_insert = lambda s, st, t, df: real_merge(s, st, t, flaky(df, marks))
    lake.upsert = lambda s, st, t, df: real_upsert(s, st, t, flaky(df, marks))
    ingest.execute(spark, settings, Summary("ingest"))
    print(refine.execute(spark, settings, Summary("refine")).render())
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
