"""Try your platform mappings on a sample of your exports, writing nothing.

    python -m jobs.check --input DIR [--platforms DIR] [--sample N]

For every platform folder under --input it parses the first --sample records of each file
with that platform's mapping, as ingest and refine would, and prints: the records parsed, the
quarantine reasons with their counts, an example (file and line) and what to fix, mapped fields
that came out empty, the date range found, and which outputs the data can feed (personas,
revenue forecasts, synergy, identity stitching). A mapping that does not load is reported with
its file and key. Exits with status 1 when a platform has no mapping or more than
refine.max_quarantine_share of its sample is rejected, so it can guard a scheduled run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import InputRejected
from core.settings import Settings
from core.sources import PlatformMapping
from jobs.cli import Summary, input_option, run_job
from jobs.ingest import list_files, read_records
from jobs.refine import NO_FUTURE, report_reasons
from transforms import refine
from transforms.ingest import to_bronze

SAMPLE = 1000


def sample_records(spark: SparkSession, mapping: PlatformMapping, kind: str, files: list[str], sample: int) -> DataFrame:
    """The first ``sample`` records of each file as bronze rows (nothing is written)."""
    part = mapping.parts[kind]
    header = part.separator.join(part.columns) if mapping.format == "csv" and part.columns else None
    rows = to_bronze(read_records(spark, files, mapping.format, mapping.charset), mapping.name, mapping.format,
                     "check", dt.datetime(2000, 1, 1), header)
    return rows.where(F.col("source_position") <= sample)


def report_events(parsed: DataFrame, mapping: PlatformMapping, summary: Summary, settings: Settings) -> list[str]:
    """Summary notes for one platform's parsed sample; returns the problems found."""
    problems, name, max_share = [], mapping.name, settings.refine.max_quarantine_share
    stats = parsed.agg(F.count(F.lit(1)).alias("n"), F.count_if(F.size("reasons") == 0).alias("ok")).first()
    n, ok = stats["n"], stats["ok"]
    summary.note(f"  events: {n:,} records sampled, {ok:,} parse, {n - ok:,} would be quarantined")
    report_reasons(parsed.where(F.size("reasons") > 0), n, summary, settings)
    if n and (n - ok) / n > max_share:
        problems.append(f"{name}: {n - ok:,} of {n:,} sampled event records would be quarantined")
    good = parsed.where(F.size("reasons") == 0)
    mapped = {k: v for k, v in mapping.events.fields.items() if isinstance(v, str)}
    if ok:
        filled = good.agg(*[F.count(k).alias(k) for k in mapped if k in good.columns]).first().asDict()
        for key, count in filled.items():
            if count == 0:
                summary.note(f"    fields.{key} ({mapped[key]}) is empty in every parsed record: check the column "
                             f"or JSON path")
        first, last = good.agg(F.min("event_date"), F.max("event_date")).first()
        summary.note(f"    dates {first} .. {last}")
    types = {r.event_type: r["count"] for r in good.groupBy("event_type").count().collect()}
    summary.note("    event types: " + (", ".join(f"{t} {c:,}" for t, c in sorted(types.items())) or "(none)"))
    creators = "creator_id" in mapping.events.fields and ok and good.where(F.col("creator_id").isNotNull()).limit(1).count()
    paid = any(t in types for t in ("purchase", "subscribe"))
    funnel = "impression" in types and "click" in types
    summary.note("    feeds: personas " + ("yes" if ok else "no (nothing parses)")
                 + "; revenue forecasts " + ("yes" if paid else "no (needs purchase or subscribe events)")
                 + "; creator x platform model and expansion " + ("yes" if creators else "no (needs creator_id)")
                 + "; synergy Q and E " + ("yes" if creators and funnel else
                                           "no (needs creator_id and impression/click events)")
                 + "; identity stitching " + ("yes" if mapping.accounts else "no (needs an accounts: block and an "
                                              "account export with phone, email or union id)"))
    return problems


def execute(spark: SparkSession, settings: Settings, summary: Summary, input_root: str | None = None,
            sample: int = SAMPLE) -> Summary:
    root = input_root or settings.raw_root
    listing = list_files(spark, root)
    where = settings.platforms_dir or "conf/platforms"
    problems: list[str] = []
    for platform in sorted({f[0] for f in listing}):
        mapping = settings.platforms.get(platform)
        files = {kind: [f[2] for f in listing if f[0] == platform and f[1] == kind]
                 for kind in sorted({f[1] for f in listing if f[0] == platform})}
        summary.note(f"{platform}: " + ", ".join(f"{len(v)} {k} file(s)" for k, v in files.items()))
        if mapping is None:
            problems.append(f"{platform}: no mapping {platform}.yaml in {where}")
            summary.note(f"  no mapping {platform}.yaml in {where}: every record would be quarantined as "
                         f"unknown_platform (see README 'Use your own data')")
            continue
        summary.note(f"  mapping {where}/{platform}.yaml: {mapping.format}, {mapping.encoding}")
        for kind in files:
            if kind not in mapping.parts:
                problems.append(f"{platform}: a '{kind}' folder but no '{kind}:' block in the mapping")
                summary.note(f"  {kind}/: the mapping has no '{kind}:' block; these files would be quarantined")
        if "events" in files and "events" in mapping.parts:
            rows = sample_records(spark, mapping, "events", files["events"], sample)
            # No record is judged future here: the run date is the data's own unless --as-of says so.
            parsed = refine.parse_events(rows, mapping, settings.refine, NO_FUTURE).cache()
            problems += report_events(parsed, mapping, summary, settings)
            parsed.unpersist()
        if "accounts" in files and mapping.accounts:
            parsed = refine.parse_accounts(sample_records(spark, mapping, "accounts", files["accounts"], sample),
                                           mapping)
            stats = parsed.agg(F.count(F.lit(1)).alias("n"), F.count_if(F.size("reasons") == 0).alias("ok"),
                               *[F.count(k).alias(k) for k in ("phone", "email", "union_id")]).first()
            # Account records hold personal data: reasons and locations only, never their text.
            summary.note(f"  accounts: {stats['n']:,} sampled, {stats['ok']:,} parse; identifiers filled: phone "
                         f"{stats['phone']:,}, email {stats['email']:,}, union id {stats['union_id']:,}")
    if not listing:
        problems.append(f"no export files under {root} (expected <platform>/events/... folders)")
    for p in problems:
        summary.note(f"problem: {p}")
    if problems:
        print(summary.render(), flush=True)
        raise InputRejected(f"check found {len(problems)} problem(s); see above. Nothing was written.")
    summary.note("nothing was written; run the pipeline with the same --input and --platforms")
    return summary


def _arguments(parser: argparse.ArgumentParser) -> None:
    input_option(parser)
    parser.add_argument("--sample", type=int, default=SAMPLE, metavar="N",
                        help=f"records parsed per file (default {SAMPLE})")


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.check", __doc__, argv, execute, add_arguments=_arguments,
                   options=lambda a: {"input_root": a.input, "sample": a.sample})


if __name__ == "__main__":
    sys.exit(main())
