"""Helpers of the fault-injection tests: tiny raw exports written by hand (exact, fast, and each
record known), and running a job in a child process.

The raw files follow conf/platforms exactly: zhixue and globalearn JSON lines, tingshu CSV
with a header, ketang Parquet.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import functions as F

from core import lake
from core.settings import load_platforms
from evaluation.generator import export_codes
from tests.conftest import TEST_OVERRIDES

# The demo mappings say what each platform's records look like: its codes for the unified
# event types and the tingshu CSV's header.
_DEMO = load_platforms()
TINGSHU_HEADER = _DEMO["tingshu"].events.columns
VOCAB = {p: export_codes(_DEMO[p]) for p in ("zhixue", "globalearn", "tingshu", "ketang")}
PLATFORMS = tuple(VOCAB)
START = dt.datetime(2026, 6, 1)


def event(platform: str, i: int, rnd: random.Random, prefix: str = "") -> dict:
    """A valid unified event (the values a platform record is made from)."""
    etype = rnd.choice(["view", "view", "play", "like", "purchase", "refund"])
    return {
        "id": f"{prefix}{platform[:2]}{i}", "account": f"{platform[:2]}-a{rnd.randrange(40)}",
        "content": f"c{rnd.randrange(30)}", "creator": f"k{rnd.randrange(8)}",
        "category": rnd.choice(["tech", "health", "finance"]), "type": etype,
        "ts": START + dt.timedelta(minutes=rnd.randrange(60 * 24 * 28)),
        "dur": rnd.randrange(600), "prog": round(rnd.random(), 2),
        "amount": rnd.randrange(100, 9900) if etype in ("purchase", "refund") else None,
        "rec": rnd.random() < 0.3, "session": f"s{rnd.randrange(500)}",
    }


def record(platform: str, e: dict):
    """The platform's export record of event ``e``: a JSON/CSV line or a Parquet row (dict)."""
    code = VOCAB[platform][e["type"]]
    if platform == "zhixue":
        rec = {"eid": e["id"], "user": {"uid": e["account"]}, "item": {"id": e["content"], "author": e["creator"],
               "cat": e["category"]}, "act": code, "ts": int(e["ts"].replace(tzinfo=dt.timezone.utc).timestamp() * 1000),
               "dur": e["dur"], "prog": e["prog"], "rec": int(e["rec"]), "sid": e["session"]}
        if e["amount"] is not None:
            rec["amt"] = e["amount"]
        return json.dumps(rec)
    if platform == "globalearn":
        local = e["ts"] - dt.timedelta(hours=7)  # June: Los Angeles is UTC-7
        rec = {"id": e["id"], "user_id": e["account"], "content": e["content"], "creator": e["creator"],
               "topic": e["category"], "type": code, "time": local.strftime("%m/%d/%Y %H:%M:%S"),
               "seconds": e["dur"], "pct_done": e["prog"], "via_rec": e["rec"], "visit": e["session"]}
        if e["amount"] is not None:
            rec.update(cents=e["amount"], cur="USD")
        return json.dumps(rec)
    if platform == "tingshu":
        local = e["ts"] + dt.timedelta(hours=8)  # Beijing
        price = "" if e["amount"] is None else f"{e['amount'] / 100:.2f}"
        return ",".join([e["id"], e["account"], e["content"], e["creator"], e["category"], code,
                         local.strftime("%Y-%m-%d %H:%M:%S"), str(e["dur"]), f"{e['prog'] * 100:.0f}", price,
                         "Y" if e["rec"] else "N", "", e["session"]])
    return {"event_id": e["id"], "account": e["account"], "course_id": e["content"], "teacher_id": e["creator"],
            "subject": e["category"], "event_name": code, "event_time": e["ts"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "watch_s": float(e["dur"]), "progress": e["prog"], "amount_minor": e["amount"],
            "currency": None if e["amount"] is None else "CNY", "recommended": e["rec"], "campaign_id": None,
            "visit_id": e["session"]}


KETANG_TYPES = {"watch_s": pa.float64(), "progress": pa.float64(), "amount_minor": pa.int64(),
                "recommended": pa.bool_()}


def parquet_table(records: list[dict]) -> pa.Table:
    """Records as an Arrow table: a column's type from its values, else ketang's type (never
    Arrow's null type, which a real export would not have)."""
    names = list(dict.fromkeys(k for r in records for k in r))
    cols = {}
    for n in names:
        values = [r.get(n) for r in records]
        typ = None if all(v is None for v in values) else pa.array([v for v in values if v is not None]).type
        cols[n] = pa.array(values, type=typ or KETANG_TYPES.get(n, pa.string()))
    return pa.table(cols)


def write_records(path: Path, platform: str, records: list, header: bool = True) -> Path:
    """One export file of ``records`` in the platform's format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if platform == "ketang":
        pq.write_table(parquet_table(records), path)
    elif platform == "tingshu":
        head = ",".join(TINGSHU_HEADER) + "\n" if header else ""
        path.write_text(head + "".join(r + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text("".join(r + "\n" for r in records), encoding="utf-8")
    return path


EXT = {"zhixue": "jsonl", "globalearn": "jsonl", "tingshu": "csv", "ketang": "parquet"}


def write_events(raw: Path, n_per_platform: int, seed: int, name: str = "part-00000", prefix: str = "") -> int:
    """``n_per_platform`` valid events per platform into raw/<platform>/events/<name>.<ext>."""
    for platform in PLATFORMS:
        rnd = random.Random(f"{seed}-{platform}")
        recs = [record(platform, event(platform, i, rnd, prefix)) for i in range(n_per_platform)]
        write_records(raw / platform / "events" / f"{name}.{EXT[platform]}", platform, recs)
    return n_per_platform * len(PLATFORMS)


def pii(platform: str, i: int) -> dict:
    """Distinctive raw identifiers of account i (people 0..19 hold one account per platform)."""
    person = i % 20
    return {"phone": f"139{person:04d}{7777 + person:04d}", "email": f"Reader.{person}@Mail-Example.com",
            "union": f"oU{hashlib.sha256(str(person).encode()).hexdigest()[:26]}"}


def write_accounts(raw: Path) -> dict[str, set[str]]:
    """Account exports with PII for accounts <pl>-a0..a39; returns the raw identifier values."""
    seen = {"phone": set(), "email": set(), "union": set()}
    for platform in PLATFORMS:
        rows = []
        for i in range(40):
            ids = pii(platform, i)
            for k, v in ids.items():
                seen[k].add(v)
            acc = f"{platform[:2]}-a{i}"
            if platform == "zhixue":
                rows.append(json.dumps({"uid": acc, "mobile": ids["phone"], "mail": ids["email"], "wx_union": ids["union"]}))
            elif platform == "globalearn":
                rows.append(json.dumps({"user_id": acc, "phone": "+86 " + ids["phone"], "email": ids["email"]}))
            elif platform == "tingshu":
                rows.append(",".join([acc, ids["phone"], ids["email"], ids["union"]]))
            else:
                rows.append({"account": acc, "phone_number": ids["phone"], "email_address": ids["email"],
                             "union_id": ids["union"]})
        path = raw / platform / "accounts" / f"accounts.{EXT[platform]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if platform == "ketang":
            pq.write_table(parquet_table(rows), path)
        elif platform == "tingshu":
            path.write_text("member_id,phone,email,unionid\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
        else:
            path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return seen


def local(path: str) -> str:
    """A Hadoop/URI file name as a plain local path."""
    return re.sub(r"^file:(//)?", "", path)


def rows_of(spark, settings, table, drop: tuple[str, ...] = ()) -> list[tuple]:
    """The table's rows (without ``drop``) as sorted tuples: whole-table comparisons."""
    df = lake.read(spark, settings, table)
    df = df.select(*[F.to_json(F.col(c)).alias(c) if df.schema[c].dataType.typeName() in ("map", "array") else c
                     for c in df.columns if c not in drop])
    return sorted((tuple(r) for r in df.collect()), key=repr)


# The figures the README's Reliability section quotes, summed over the tests that ran
# (printed at the end of the run by tests/reliability/conftest.py).
FIGURES: dict[str, int] = {}


def tally(name: str, value: int) -> int:
    FIGURES[name] = FIGURES.get(name, 0) + int(value)
    return int(value)


def differences(a: list, b: list) -> int:
    """Rows in one list and not the other, duplicates counted: 0 means equal tables."""
    ca, cb = Counter(a), Counter(b)
    return sum(((ca - cb) + (cb - ca)).values())


def assert_same_table(spark, settings, reference, table, drop: tuple[str, ...] = ()) -> None:
    """The table in ``settings``' lake equals the one in ``reference``'s, row for row."""
    got, want = rows_of(spark, settings, table, drop), rows_of(spark, reference, table, drop)
    n = tally("rerun differences", differences(got, want))
    tally("rows compared", len(want))
    assert n == 0, (table.qualified, n, sorted(set(got) ^ set(want), key=repr)[:5])
    assert want, f"{table.qualified} is empty: nothing was compared"


def assert_unique_keys(spark, settings, table) -> None:
    """No key twice in the table."""
    df = lake.read(spark, settings, table)
    n = tally("duplicates", df.count() - df.select(*table.keys).distinct().count())
    assert n == 0, f"{table.qualified}: {n} duplicate keys"


def job_command(module: str, lake_root: Path, *overrides: str) -> list[str]:
    """``python -m jobs.<module>`` on ``lake_root`` with the tests' small-session settings."""
    cmd = [sys.executable, "-m", f"jobs.{module}"]
    for o in (*TEST_OVERRIDES, f"lake.root={lake_root}", *overrides):
        cmd += ["--set", o]
    return cmd


def child_env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
