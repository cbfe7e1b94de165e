"""generate -> ingest -> refine on a small generated lake, run twice."""
import hashlib
import json
import re
from pathlib import Path

import pytest
from chispa import assert_df_equality
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
)
from evaluation import generator as gen
from evaluation.truth import TRUTH_ACCOUNTS, TRUTH_DEFECTS
from jobs import generate, ingest, refine
from jobs.cli import Summary
from tests.conftest import SMALL, make_settings, persisted_rdds


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith((".", "_"))}


@pytest.fixture(scope="module")
def run(spark, small_lake):
    settings, first = small_lake
    snapshot = {t.qualified: lake.read(spark, settings, t).cache() for t in (EVENTS, QUARANTINE, IDENTITY_MAP, EVENTS_RAW)}
    for df in snapshot.values():
        df.count()
    return settings, first, snapshot


def test_reconciliation_holds_exactly(spark, run):
    settings, first, _ = run
    bronze = lake.read(spark, settings, EVENTS_RAW).count()
    silver = lake.read(spark, settings, EVENTS).count()
    quarantined = lake.read(spark, settings, QUARANTINE).where(F.col("source_file").contains("/events/")).count()
    logged = lake.read(spark, settings, REFINE_LOG).agg(F.sum("records_read"), F.sum("new_rows"),
                                                         F.sum("quarantined"), F.sum("duplicates")).first()
    assert bronze > 4000
    assert tuple(logged) == (bronze, silver, quarantined, bronze - silver - quarantined)
    assert first.counts["records read"] == bronze
    # the manifest accounts for every bronze record, file by file
    per_file = {r.source_file: r.records for r in lake.read(spark, settings, INGEST_MANIFEST).collect()}
    in_bronze = {r.source_file: r.n for r in lake.read(spark, settings, EVENTS_RAW).unionByName(
        lake.read(spark, settings, ACCOUNTS_RAW)).groupBy("source_file").agg(F.count("*").alias("n")).collect()}
    assert per_file == in_bronze


def test_each_planted_defect_lands_in_quarantine_with_its_reason(spark, run):
    settings, first, _ = run
    truth = lake.read(spark, settings, TRUTH_DEFECTS)
    planted = {(r.platform, r.defect): r.n for r in truth.groupBy("platform", "defect").agg(F.count("*").alias("n")).collect()}
    q = lake.read(spark, settings, QUARANTINE).where(F.col("source_file").contains("/events/"))
    found = {(r.platform, r.reason): r.n for r in
             q.select("platform", F.explode("reasons").alias("reason")).groupBy("platform", "reason")
              .agg(F.count("*").alias("n")).collect()}
    expected = {k: v for k, v in planted.items() if k[1] not in gen.DUPLICATE_KINDS}
    assert found == expected
    # every defect class the generator knows was planted at least once somewhere
    assert {d for _, d in planted} == {d for kinds in gen.DEFECTS.values() for d in kinds} | set(gen.DUPLICATE_KINDS)
    dup_planted = sum(v for k, v in planted.items() if k[1] in gen.DUPLICATE_KINDS)
    assert first.counts["duplicates dropped"] == dup_planted


def test_silver_is_unique_on_event_key_and_within_constraints(spark, run):
    settings, _, _ = run
    ev = lake.read(spark, settings, EVENTS)
    assert ev.count() == ev.select("event_key").distinct().count()
    assert ev.where("event_type <> 'refund' AND amount < 0").count() == 0
    # The bare name resolves through the session's catalog, and the session may have written
    # other lakes since this one: name this lake's table first, as opening a lake does.
    lake.register(spark, settings, EVENTS)
    assert spark.sql("select count(*) from silver.events").first()[0] == ev.count()


def test_identity_joins_exactly_the_accounts_that_share_identifiers(spark, run):
    settings, _, _ = run
    idm = lake.read(spark, settings, IDENTITY_MAP)
    truth = lake.read(spark, settings, TRUTH_ACCOUNTS)
    joined = idm.join(truth, ["platform", "account_id"], "inner")
    assert joined.count() == truth.count() == idm.count()
    # no user id spans two planted people (identifiers are unique per person)
    assert joined.groupBy("user_id").agg(F.countDistinct("person_id").alias("n")).where("n > 1").count() == 0
    # and people with several accounts do get stitched: fewer user ids than accounts
    assert idm.select("user_id").distinct().count() < idm.count()


def test_no_raw_pii_in_silver(spark, run):
    settings, _, _ = run
    # GIVEN the identifiers exactly as the platforms exported them (bronze keeps records as received)
    raw = " ".join(r.raw for r in lake.read(spark, settings, ACCOUNTS_RAW).collect())
    phones = {re.sub(r"[^0-9]", "", p)[-11:] for p in re.findall(r"(?<![0-9A-Za-z])(?:\+86[ -]?)?1[3-9][0-9][ -]?[0-9]{4}[ -]?[0-9]{4}(?![0-9A-Za-z])", raw)}
    emails = {e.strip().lower() for e in re.findall(r"[A-Za-z0-9.]+@[A-Za-z.]+", raw)}
    unions = set(re.findall(r"oU[0-9a-f]{26}", raw))
    assert len(phones) > 50 and len(emails) > 50 and len(unions) > 20
    phone_re = re.compile(r"(?<![0-9])(" + "|".join(sorted(phones)) + r")(?![0-9])")
    # THEN none of them appears in any string of any silver table
    for table in (EVENTS, IDENTITY_MAP, QUARANTINE, REFINE_LOG):
        df = lake.read(spark, settings, table)
        strings = [f.name for f in df.schema.fields if f.dataType.simpleString() == "string"]
        for row in df.select(*strings).collect():
            text = "|".join(v for v in row if v).lower()
            assert not phone_re.search(text), (table.qualified, text)
            assert not any(e in text for e in emails), (table.qualified, text)
            assert not any(u.lower() in text for u in unions), (table.qualified, text)


@pytest.mark.slow  # generates a second lake: the slow suite (CI) keeps make test within 15 minutes
def test_same_seed_gives_identical_raw_files(spark, run, tmp_path):
    settings, _, _ = run
    other = make_settings(tmp_path / "lake2", *SMALL)
    generate.execute(spark, other, Summary("generate"))
    a, b = _files(Path(settings.raw_root)), _files(Path(other.raw_root))
    assert len(a) == 12 and a == b  # 2 event files + 1 account file per platform


def test_second_run_changes_nothing(spark, run):
    settings, _, snapshot = run
    tables = (EVENTS, QUARANTINE, IDENTITY_MAP, EVENTS_RAW, REFINE_LOG)
    versions = {t.qualified: lake.version(spark, settings, t) for t in tables}
    again_ingest = ingest.execute(spark, settings, Summary("ingest"))
    again_refine = refine.execute(spark, settings, Summary("refine"))
    assert again_ingest.counts["files new"] == 0
    assert "records read" not in again_refine.counts
    for table in (EVENTS, QUARANTINE, IDENTITY_MAP, EVENTS_RAW):
        assert_df_equality(lake.read(spark, settings, table), snapshot[table.qualified], ignore_row_order=True)
    # nothing was committed either: every table is at the version it had
    assert {t.qualified: lake.version(spark, settings, t) for t in tables} == versions


@pytest.mark.slow  # ingest and refine again: the slow suite (CI) keeps make test within 15 minutes
def test_replayed_files_add_nothing(spark, run, tmp_path):
    # GIVEN the same export delivered again under a new name (a replayed batch)
    settings, _, snapshot = run
    src = Path(settings.raw_root) / "zhixue" / "events" / "part-00000.jsonl"
    replay = Path(settings.raw_root) / "zhixue" / "events" / "replay-part-00000.jsonl"
    replay.write_bytes(src.read_bytes())
    try:
        s = ingest.execute(spark, settings, Summary("ingest"))
        r = refine.execute(spark, settings, Summary("refine"))
        # THEN every record is read, none is new in silver
        assert s.counts["files new"] == 1
        assert r.counts["new silver rows"] == 0
        assert r.counts["records read"] == r.counts["duplicates dropped"] + r.counts["quarantined"]
        assert_df_equality(lake.read(spark, settings, EVENTS), snapshot[EVENTS.qualified], ignore_row_order=True)
    finally:
        replay.unlink()


@pytest.mark.slow  # ingest and refine again: the slow suite (CI) keeps make test within 15 minutes
def test_an_account_bridging_two_people_rekeys_their_events(spark, run):
    # Runs last in this module: it changes the lake (two people become one, consistently).
    # GIVEN two zhixue accounts of different people, one exporting a phone, the other an email
    settings, _, _ = run
    idm = {(r.platform, r.account_id): r.user_id for r in lake.read(spark, settings, IDENTITY_MAP).collect()}
    records = [json.loads(r.raw) for r in lake.read(spark, settings, ACCOUNTS_RAW).where("platform = 'zhixue'").collect()]
    with_events = {r.account_id for r in lake.read(spark, settings, EVENTS).where("platform = 'zhixue'")
                   .select("account_id").distinct().collect()}
    a = next(r for r in records if r.get("mobile") and r["uid"] in with_events)
    b = next(r for r in records if r.get("mail") and r["uid"] in with_events
             and idm[("zhixue", r["uid"])] != idm[("zhixue", a["uid"])])
    ua, ub = idm[("zhixue", a["uid"])], idm[("zhixue", b["uid"])]
    events_before = lake.read(spark, settings, EVENTS).count()
    # WHEN a new account export holds an account with a's phone and b's email
    bridge = Path(settings.raw_root) / "zhixue" / "accounts" / "bridge.jsonl"
    bridge.write_text(json.dumps({"uid": "zx_bridge", "mobile": a["mobile"], "mail": b["mail"]}) + "\n")
    try:
        ingest.execute(spark, settings, Summary("ingest"))
        r = refine.execute(spark, settings, Summary("refine"))
    finally:
        bridge.unlink()
    # THEN a, b and the bridge are one person carrying the smaller existing id, and every event
    # that carried the other id now carries the survivor; no event is added or lost
    survivor, gone = min(ua, ub), max(ua, ub)
    idm2 = {(x.platform, x.account_id): x.user_id for x in lake.read(spark, settings, IDENTITY_MAP).collect()}
    assert idm2[("zhixue", a["uid"])] == idm2[("zhixue", b["uid"])] == idm2[("zhixue", "zx_bridge")] == survivor
    assert gone not in set(idm2.values())
    ev = lake.read(spark, settings, EVENTS)
    assert ev.where(F.col("user_id") == gone).count() == 0
    assert ev.count() == events_before
    assert r.counts["accounts re-keyed"] == sum(1 for k, v in idm.items() if v == gone)
    # and refining again changes nothing
    version = lake.version(spark, settings, EVENTS)
    again = refine.execute(spark, settings, Summary("refine"))
    assert "accounts re-keyed" not in again.counts and lake.version(spark, settings, EVENTS) == version


@pytest.mark.slow  # generates a third lake, as above
def test_generate_leaves_nothing_cached(spark, small_lake, tmp_path):
    # Its per-platform caches once stayed cached for the rest of the session (the bench and
    # make run share one), in memory and on local disk. Another seed, so that no plan is
    # already cached by the shared lake.
    other = make_settings(tmp_path / "lake", *SMALL, "generate.seed=8", "generate.sessions=500")
    before = persisted_rdds(spark)
    generate.execute(spark, other, Summary("generate"))
    assert persisted_rdds(spark, since=before) == {}
