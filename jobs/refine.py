"""Refine bronze into silver: silver.events, silver.quarantine and silver.identity_map.

Processes every ingest batch not yet in silver.refine_log. Each record read ends up exactly
once as a new silver row, a quarantine row (with its reasons), or a duplicate of an event
already kept; the reconciliation is printed and stored in silver.refine_log. The summary lists
every quarantine reason with its count, an example and what to fix; a batch quarantined above
refine.max_quarantine_share stops the job (and the pipeline, before aggregate).

--replay re-refines quarantined records under the current mappings and settings (after a
mapping fix, or with a later --as-of): a record that now passes moves to silver exactly once,
the rest keep their (new) reasons, and the batches' reconciliation is recomputed.

Raw phone numbers, emails and union ids stop here: only their HMAC reaches silver.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import lake
from core.errors import ConfigError, InputRejected
from core.settings import Settings
from core.tables import (
    ACCOUNTS_RAW,
    EVENTS,
    EVENTS_RAW,
    IDENTITY_MAP,
    QUARANTINE,
    REFINE_LOG,
    select_contract,
)
from jobs.cli import Summary, as_of_given, run_job
from jobs.generate import STAMP as generate_stamp
from transforms import identity, refine

log = logging.getLogger(__name__)
DEV_KEY = b"ipsynergy-development-key-do-not-use-in-production"
# Parsing with this run date rejects nothing as future: used to find the data's own last date.
NO_FUTURE = dt.date(2999, 12, 31)


class ReconciliationError(RuntimeError):
    pass


def generated(spark: SparkSession, settings: Settings) -> bool:
    """Whether the lake's account records are the generator's: every account file sits in an
    export folder that carries the generator's stamp (in the lake's own raw folder, or a
    generated raw root ingested with --input)."""
    if not lake.exists(spark, settings, ACCOUNTS_RAW):
        return False
    files = [r.source_file for r in lake.read(spark, settings, ACCOUNTS_RAW).select("source_file").distinct().collect()]
    # <raw root>/<platform>/accounts/<file>: the stamp is three folders up
    roots = {f.rsplit("/", 3)[0] for f in files}
    return bool(roots) and all(lake.read_text(spark, f"{root}/{generate_stamp}") is not None for root in roots)


def hmac_key(spark: SparkSession, settings: Settings) -> bytes:
    """The identifier key from the environment. Without one, the public development key is
    used only on generated data (:func:`generated`) or when refine.allow_development_key says
    so; real identifiers hashed with a public key could be reversed by anyone who guesses them."""
    name = settings.refine.hmac_key_env
    value = os.environ.get(name)
    if value:
        return value.encode("utf-8")
    if not (settings.refine.allow_development_key or generated(spark, settings)):
        raise ConfigError(f"{name} is not set: refusing to hash identifiers of real data with the public development "
                       f"key. Set {name} to a secret (e.g. export {name}=$(openssl rand -hex 32)) and keep it; "
                       f"for a throw-away trial only, --set refine.allow_development_key=true")
    log.warning("!!! %s is not set: identifiers are hashed with the PUBLIC development key. "
                "Set %s to a secret before processing real data. !!!", name, name)
    return DEV_KEY


def _union(frames: list[DataFrame]) -> DataFrame | None:
    out = None
    for f in frames:
        out = f if out is None else out.unionByName(f, allowMissingColumns=True)
    return out


def parse_batch(rows: DataFrame, settings: Settings, as_of: dt.date | None = None) -> DataFrame:
    """Bronze event rows of any platforms, parsed by their mappings (unknown_platform where
    there is none)."""
    mappings = settings.platforms
    platforms = sorted(r.platform for r in rows.select("platform").distinct().collect())
    return _union([
        refine.parse_events(rows.where(F.col("platform") == p), mappings[p], settings.refine, as_of or settings.as_of)
        if p in mappings else refine.unknown_platform(rows.where(F.col("platform") == p))
        for p in platforms
    ])


def pending_batches(spark: SparkSession, settings: Settings) -> tuple[DataFrame | None, list[str]]:
    """(bronze event rows not refined yet, their batch ids oldest delivery first)."""
    if not lake.exists(spark, settings, EVENTS_RAW):
        return None, []
    bronze = lake.read(spark, settings, EVENTS_RAW)
    done = (lake.read(spark, settings, REFINE_LOG).select("ingest_batch_id")
            if lake.exists(spark, settings, REFINE_LOG) else None)
    pending = bronze.join(done, "ingest_batch_id", "left_anti") if done is not None else bronze
    # Oldest delivery first, so "the earliest record received wins" holds across batches too.
    batches = [r.ingest_batch_id for r in pending.groupBy("ingest_batch_id").agg(F.min("ingested_at").alias("at"))
               .orderBy("at", "ingest_batch_id").collect()]
    return pending, batches


def data_as_of(spark: SparkSession, settings: Settings) -> dt.date | None:
    """The run date the data itself gives: the latest event date (far tail ignored, see
    transforms.refine.run_date) among silver's events and the pending records that pass every
    check but the future one."""
    pending, batches = pending_batches(spark, settings)
    return run_date_of(spark, settings, parse_batch(pending, settings, NO_FUTURE) if batches else None)


def run_date_of(spark: SparkSession, settings: Settings, parsed: DataFrame | None) -> dt.date | None:
    """The run date of silver's events plus the records of ``parsed`` (parsed with NO_FUTURE)
    that pass every check."""
    histogram: dict[dt.date, int] = {}
    frames = [parsed.where(F.size("reasons") == 0)] if parsed is not None else []
    if lake.exists(spark, settings, EVENTS):
        frames.append(lake.read(spark, settings, EVENTS))
    for frame in frames:
        for r in frame.groupBy("event_date").count().collect():
            histogram[r.event_date] = histogram.get(r.event_date, 0) + r["count"]
    return refine.run_date(list(histogram.items()))


def report_reasons(quarantine: DataFrame, read: int, summary: Summary, settings: Settings) -> list[str]:
    """Summary lines for the quarantined records of one batch: each reason with its count, an
    example and what to fix. Returns the reasons, most frequent first."""
    rows = refine.reason_counts(quarantine).collect()
    if not rows:
        return []
    summary.note(f"quarantine reasons ({len(rows)}), of {read:,} records read:")
    for r in rows:
        summary.count(f"quarantined: {r.reason}", r.records)
        example = (r.example_raw or "")[:100].replace("\n", " ")
        summary.note(f"  {r.reason:<20} {r.records:>10,}  e.g. {r.example_file.rsplit('/', 1)[-1]} line "
                     f"{r.example_position}: {example!r}")
        summary.note(f"  {'':<20} {'':>10}  fix: {refine.REASON_FIXES.get(r.reason, 'see README Troubleshooting')}")
    if any(r.reason == "bad_timestamp" for r in rows):
        early = quarantine.where(F.col("before_earliest")).count() if "before_earliest" in quarantine.columns else 0
        if early:
            summary.note(f"  {early:,} of the bad_timestamp records are readable but dated before "
                         f"refine.earliest_valid_date ({settings.refine.earliest_valid_date}): for older data, "
                         f"--set refine.earliest_valid_date=YYYY-MM-DD and replay (python -m jobs.refine --replay)")
    return [r.reason for r in rows]


def refresh_identity(spark: SparkSession, settings: Settings, summary: Summary) -> DataFrame:
    """Recompute components over all account records, upsert the identity map, quarantine bad
    rows. Without an account export every account is its own person (refine.with_user_ids)."""
    mappings = settings.platforms
    if not lake.exists(spark, settings, ACCOUNTS_RAW):
        lake.ensure(spark, settings, IDENTITY_MAP)
        summary.skip("no account export: identity stitching skipped, every account is its own person")
        return lake.read(spark, settings, IDENTITY_MAP)
    raw = lake.read(spark, settings, ACCOUNTS_RAW)
    platforms = [r.platform for r in raw.select("platform").distinct().collect()]
    # A key only where identifiers get hashed: account rows with no mapping are quarantined whole.
    key = hmac_key(spark, settings) if any(p in mappings and mappings[p].accounts for p in platforms) else DEV_KEY
    parsed = _union([refine.parse_accounts(raw.where(F.col("platform") == p), mappings[p])
                     if p in mappings and mappings[p].accounts else refine.unknown_platform(raw.where(F.col("platform") == p))
                     for p in platforms]).cache()
    # Account records hold raw PII, which must not reach silver: a rejected one is quarantined
    # with its reasons and its bronze location (source_file, source_position), not its text.
    bad = select_contract(parsed.where(F.size("reasons") > 0).withColumn("raw", F.lit(None).cast("string")), QUARANTINE)
    lake.merge_insert(spark, settings, QUARANTINE, bad)
    good = parsed.where(F.size("reasons") == 0).select("platform", "account_id", "phone", "email", "union_id")
    edges = identity.identifier_edges(good, key)
    comps = identity.connected_components(good, edges)
    # Pin the map as it was: it is compared with after it has been rewritten below.
    previous = (lake.read(spark, settings, IDENTITY_MAP).localCheckpoint()
                if lake.exists(spark, settings, IDENTITY_MAP) else None)
    current = identity.assign_user_ids(comps, previous).localCheckpoint()
    if previous is None:
        changed, moved = current, None
    else:
        # Write only what changed, so a rerun over the same accounts commits nothing.
        changed = current.join(previous, IDENTITY_MAP.schema.fieldNames(), "left_anti")
        moved = (current.join(previous.select("platform", "account_id", F.col("user_id").alias("old")),
                              ["platform", "account_id"], "inner")
                        .where(F.col("user_id") != F.col("old")).select("platform", "account_id", "user_id"))
    if changed.limit(1).count():
        summary.table(IDENTITY_MAP.qualified, lake.upsert(spark, settings, IDENTITY_MAP, changed))
    summary.count("accounts mapped", current.count())
    summary.count("people (user ids)", current.select("user_id").distinct().count())
    if moved is not None and lake.exists(spark, settings, EVENTS):
        n_moved = moved.count()
        if n_moved:
            # Two people turned out to be one: their existing events follow the surviving id.
            summary.table(EVENTS.qualified, lake.update_from(spark, settings, EVENTS, moved, ["platform", "account_id"], ["user_id"]))
            summary.count("accounts re-keyed", n_moved)
    parsed.unpersist()
    return lake.read(spark, settings, IDENTITY_MAP)


def execute(spark: SparkSession, settings: Settings, summary: Summary) -> Summary:
    identity_map = refresh_identity(spark, settings, summary)
    pending, batches = pending_batches(spark, settings)
    if pending is None:
        summary.note("bronze.events_raw does not exist yet: run jobs.ingest first")
        return summary
    if not batches:
        summary.note("no new ingest batches to refine")
        return summary
    too_many = []
    for batch_id in batches:
        rows = pending.where(F.col("ingest_batch_id") == batch_id)
        parsed = parse_batch(rows, settings).cache()
        valid_rows = parsed.where(F.size("reasons") == 0)
        quarantine = parsed.where(F.size("reasons") > 0)
        counts = {r["ok"]: r["n"] for r in parsed.groupBy((F.size("reasons") == 0).alias("ok")).agg(F.count("*").alias("n")).collect()}
        read, n_valid, n_bad = rows.count(), counts.get(True, 0), counts.get(False, 0)
        if read != n_valid + n_bad:
            raise ReconciliationError(f"batch {batch_id}: {read} bronze records but parsing accounted for "
                                      f"{n_valid} valid + {n_bad} rejected; a platform's records went missing")
        silver_rows = refine.to_silver(refine.with_user_ids(refine.first_per_key(valid_rows), identity_map))
        ev_version, _ = lake.merge_insert(spark, settings, EVENTS, silver_rows)
        q_version, _ = lake.merge_insert(spark, settings, QUARANTINE, select_contract(quarantine, QUARANTINE))
        # New rows are the silver rows this batch put there, counted in silver rather than taken
        # from this run's MERGE: after a crash between the writes above and the log below, the
        # rerun inserts nothing, yet the batch's log row must read as it would have the first time.
        inserted = lake.read(spark, settings, EVENTS).where(F.col("ingest_batch_id") == batch_id).count()
        duplicates = n_valid - inserted
        log_row = spark.createDataFrame([(batch_id, settings.as_of, read, inserted, n_bad, duplicates)], REFINE_LOG.schema)
        summary.table(REFINE_LOG.qualified, lake.merge_insert(spark, settings, REFINE_LOG, log_row)[0])
        summary.table(EVENTS.qualified, ev_version)
        summary.table(QUARANTINE.qualified, q_version)
        summary.count("records read", read)
        summary.count("new silver rows", inserted)
        summary.count("quarantined", n_bad)
        summary.count("duplicates dropped", duplicates)
        summary.note(f"reconciliation batch {batch_id}: read {read:,} = new {inserted:,} + quarantined {n_bad:,} "
                     f"+ duplicates {duplicates:,}")
        reasons = report_reasons(quarantine, read, summary, settings)
        if read and n_bad / read > settings.refine.max_quarantine_share:
            too_many.append(f"batch {batch_id}: {n_bad:,} of {read:,} records ({n_bad / read:.0%}) quarantined, "
                            f"mostly {', '.join(reasons[:3])}; fix {refine.REASON_FIXES.get(reasons[0], '')}")
        parsed.unpersist()
    if too_many:
        print(summary.render(), flush=True)
        raise InputRejected("refine: more than refine.max_quarantine_share "
                       f"({settings.refine.max_quarantine_share:.0%}) of a batch was quarantined, so the run stops "
                       "here rather than aggregate what is left:\n  " + "\n  ".join(too_many)
                       + "\nThen re-refine the quarantined records with: python -m jobs.refine --replay "
                         "[--platforms DIR] [--set ...] (python -m jobs.check --input DIR tries a mapping first)")
    return summary


def replay(spark: SparkSession, settings: Settings, summary: Summary, batches: tuple[str, ...] = (),
           reasons: tuple[str, ...] = (), infer_as_of: bool = False) -> Summary:
    """Re-refine the quarantined event records of ``batches`` (all when empty) with any of
    ``reasons`` (any when empty) under today's mappings and settings. Records that now pass
    are inserted into silver (MERGE on event_key: once, even when the replay is rerun) and
    leave the quarantine; the others keep their new reasons. Each touched batch's log row is
    recomputed from the tables, so records read = new + quarantined + duplicates still holds.
    With ``infer_as_of`` (no --as-of given) the run date follows the data, as in the pipeline."""
    if not lake.exists(spark, settings, QUARANTINE):
        summary.note("silver.quarantine does not exist: nothing to replay")
        return summary
    chosen = lake.read(spark, settings, QUARANTINE)
    if batches:
        chosen = chosen.where(F.col("ingest_batch_id").isin(*batches))
    if reasons:
        chosen = chosen.where(F.arrays_overlap("reasons", F.array(*[F.lit(r) for r in reasons])))
    # Replayed from bronze, as received (account records are re-parsed by every refine anyway).
    rows = (lake.read(spark, settings, EVENTS_RAW)
            .join(chosen.select("source_file", "source_position"), ["source_file", "source_position"], "left_semi"))
    n = rows.count()
    summary.count("records replayed", n)
    if n:
        if infer_as_of:
            found = run_date_of(spark, settings, parse_batch(rows, settings, NO_FUTURE))
            if found is not None and found != settings.as_of:
                settings = settings.model_copy(update={"as_of": found})
                summary.note(f"run date {found} (the data's latest event date; --as-of sets another)")
        parsed = parse_batch(rows, settings).localCheckpoint()
        identity_map = lake.read(spark, settings, IDENTITY_MAP) if lake.exists(spark, settings, IDENTITY_MAP) else None
        if identity_map is None:
            lake.ensure(spark, settings, IDENTITY_MAP)
            identity_map = lake.read(spark, settings, IDENTITY_MAP)
        valid = parsed.where(F.size("reasons") == 0)
        still = parsed.where(F.size("reasons") > 0)
        summary.table(EVENTS.qualified, lake.merge_insert(
            spark, settings, EVENTS, refine.to_silver(refine.with_user_ids(refine.first_per_key(valid), identity_map)))[0])
        summary.table(QUARANTINE.qualified, lake.delete_keys(spark, settings, QUARANTINE, valid))
        summary.table(QUARANTINE.qualified, lake.upsert(spark, settings, QUARANTINE, select_contract(still, QUARANTINE)))
        summary.count("now in silver (or duplicates)", valid.count())
        summary.count("still quarantined", still.count())
        report_reasons(still, n, summary, settings)
    else:
        summary.note("no quarantined event records match: nothing to replay")
    # The batches' log rows are recomputed from the tables even when nothing matched: a replay
    # stopped after its writes above is completed by running it again.
    reconcile(spark, settings, summary, batches)
    return summary


def reconcile(spark: SparkSession, settings: Settings, summary: Summary, batches: tuple[str, ...] = ()) -> None:
    """Recompute refine_log's new, quarantined and duplicate counts of ``batches`` (all when
    empty) from silver and the quarantine's event records (account records of the same batch
    are quarantined too, but are not among the records read)."""
    if not lake.exists(spark, settings, REFINE_LOG):
        return
    log_rows = lake.read(spark, settings, REFINE_LOG)
    if batches:
        log_rows = log_rows.where(F.col("ingest_batch_id").isin(*batches))
    events = lake.read(spark, settings, EVENTS)
    quarantined = (lake.read(spark, settings, QUARANTINE)
                   .join(lake.read(spark, settings, EVENTS_RAW).select("source_file", "source_position"),
                         ["source_file", "source_position"], "left_semi"))
    counts = [df.groupBy("ingest_batch_id").agg(F.count(F.lit(1)).alias(name))
              for df, name in ((events, "new_rows"), (quarantined, "quarantined"))]
    recomputed = (log_rows.drop("new_rows", "quarantined", "duplicates")
                  .join(counts[0], "ingest_batch_id", "left").join(counts[1], "ingest_batch_id", "left")
                  .fillna(0, ["new_rows", "quarantined"])
                  .withColumn("duplicates", F.col("records_read") - F.col("new_rows") - F.col("quarantined")))
    recomputed = select_contract(recomputed, REFINE_LOG).localCheckpoint()
    summary.table(REFINE_LOG.qualified, lake.upsert(spark, settings, REFINE_LOG, recomputed))
    for r in recomputed.orderBy("ingest_batch_id").collect():
        summary.note(f"reconciliation batch {r.ingest_batch_id}: read {r.records_read:,} = new {r.new_rows:,} + "
                     f"quarantined {r.quarantined:,} + duplicates {r.duplicates:,}")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replay", action="store_true",
                        help="re-refine quarantined records under the current mappings and settings")
    parser.add_argument("--batch", action="append", default=[], metavar="ID",
                        help="with --replay: only this ingest batch (repeatable; default: all)")
    parser.add_argument("--reason", action="append", default=[], metavar="REASON",
                        help="with --replay: only records with this reason, e.g. bad_timestamp (repeatable)")


def _run(spark: SparkSession, settings: Settings, summary: Summary, replay_quarantine: bool = False,
         batches: tuple[str, ...] = (), reasons: tuple[str, ...] = (), as_of_given: bool = True) -> Summary:
    if replay_quarantine:
        return replay(spark, settings, summary, batches, reasons, infer_as_of=not as_of_given)
    return execute(spark, settings, summary)


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.refine", __doc__, argv, _run, add_arguments=_arguments,
                   options=lambda a: {"replay_quarantine": a.replay, "batches": tuple(a.batch),
                                      "reasons": tuple(a.reason), "as_of_given": as_of_given(a)})


if __name__ == "__main__":
    sys.exit(main())
