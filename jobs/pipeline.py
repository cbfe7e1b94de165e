"""Run every stage in one Spark session, from raw exports (or generated ones) to scores.

The stages: generate (unless --input is given) -> ingest -> refine -> aggregate -> personas
-> train -> score.

This is what `make run` calls. Each stage prints its own summary; the pipeline ends with
the table list and row counts.

With --input (your own exports) and no --as-of, the run date follows the data: the latest
event date among the records that pass refine's checks (a far tail, such as a few records
dated 2099, is ignored). It is printed, and every stage of the run uses it.
"""
from __future__ import annotations

import sys
import time
from importlib import import_module

from pyspark.sql import SparkSession

from core import lake
from core.settings import Settings
from core.tables import DATA_TABLES
from jobs import STAGES, refine, report
from jobs.cli import Summary, as_of_given, input_option, input_value, run_job


def execute(spark: SparkSession, settings: Settings, summary: Summary, input_root: str | None = None,
            as_of_given: bool = True) -> Summary:
    # With --input the exports are the user's: nothing to generate.
    stages = [s for s in STAGES if not (input_root and s == "generate")]
    options = {"ingest": {"input_root": input_root}}
    skipped: list[str] = []
    for number, name in enumerate(stages, start=1):
        body, opts = import_module(f"jobs.{name}").execute, options.get(name, {})
        print(f"pipeline: [{number}/{len(stages)}] {name} ...", flush=True)
        started = time.monotonic()
        if name == "refine" and input_root and not as_of_given:
            found = refine.data_as_of(spark, settings)
            if found is not None:
                settings = settings.model_copy(update={"as_of": found})
                summary.note(f"run date {found} (the data's latest event date; --as-of sets another)")
                print(f"pipeline: run date {found}, the latest event date in the data (--as-of sets another)",
                      flush=True)
            else:  # refine's summary says why nothing passes
                print(f"pipeline: no event passes refine's checks, so the run date stays {settings.as_of}", flush=True)
        last = body(spark, settings, Summary(f"pipeline/{name}"), **opts)
        print(last.render(), flush=True)
        print(f"pipeline: [{number}/{len(stages)}] {name} done in {time.monotonic() - started:.0f}s", flush=True)
        # What a stage left out, and why, is repeated at the end: it shapes what the run produced.
        skipped += [f"{name}: {line.strip()}" for line in last.skipped]
        summary.results.update(last.results)
    for table in DATA_TABLES:
        if lake.exists(spark, settings, table):
            summary.count(f"rows {table.qualified}", lake.row_count(spark, settings, table))
            summary.table(table.qualified, lake.version(spark, settings, table))
    summary.note(f"lake: {settings.lake_root}")
    if skipped:
        summary.note("skipped or left out:")
        for line in skipped:
            summary.note(f"  {line}")
    # The scoring results (synergy, expansion, balance, personas, models) close the run.
    for line in report.scoring_lines(summary.results["scoring"]):
        summary.note(line)
    summary.note(f"report: {summary.results['scoring']['report']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job(
        "jobs.pipeline", __doc__, argv, execute,
        add_arguments=input_option, options=lambda a: {**input_value(a), "as_of_given": as_of_given(a)},
    )


if __name__ == "__main__":
    sys.exit(main())
