"""Exports written by hand, shaped like real ones and unlike the generator's: other field names,
other encodings, missing optional parts. Each writer lays out <root>/<platform>/events/... and
returns the mapping (a dict, dumped to <platforms>/<platform>.yaml by :func:`write_mapping`).

The purchase log follows the buy-till-you-die process on its own (numpy, fixed seed), not the
suite's generator: customers acquired over the first 12 weeks, each buying at a gamma-
distributed rate until a geometric dropout, spending gamma-distributed amounts."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import yaml

START = dt.date(1997, 1, 1)


def write_mapping(platforms: Path, mapping: dict) -> Path:
    platforms.mkdir(parents=True, exist_ok=True)
    path = platforms / f"{mapping['name']}.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def purchase_log(root: Path, customers: int = 60, weeks: int = 52, seed: int = 3, name: str = "cdstore") -> dict:
    """A CSV of txn_id,customer_id,date(yyyyMMdd),cds,dollars in USD: purchases only, no
    creators, no account export."""
    rng = np.random.default_rng(seed)
    lines = ["txn_id,customer_id,date,cds,dollars"]
    txn = 0
    for c in range(customers):
        first = float(rng.integers(0, 7 * 12))
        rate = rng.gamma(2.0, 1 / 25.0)            # purchases a day while alive
        dropout = rng.beta(1.0, 12.0)             # chance of dropping out after each repeat purchase
        spend = rng.gamma(4.0, 8.0)               # the customer's typical basket
        t, repeat = first, False
        while t < weeks * 7:
            txn += 1
            cds = int(rng.integers(1, 5))
            dollars = round(float(rng.gamma(6.0, spend / 6.0)), 2)
            lines.append(f"{txn},{1000 + c},{(START + dt.timedelta(days=int(t))):%Y%m%d},{cds},{dollars}")
            if repeat and rng.random() < dropout:  # BG/NBD: no dropout right after the first purchase
                break
            t += rng.exponential(1 / rate)
            repeat = True
    folder = root / name / "events"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transactions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"name": name, "format": "csv",
            "events": {"columns": ["txn_id", "customer_id", "date", "cds", "dollars"],
                       "fields": {"source_event_id": "txn_id", "account_id": "customer_id",
                                  "event_type": {"const": "purchase"}, "event_ts": "date", "amount": "dollars",
                                  "currency": {"const": "USD"}},
                       "timestamp": {"format": "yyyyMMdd"}}}


def course_events(root: Path, users: int = 36, days: int = 120, seed: int = 5, name: str = "xuetang") -> dict:
    """One platform's JSON lines with nested objects and ISO-8601 times with an offset: views,
    completions, likes and purchases of courses by a few teachers; no recommendation funnel,
    no campaign, no session, no account export."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2025, 3, 1, 8, 0)
    teachers = [("t-wang", "history"), ("t-li", "finance"), ("t-zhao", "history"), ("t-chen", "language")]
    records, n = [], 0
    for u in range(users):
        activity = rng.gamma(2.0, 0.08)
        for day in range(days):
            if rng.random() > activity:
                continue
            teacher, topic = teachers[int(rng.integers(0, len(teachers)))]
            course = f"{teacher}-c{int(rng.integers(0, 3))}"
            at = start + dt.timedelta(days=day, minutes=int(rng.integers(0, 600)))
            acts = ["watch"] + (["finish"] if rng.random() < 0.5 else []) + (["like"] if rng.random() < 0.2 else [])
            acts += ["buy"] if rng.random() < 0.25 else []
            for act in acts:
                n += 1
                rec = {"id": f"x{n}", "who": {"uid": f"stu{u:03d}"}, "act": act,
                       "at": at.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
                       "course": {"id": course, "teacher": teacher, "topic": topic}}
                if act == "watch":
                    rec["secs"] = int(rng.integers(60, 3600))
                if act == "buy":
                    rec["yuan"] = round(float(rng.choice([9.9, 19.9, 49.0, 99.0])), 2)
                records.append(json.dumps(rec, ensure_ascii=False))
    folder = root / name / "events"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "2025-spring.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    return {"name": name, "format": "json",
            "events": {"fields": {"source_event_id": "id", "account_id": "who.uid", "event_type": "act",
                                  "event_ts": "at", "content_id": "course.id", "creator_id": "course.teacher",
                                  "category": "course.topic", "duration_s": "secs", "amount": "yuan",
                                  "currency": {"const": "CNY"}},
                       "timestamp": {"format": "iso8601"},
                       "event_types": {"watch": "view", "finish": "complete", "like": "like", "buy": "purchase"}}}


def gb18030_orders(root: Path, users: int = 30, days: int = 100, seed: int = 9, name: str = "zhishi") -> dict:
    """A Chinese-Windows style CSV: GB18030 with a byte-order mark, CRLF line ends, Chinese
    column names and event names, local Beijing time, blank lines between blocks."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2025, 9, 1, 9, 0)
    header = "编号,用户,时间,行为,课程,讲师,分类,金额"
    lines, n = [header], 0
    for u in range(users):
        for day in range(days):
            if rng.random() > 0.12:
                continue
            n += 1
            at = start + dt.timedelta(days=day, minutes=int(rng.integers(0, 600)))
            act = "购买" if rng.random() < 0.3 else "观看"
            amount = f"{float(rng.choice([29.9, 99.0, 199.0])):.2f}" if act == "购买" else ""
            lines.append(f"{n},用户{u:02d},{at:%Y/%m/%d %H:%M},{act},课{u % 5},讲师{u % 3},{'历史' if u % 2 else '理财'},{amount}")
            if n % 40 == 0:
                lines += ["", "   "]  # blank lines, as exports glued from several blocks have
    folder = root / name / "events"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "订单.csv").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("gb18030"))
    return {"name": name, "format": "csv", "encoding": "gb18030",
            "events": {"columns": ["编号", "用户", "时间", "行为", "课程", "讲师", "分类", "金额"],
                       "fields": {"source_event_id": "编号", "account_id": "用户", "event_ts": "时间",
                                  "event_type": "行为", "content_id": "课程", "creator_id": "讲师",
                                  "category": "分类", "amount": "金额", "currency": {"const": "CNY"}},
                       "timestamp": {"format": "yyyy/MM/dd HH:mm", "timezone": "Asia/Shanghai"},
                       "event_types": {"购买": "purchase", "观看": "view"}}}
