"""Run every stage in one Spark session: generate (unless --input is given) -> ingest -> refine
-> aggregate -> personas -> train -> score.

This is what `make run` calls. Each stage prints its own summary; the pipeline ends with
the table list and row counts.
"""
from __future__ import annotations

import sys

from pyspark.sql import SparkSession

from jobs import aggregate, generate, ingest, lake, personas, refine, score, train
from jobs.cli import Summary, input_option, input_value, run_job
from jobs.config import Settings
from transforms import schemas

TABLES = (schemas.EVENTS_RAW, schemas.ACCOUNTS_RAW, schemas.EVENTS, schemas.QUARANTINE, schemas.IDENTITY_MAP,
          schemas.USER_PLATFORM_DAILY, schemas.CREATOR_PLATFORM_DAILY, schemas.PLATFORM_DAILY, schemas.USER_FEATURES,
          schemas.CREATOR_QUALITY, schemas.CREATOR_PLATFORM_PERIOD, schemas.PLATFORM_PERIOD,
          schemas.USER_PERSONAS, schemas.PERSONA_PROFILES, schemas.PERSONA_TRANSITIONS,
          schemas.USER_REVENUE_SCORES, schemas.SYNERGY_SCORES, schemas.REVENUE_METRICS)


def execute(spark: SparkSession, settings: Settings, summary: Summary, input_root: str | None = None) -> Summary:
    stages = [] if input_root else [("generate", generate.execute, {})]
    stages += [("ingest", ingest.execute, {"input_root": input_root}), ("refine", refine.execute, {}),
               ("aggregate", aggregate.execute, {}), ("personas", personas.execute, {}),
               ("train", train.execute, {}), ("score", score.execute, {})]
    for name, body, opts in stages:
        last = body(spark, settings, Summary(f"pipeline/{name}"), **opts)
        print(last.render(), flush=True)
    for table in TABLES:
        if lake.exists(spark, settings, table):
            summary.count(f"rows {table.qualified}", lake.read(spark, settings, table).count())
            summary.table(table.qualified, lake.version(spark, settings, table))
    summary.note(f"lake: {settings.lake_root}")
    for line in last.notes:  # the scoring summary (synergy, expansion, balance, personas, models) closes the run
        summary.note(line)
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job(
        "jobs.pipeline", __doc__, argv, execute,
        add_arguments=input_option, options=input_value,
    )


if __name__ == "__main__":
    sys.exit(main())
