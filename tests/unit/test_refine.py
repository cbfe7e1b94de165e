"""refine.parse_events on tiny hand-built bronze rows: each defect class gets its reason,
valid rows get the unified values worked out by hand."""
import datetime as dt
from decimal import Decimal

import pytest
from chispa import assert_df_equality

from core.settings import RefineSettings, load_platforms
from core.sources import PlatformMapping
from core.tables import EVENTS_RAW
from transforms import refine

AS_OF = dt.date(2026, 6, 30)
CFG = RefineSettings(fx_to_base={"CNY": 1.0, "USD": 7.0})


def bronze(spark, platform, fmt, lines):
    rows = [(platform, f"file:/raw/{platform}/events/part-0.x", i + 1, fmt, line, "b1", dt.datetime(2026, 7, 1))
            for i, line in enumerate(lines)]
    return spark.createDataFrame(rows, EVENTS_RAW.schema)


def reasons_of(df):
    return [r.reasons for r in df.orderBy("source_position").collect()]


@pytest.fixture(scope="module")
def zhixue() -> PlatformMapping:
    return load_platforms()["zhixue"]


@pytest.fixture(scope="module")
def tingshu() -> PlatformMapping:
    return load_platforms()["tingshu"]


def zx(**over):
    import json
    rec = {"eid": "e1", "user": {"uid": "u1"}, "item": {"id": "c1", "author": "k1", "cat": "tech"}, "act": "buy",
           "ts": "1780000000000", "dur": 10, "prog": 0.5, "amt": 1990, "rec": 1, "sid": "s1"}
    for k, v in over.items():
        if v is None:
            rec.pop(k, None)
        else:
            rec[k] = v
    return json.dumps(rec)


def test_valid_json_record_is_unified(spark, zhixue):
    # GIVEN a zhixue purchase of 1990 fen at epoch ms 1780000000000
    out = refine.parse_events(bronze(spark, "zhixue", "json", [zx()]), zhixue, CFG, AS_OF)
    row = out.first()
    # THEN amounts are scaled to yuan, time is UTC, fields are renamed
    assert row.reasons == []
    assert (row.event_key, row.account_id, row.content_id, row.creator_id, row.category) == ("zhixue:e1", "u1", "c1", "k1", "tech")
    assert row.event_type == "purchase"
    assert row.event_ts == dt.datetime(2026, 5, 28, 20, 26, 40)
    assert row.event_date == dt.date(2026, 5, 28)
    assert row.amount == Decimal("19.90") and row.amount_orig == Decimal("19.9000") and row.currency_orig == "CNY"
    assert (row.duration_s, row.progress, row.is_recommended) == (10.0, 0.5, True)


def test_refund_is_negative_and_fx_applies(spark):
    ge = load_platforms()["globalearn"]
    line = ('{"id":"r1","user_id":"u","content":"c","creator":"k","type":"refund","time":"06/01/2026 17:00:00",'
            '"cents":250,"cur":"usd","via_rec":false}')
    row = refine.parse_events(bronze(spark, "globalearn", "json", [line]), ge, CFG, AS_OF).first()
    assert row.reasons == []
    # 17:00 in Los Angeles (PDT, UTC-7) is midnight UTC; 2.50 USD at 7.0 = 17.50 CNY, negative for a refund
    assert row.event_ts == dt.datetime(2026, 6, 2, 0, 0, 0)
    assert row.amount == Decimal("-17.50") and row.amount_orig == Decimal("-2.5000") and row.currency_orig == "USD"


@pytest.mark.parametrize("line, reason", [
    ('{"eid": "e1", "user": {"uid"', "malformed"),
    ("", "malformed"),
    (zx(user={}), "missing_field"),
    (zx(eid=None), "missing_field"),
    (zx(act="dance"), "unknown_event_type"),
    (zx(ts="yesterday"), "bad_timestamp"),
    (zx(ts="946684800000"), "bad_timestamp"),           # 2000-01-01: before earliest_valid_date
    (zx(ts="1800000000000"), "future_timestamp"),       # 2027-01-15: after as_of + tolerance
    (zx(dur="abc"), "bad_type"),
    (zx(amt="12,5"), "bad_type"),
    (zx(dur=-5), "out_of_range"),
    (zx(prog=1.5), "out_of_range"),
    (zx(amt=-100), "negative_amount"),
])
def test_each_defect_gets_its_reason(spark, zhixue, line, reason):
    out = refine.parse_events(bronze(spark, "zhixue", "json", [line]), zhixue, CFG, AS_OF)
    assert reasons_of(out) == [[reason]]


def test_unknown_currency(spark):
    ge = load_platforms()["globalearn"]
    line = '{"id":"x","user_id":"u","content":"c","creator":"k","type":"view","time":"06/01/2026 17:00:00","cur":"XYZ"}'
    assert reasons_of(refine.parse_events(bronze(spark, "globalearn", "json", [line]), ge, CFG, AS_OF)) == [["unknown_currency"]]


def test_csv_local_time_percent_progress_and_defects(spark, tingshu):
    good = "T1,m1,a1,k1,tech,play,2026-06-01 08:00:00,30,50,,Y,,s1"
    quoted = good.replace("T1", "T5").replace(",tech,", ',"tech, science",')  # a comma inside quotes
    lines = [good, "T2,m1,a1,k1,tech,play,2026-06-01", good.replace("T1", "T3").replace(",30,", ",3x,"),
             good.replace("T1", "T4") + ",extra", quoted, quoted.replace("T5", "T6") + ",extra"]
    out = refine.parse_events(bronze(spark, "tingshu", "csv", lines), tingshu, CFG, AS_OF)
    assert reasons_of(out) == [[], ["malformed"], ["bad_type"], ["malformed"], [], ["malformed"]]
    assert out.where("source_position = 5").first().category == "tech, science"
    # a mapping with another separator counts its fields by that separator
    piped = tingshu.model_copy(update={"events": tingshu.events.model_copy(update={"reader": {"sep": "|"}})})
    lines_piped = [good.replace(",", "|"), quoted.replace(",", "|").replace('"tech| science"', '"tech, science"'), good]
    assert reasons_of(refine.parse_events(bronze(spark, "tingshu", "csv", lines_piped), piped, CFG, AS_OF)) == \
        [[], [], ["malformed"]]
    row = out.where("source_position = 1").first()
    # 08:00 Beijing time is 00:00 UTC; 50 percent is 0.5; no amount means 0
    assert (row.event_ts, row.progress, row.duration_s, row.amount) == (dt.datetime(2026, 6, 1), 0.5, 30.0, Decimal("0.00"))


def test_unknown_platform_rows_are_rejected_whole(spark):
    out = refine.unknown_platform(bronze(spark, "mystery", "text", ["a", "b"]))
    assert reasons_of(out) == [["unknown_platform"], ["unknown_platform"]]


def test_first_per_key_keeps_the_earliest_record(spark, zhixue):
    lines = [zx(), zx(dur=99), zx(eid="e2")]
    parsed = refine.parse_events(bronze(spark, "zhixue", "json", lines), zhixue, CFG, AS_OF)
    kept = refine.first_per_key(parsed).select("event_key", "source_position", "duration_s")
    expected = spark.createDataFrame([("zhixue:e1", 1, 10.0), ("zhixue:e2", 3, 10.0)],
                                     "event_key string, source_position long, duration_s double")
    assert_df_equality(kept, expected, ignore_row_order=True, ignore_nullable=True)


@pytest.mark.parametrize("raw_hex, fmt", [
    ("7B22656964223A22E9227D", "json"),            # {"eid":"é"} in Latin-1: not UTF-8
    ("FFFE7B00220065006900", "json"),              # UTF-16LE with its byte-order mark
    ("007B00220061", "json"),                      # UTF-16 text: NUL bytes
])
def test_input_that_is_not_utf8_text_is_bad_encoding_only(spark, zhixue, raw_hex, fmt):
    # GIVEN a record whose bytes are not UTF-8 text (built from bytes: Python strings cannot hold them)
    from pyspark.sql import functions as F
    df = bronze(spark, "zhixue", fmt, ["x"]).withColumn("raw", F.expr(f"CAST(unhex('{raw_hex}') AS STRING)"))
    # THEN its one reason is bad_encoding, not the parse failures it would also cause
    assert reasons_of(refine.parse_events(df, zhixue, CFG, AS_OF)) == [["bad_encoding"]]


def test_a_valid_record_with_non_ascii_text_is_not_bad_encoding(spark, zhixue):
    out = refine.parse_events(bronze(spark, "zhixue", "json", [zx(item={"id": "c1", "author": "k1", "cat": "健康 é"})]),
                              zhixue, CFG, AS_OF)
    assert reasons_of(out) == [[]] and out.first().category == "健康 é"


def test_an_unreadable_file_row_is_quarantined_as_unreadable_file(spark, zhixue):
    from transforms.ingest import UNREADABLE
    rows = [("zhixue", "file:/raw/zhixue/events/cut.parquet", 0, UNREADABLE, None, "b1", dt.datetime(2026, 7, 1))]
    df = spark.createDataFrame(rows, EVENTS_RAW.schema)
    assert reasons_of(refine.parse_events(df, zhixue, CFG, AS_OF)) == [["unreadable_file"]]
    assert reasons_of(refine.parse_accounts(df, zhixue)) == [["unreadable_file"]]


def test_the_run_date_is_the_datas_last_date_without_its_far_tail():
    from transforms.refine import run_date

    d = dt.date(2025, 1, 1)
    daily = [(d + dt.timedelta(days=i), 10) for i in range(300)]  # 3,000 events over 300 days
    assert run_date(daily) == d + dt.timedelta(days=299)
    # a tail dated 2099: 4 records, or even 2 % of the events, form a run of their own
    assert run_date(daily + [(dt.date(2099, 1, 1), 4)]) == d + dt.timedelta(days=299)
    assert run_date(daily + [(dt.date(2099, 1, 1), 60)]) == d + dt.timedelta(days=299)
    # a quiet last day still counts; a pause of two months before a busy month does not hide it
    assert run_date(daily + [(d + dt.timedelta(days=320), 1)]) == d + dt.timedelta(days=320)
    later = [(d + dt.timedelta(days=400 + i), 10) for i in range(30)]
    assert run_date(daily + later) == d + dt.timedelta(days=429)
    assert run_date([]) is None
