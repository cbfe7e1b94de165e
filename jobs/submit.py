"""The spark-submit entry point: one file that runs any job from the packaged code.

    spark-submit [spark options] --py-files dist/ipsynergy.zip dist/submit.py JOB [job options]

JOB is one of: check, generate, ingest, refine, aggregate, personas, train, score, pipeline. The job
options are those of ``python -m jobs.JOB --help`` (e.g. --env cluster --as-of 2026-06-30
--set lake.root=hdfs:///ipsynergy/lake). `make package` copies this file to dist/; see the
README, "Running on a cluster".
"""
from __future__ import annotations

import importlib
import sys

JOBS = ("check", "generate", "ingest", "refine", "aggregate", "personas", "train", "score", "pipeline")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] not in JOBS:
        print(f"submit.py: unknown job {argv[0]!r}; expected one of {', '.join(JOBS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"jobs.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
