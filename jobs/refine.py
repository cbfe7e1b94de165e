"""Refine bronze into silver: silver.events, silver.quarantine and silver.identity_map.

Processes every ingest batch not yet in silver.refine_log. Each record read ends up exactly
once as a new silver row, a quarantine row (with its reasons), or a duplicate of an event
already kept; the reconciliation is printed and stored in silver.refine_log.
Raw phone numbers, emails and union ids stop here: only their HMAC reaches silver.
"""
from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import lake
from jobs.cli import Summary, run_job
from jobs.config import Settings
from transforms import identity, refine
from transforms.schemas import ACCOUNTS_RAW, EVENTS, EVENTS_RAW, IDENTITY_MAP, QUARANTINE, REFINE_LOG, select_contract

log = logging.getLogger(__name__)
DEV_KEY = b"ipsynergy-development-key-do-not-use-in-production"


class ReconciliationError(RuntimeError):
    pass


def hmac_key(settings: Settings) -> bytes:
    value = os.environ.get(settings.refine.hmac_key_env)
    if value:
        return value.encode("utf-8")
    log.warning("!!! %s is not set: identifiers are hashed with the PUBLIC development key. "
                "Set %s to a secret before processing real data. !!!",
                settings.refine.hmac_key_env, settings.refine.hmac_key_env)
    return DEV_KEY


def _union(frames: list[DataFrame]) -> DataFrame | None:
    out = None
    for f in frames:
        out = f if out is None else out.unionByName(f, allowMissingColumns=True)
    return out


def refresh_identity(spark: SparkSession, settings: Settings, summary: Summary, key: bytes) -> DataFrame:
    """Recompute components over all account records, upsert the identity map, quarantine bad rows."""
    mappings = settings.platforms
    if not lake.exists(spark, settings, ACCOUNTS_RAW):
        lake.ensure(spark, settings, IDENTITY_MAP)
        return lake.read(spark, settings, IDENTITY_MAP)
    raw = lake.read(spark, settings, ACCOUNTS_RAW)
    platforms = [r.platform for r in raw.select("platform").distinct().collect()]
    parsed = _union([refine.parse_accounts(raw.where(F.col("platform") == p), mappings[p]) if p in mappings
                     else refine.unknown_platform(raw.where(F.col("platform") == p)) for p in platforms]).cache()
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
    key = hmac_key(settings)
    mappings = settings.platforms
    identity_map = refresh_identity(spark, settings, summary, key)
    if not lake.exists(spark, settings, EVENTS_RAW):
        summary.note("bronze.events_raw does not exist yet: run jobs.ingest first")
        return summary
    bronze = lake.read(spark, settings, EVENTS_RAW)
    done = (lake.read(spark, settings, REFINE_LOG).select("ingest_batch_id")
            if lake.exists(spark, settings, REFINE_LOG) else None)
    pending = bronze.join(done, "ingest_batch_id", "left_anti") if done is not None else bronze
    # Oldest delivery first, so "the earliest record received wins" holds across batches too.
    batches = [r.ingest_batch_id for r in pending.groupBy("ingest_batch_id").agg(F.min("ingested_at").alias("at"))
               .orderBy("at", "ingest_batch_id").collect()]
    if not batches:
        summary.note("no new ingest batches to refine")
        return summary
    for batch_id in batches:
        rows = pending.where(F.col("ingest_batch_id") == batch_id)
        platforms = [r.platform for r in rows.select("platform").distinct().collect()]
        parsed = _union([
            refine.parse_events(rows.where(F.col("platform") == p), mappings[p], settings.refine, settings.as_of)
            if p in mappings else refine.unknown_platform(rows.where(F.col("platform") == p))
            for p in sorted(platforms)
        ]).cache()
        valid_rows = parsed.where(F.size("reasons") == 0)
        quarantine = select_contract(parsed.where(F.size("reasons") > 0), QUARANTINE)
        counts = {r["ok"]: r["n"] for r in parsed.groupBy((F.size("reasons") == 0).alias("ok")).agg(F.count("*").alias("n")).collect()}
        read, n_valid, n_bad = rows.count(), counts.get(True, 0), counts.get(False, 0)
        if read != n_valid + n_bad:
            raise ReconciliationError(f"batch {batch_id}: {read} bronze records but parsing accounted for "
                                      f"{n_valid} valid + {n_bad} rejected; a platform's records went missing")
        silver_rows = refine.to_silver(refine.with_user_ids(refine.first_per_key(valid_rows), identity_map))
        ev_version, _ = lake.merge_insert(spark, settings, EVENTS, silver_rows)
        q_version, _ = lake.merge_insert(spark, settings, QUARANTINE, quarantine)
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
        parsed.unpersist()
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.refine", __doc__, argv, execute)


if __name__ == "__main__":
    sys.exit(main())
