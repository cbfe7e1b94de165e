"""Compare one --as-of date's results with the generator's planted truth (generated data only).

Prints how well the pipeline recovered the identities (purity, completeness), creator quality
Q(C) and platform promotion E(P) (Spearman), the personas (adjusted Rand index) and the
synergy (Spearman against quality x promotion). `make run` calls it after the pipeline. On a
lake of your own exports there is no truth, and it says so. No pipeline job reads the truth.
"""
from __future__ import annotations

import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core import lake
from core.settings import Settings
from core.tables import CREATOR_QUALITY, IDENTITY_MAP, PLATFORM_PERIOD, SYNERGY_SCORES, USER_PERSONAS
from evaluation import recovery
from evaluation.truth import TRUTH_ACCOUNTS, TRUTH_CREATORS, TRUTH_PLATFORMS
from jobs.cli import Summary, run_job


def execute(spark: SparkSession, settings: Settings, summary: Summary) -> Summary:
    if not lake.exists(spark, settings, TRUTH_ACCOUNTS):
        summary.note(f"no generated truth in {settings.lake_root}: nothing to evaluate (your own exports have none)")
        return summary
    as_of = settings.as_of

    def on_date(table):
        """The table's slice for --as-of, or None when the stage has not written it."""
        if not lake.exists(spark, settings, table):
            return None
        return lake.read(spark, settings, table).where(F.col("as_of_date") == F.lit(as_of))

    accounts, creators, platforms = (lake.read(spark, settings, t) for t in (TRUTH_ACCOUNTS, TRUTH_CREATORS,
                                                                              TRUTH_PLATFORMS))
    summary.note(f"recovery of the planted truth as of {as_of} (the pipeline never reads it):")
    if lake.exists(spark, settings, IDENTITY_MAP):
        ids = recovery.identity(lake.read(spark, settings, IDENTITY_MAP), accounts)
        if ids:
            summary.note(f"  identities   purity {ids['purity']:.3f}, completeness {ids['completeness']:.3f}")
    quality, period, synergy = on_date(CREATOR_QUALITY), on_date(PLATFORM_PERIOD), on_date(SYNERGY_SCORES)
    for label, planted, figure in (
        ("Q(C)", "quality", None if quality is None else recovery.quality(quality, creators)),
        ("E(P)", "promotion", None if period is None else recovery.promotion(period, platforms)),
        ("synergy", "quality x promotion", None if synergy is None else recovery.synergy(synergy, creators, platforms)),
    ):
        if figure is not None:
            summary.note(f"  {label:<12} Spearman vs planted {planted} {figure[0]:.3f} ({figure[1]:,} compared)")
    if on_date(USER_PERSONAS) is not None and lake.exists(spark, settings, IDENTITY_MAP):
        ari = recovery.personas(on_date(USER_PERSONAS), lake.read(spark, settings, IDENTITY_MAP), accounts)
        if ari is not None:
            summary.note(f"  personas     adjusted Rand index vs planted personas {ari:.3f}")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.evaluate", __doc__, argv, execute)


if __name__ == "__main__":
    sys.exit(main())
