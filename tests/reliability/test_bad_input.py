"""Bad input, one file per fault, next to valid exports of all four platforms: every record
read ends in silver, in quarantine with its reason, or as a counted duplicate; nothing is
lost, nothing fails."""
from __future__ import annotations

import json
import logging
import random
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from core import lake
from core.tables import EVENTS, EVENTS_RAW, INGEST_MANIFEST, QUARANTINE, REFINE_LOG
from jobs import ingest, refine
from jobs.cli import Summary
from tests.conftest import make_settings
from tests.reliability.helpers import (
    assert_unique_keys,
    event,
    local,
    parquet_table,
    record,
    tally,
    write_accounts,
    write_events,
    write_records,
)

# Bad input of every kind through ingest and refine: the slow suite (make test-slow, CI), with
# the other fault-injection modules; make test keeps within 15 minutes.
pytestmark = pytest.mark.slow

VALID_PER_PLATFORM = 6


def _valid(platform: str, n: int, tag: str) -> list:
    rnd = random.Random(tag)
    return [record(platform, event(platform, i, rnd, prefix=f"{tag}-")) for i in range(n)]


def _text_lines(data: bytes) -> int:
    """Lines a text reader sees in ``data`` (split on the 0x0A byte, whatever the encoding)."""
    return len(data.split(b"\n")) - (1 if data.endswith(b"\n") else 0)


def plant(raw: Path) -> dict[str, tuple[int, Counter]]:
    """Write one file per bad-input case; returns case -> (file, silver rows, quarantine reasons)."""
    cases: dict[str, tuple[Path, int, Counter]] = {}

    def case(name, path, silver, **reasons):
        cases[name] = (path, silver, Counter(reasons))

    zx, ge, ts, kt = (raw / p / "events" for p in ("zhixue", "globalearn", "tingshu", "ketang"))
    good = _valid("zhixue", 2, "mj")
    case("malformed JSON lines", write_records(zx / "malformed.jsonl", "zhixue",
         good + ['{"eid": "mj-x", "user": {"uid"', "not json at all"]), 2, malformed=2)

    good = _valid("tingshu", 1, "mc")
    case("malformed CSV lines", write_records(ts / "malformed.csv", "tingshu",
         good + ["TSx,m1,a1,k1,tech,play,2026-06-01", 'TSy,"unclosed,a1,k1,tech,play,2026-06-01 08:00:00,1,1,,Y,,s']),
         1, malformed=2)

    w = [json.loads(x) for x in _valid("zhixue", 4, "wt")]
    w[0]["dur"], w[1]["amt"], w[2]["prog"], w[3]["dur"] = "abc", True, {"pct": 5}, [1, 2]
    case("wrong types (JSON)", write_records(zx / "wrong_types.jsonl", "zhixue", [json.dumps(r) for r in w]),
         0, bad_type=4)

    # One ketang export changed the type of two columns: they cannot be merged with the
    # other files' schema. Values that still read as numbers are fine.
    rows = _valid("ketang", 3, "td")
    for r, amount in zip(rows, ["1500", "12x", None]):
        r["amount_minor"], r["watch_s"] = amount, str(int(r["watch_s"]))
        r["currency"] = "CNY" if amount else None
        r["event_name"] = "order_paid" if amount else "course_view"
    case("wrong types (Parquet column type drift)", write_records(kt / "type_drift.parquet", "ketang", rows),
         2, bad_type=1)

    drift = [json.loads(x) for x in _valid("globalearn", 4, "sd")]
    for r in drift[:2]:  # new fields: ignored
        r["device"], r["experiment"] = "ios", {"arm": "b", "since": 3}
    for r in drift[2:]:  # a field renamed: the mapped one is missing
        r["event"] = r.pop("type")
    case("schema drift (JSON: extra and missing fields)",
         write_records(ge / "drift.jsonl", "globalearn", [json.dumps(r) for r in drift]), 2, missing_field=2)

    extra = [x + ",extra-col" for x in _valid("tingshu", 2, "xc")]
    path = write_records(ts / "extra_column.csv", "tingshu", extra, header=False)
    path.write_text(",".join(["record_id"] * 13 + ["new_col"]) + "\n" + path.read_text())
    case("schema drift (CSV: an extra column)", path, 0, malformed=3)  # header + 2 rows

    rows = _valid("ketang", 3, "mk")
    for r in rows:
        r.pop("teacher_id")
        r["device"] = "tv"
    case("schema drift (Parquet: a column missing, one added)",
         write_records(kt / "missing_column.parquet", "ketang", rows), 0, missing_field=3)

    data = "".join(x + "\n" for x in _valid("zhixue", 2, "u16")).encode("utf-16")
    (zx / "utf16.jsonl").write_bytes(data)
    case("UTF-16 with BOM", zx / "utf16.jsonl", 0, bad_encoding=_text_lines(data))

    lat = [json.loads(x) for x in _valid("globalearn", 3, "l1")]
    lat[0]["topic"], lat[1]["topic"] = "économie", "Café culture"  # lat[2] is plain ASCII: valid in any encoding
    (ge / "latin1.jsonl").write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lat).encode("latin-1"))
    case("Latin-1", ge / "latin1.jsonl", 1, bad_encoding=2)

    good = _valid("tingshu", 2, "iu")
    bad = good[1].replace(",tech,", ",te\xffch,").replace(",health,", ",he\xffalth,").replace(",finance,", ",fi\xffnance,")
    body = (",".join(["record_id", "member_id", "album_id", "anchor_id", "genre", "action", "event_time",
                      "play_seconds", "progress_pct", "price_yuan", "from_feed", "campaign", "session"])
            + "\n" + good[0] + "\n").encode() + bad.encode("latin-1") + b"\n"
    (ts / "invalid_utf8.csv").write_bytes(body)
    case("invalid UTF-8", ts / "invalid_utf8.csv", 1, bad_encoding=1)

    huge = json.loads(_valid("zhixue", 1, "hg")[0])
    huge["blob"] = "x" * (24 * 1024 * 1024)
    case("a single huge record (24 MB)", write_records(zx / "huge.jsonl", "zhixue", [json.dumps(huge)]), 1)

    (ge / "empty.jsonl").write_bytes(b"")
    case("an empty file", ge / "empty.jsonl", 0)

    full = kt / "truncated.parquet"
    pq.write_table(parquet_table(_valid("ketang", 5, "tp")), full)
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    case("a truncated Parquet file", full, 0, unreadable_file=1)

    unknown = raw / "newplatform" / "events" / "part-0.jsonl"
    write_records(unknown, "zhixue", _valid("zhixue", 3, "np"))
    case("unknown platform directory", unknown, 0, unknown_platform=3)
    return cases


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def planted(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("badinput")
    settings = make_settings(root / "lake")
    raw = Path(settings.raw_root)
    write_events(raw, VALID_PER_PLATFORM, seed=1)
    write_accounts(raw)
    cases = plant(raw)
    messages = _Collect()
    logging.getLogger("jobs.ingest").addHandler(messages)
    try:
        ing = ingest.execute(spark, settings, Summary("ingest"))
    finally:
        logging.getLogger("jobs.ingest").removeHandler(messages)
    ref = refine.execute(spark, settings, Summary("refine"))
    yield settings, cases, ing, ref, messages.lines
    shutil.rmtree(root, ignore_errors=True)  # the huge record: do not keep 24 MB per run


def _per_file(df, *cols):
    return {local(r.source_file): r for r in df.groupBy("source_file").agg(*cols).collect()}


def test_every_bad_input_case_is_quarantined_with_its_reason(spark, planted):
    settings, cases, _, _, _ = planted
    silver = _per_file(lake.read(spark, settings, EVENTS), F.count("*").alias("n"))
    q = lake.read(spark, settings, QUARANTINE).select("source_file", F.explode("reasons").alias("reason"))
    reasons = {}
    for r in q.groupBy("source_file", "reason").agg(F.count("*").alias("n")).collect():
        reasons.setdefault(local(r.source_file), Counter())[r.reason] = r.n
    got = {name: (silver[str(p)].n if str(p) in silver else 0, reasons.get(str(p), Counter()))
           for name, (p, _, _) in cases.items()}
    expected = {name: (n, want) for name, (_, n, want) in cases.items()}
    tally("bad-input cases", len(cases))
    tally("bad-input cases handled", sum(got[c] == expected[c] for c in cases))
    assert got == expected


def test_records_read_equal_silver_plus_quarantine_plus_duplicates(spark, planted):
    settings, cases, ing, ref, _ = planted
    bronze = lake.read(spark, settings, EVENTS_RAW)
    n_bronze = bronze.count()
    n_silver = lake.read(spark, settings, EVENTS).count()
    n_quarantined = lake.read(spark, settings, QUARANTINE).where(F.col("source_file").contains("/events/")).count()
    log_row = lake.read(spark, settings, REFINE_LOG).agg(*[F.sum(c).alias(c) for c in
                                                           ("records_read", "new_rows", "quarantined", "duplicates")]).first()
    tally("records read", n_bronze)
    assert tally("rows lost", n_bronze - n_silver - n_quarantined - log_row["duplicates"]) == 0
    assert tuple(log_row) == (n_bronze, n_silver, n_quarantined, 0)
    assert n_bronze == n_silver + n_quarantined + log_row["duplicates"] == ref.counts["records read"]
    # every file is in the manifest with exactly the records bronze holds for it (the empty one: 0)
    manifest = {r.source_file: r.records for r in lake.read(spark, settings, INGEST_MANIFEST).where("kind = 'events'").collect()}
    in_bronze = {r.source_file: r.n for r in bronze.groupBy("source_file").agg(F.count("*").alias("n")).collect()}
    assert manifest == {f: in_bronze.get(f, 0) for f in manifest}
    assert manifest[next(f for f in manifest if f.endswith("/empty.jsonl"))] == 0
    assert len(manifest) == 4 + len(cases)


def test_the_huge_record_is_kept_whole_and_the_truncated_file_is_named(spark, planted):
    settings, cases, _, _, messages = planted
    huge = str(cases["a single huge record (24 MB)"][0])
    sizes = [r.n for r in lake.read(spark, settings, EVENTS_RAW).where(F.col("source_file").endswith(huge))
             .select(F.length("raw").alias("n")).collect()]
    assert sizes == [len(cases["a single huge record (24 MB)"][0].read_text().rstrip("\n"))]
    truncated = lake.read(spark, settings, QUARANTINE).where(F.array_contains("reasons", "unreadable_file")).collect()
    assert [(local(r.source_file), r.source_position, r.raw) for r in truncated] == \
        [(str(cases["a truncated Parquet file"][0]), 0, None)]
    # the job log names the file and says what happens to it
    assert [m for m in messages if "truncated.parquet" in m and "unreadable_file" in m]


def test_rerun_on_the_same_files_commits_nothing(spark, planted):
    settings, _, _, _, _ = planted
    tables = (EVENTS_RAW, EVENTS, QUARANTINE, REFINE_LOG, INGEST_MANIFEST)
    before = {t.name: lake.version(spark, settings, t) for t in tables}
    assert ingest.execute(spark, settings, Summary("ingest")).counts["files new"] == 0
    assert "records read" not in refine.execute(spark, settings, Summary("refine")).counts
    assert {t.name: lake.version(spark, settings, t) for t in tables} == before


def test_duplicates_within_a_batch_and_replayed_records_keep_event_key_unique(spark, planted):
    # Runs last: it adds a delivery to the lake.
    # GIVEN silver after the first delivery, and a second delivery (one batch, two files) holding
    # three records already refined (one corrected since: same event id, another duration),
    # and one new event three times: twice in the first file, once in the second
    settings, _, _, _, _ = planted
    zx = Path(settings.raw_root) / "zhixue" / "events"
    sent = (zx / "part-00000.jsonl").read_text().splitlines()[:3]
    corrected = json.loads(sent[2])
    corrected["dur"] = 9999
    new = json.loads(_valid("zhixue", 1, "dup")[0])
    later = {**new, "dur": 1}
    write_records(zx / "redelivery-a.jsonl", "zhixue", sent[:2] + [json.dumps(corrected), json.dumps(new), json.dumps(later)])
    write_records(zx / "redelivery-b.jsonl", "zhixue", [json.dumps(later)])
    before = lake.read(spark, settings, EVENTS).where(F.col("platform") == "zhixue").collect()
    # WHEN it is ingested and refined
    ingest.execute(spark, settings, Summary("ingest"))
    r = refine.execute(spark, settings, Summary("refine"))
    # THEN one row is new: the new event as first received; the rest are counted duplicates
    assert (r.counts["records read"], r.counts["new silver rows"], r.counts["duplicates dropped"],
            r.counts["quarantined"]) == (6, 1, 5, 0)
    assert_unique_keys(spark, settings, EVENTS)
    ev = lake.read(spark, settings, EVENTS)
    after = {x.event_key: x for x in ev.where(F.col("platform") == "zhixue").collect()}
    assert {x.event_key: x for x in before}.items() <= after.items()  # the corrected record did not replace it
    added = after[f"zhixue:{new['eid']}"]
    assert (added.duration_s, local(added.source_file)) == (float(new["dur"]), str(zx / "redelivery-a.jsonl"))


def test_a_file_that_cannot_be_read_stops_ingest_with_its_name(spark, tmp_path):
    # GIVEN a Parquet file listed for ingest that is gone by the time it is read (a reader
    # error that is not corruption: retrying later may succeed, so it is not quarantined)
    ok = write_records(tmp_path / "a.parquet", "ketang", _valid("ketang", 2, "gone"))
    gone = tmp_path / "b.parquet"
    # THEN ingest stops with an error naming the file
    with pytest.raises(ingest.IngestError, match=f"cannot read .*{gone.name}"):
        ingest.read_records(spark, [str(ok), str(gone)], "parquet").count()
