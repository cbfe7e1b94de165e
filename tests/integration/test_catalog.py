"""The lake in the Spark catalog: any session built for a lake names its tables <layer>.<name>
(not only the session that wrote them), the lake opened or written last wins a name, and
`ipsynergy sql` and `ipsynergy export` read the lake through those names and contracts.

Tiny hand-written tables (a few rows through core.lake), no pipeline run."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.errors import AnalysisException

from core import lake
from core.errors import ConfigError
from core.session import build_session
from core.settings import LAKE_ROOT_ENV, PROJECT_ROOT
from core.tables import ALL_TABLES, EVENTS, IDENTITY_MAP, QUARANTINE
from jobs import cli, export, sql
from jobs.cli import Summary
from tests.conftest import TEST_OVERRIDES, make_settings

# Lake A's events per platform: what every query over silver.events must count.
EVENTS_PER_PLATFORM = {"bilibili": 1, "douyin": 3, "xiaohongshu": 2}
# Lake A's quarantine: reasons, and raw text that a CSV must quote (comma, quotes, a line
# break, Chinese) or leave empty (null).
QUARANTINED = [(["malformed"], '{"id": 1, "title": "知识, \\"付费\\""'), (["malformed"], "line one\nline two"),
               (["bad_type", "missing_field"], None)]


def event_rows(per_platform: dict[str, int]) -> list[tuple]:
    rows = []
    for platform, n in per_platform.items():
        for i in range(n):
            ts = dt.datetime(2026, 6, 1 + i, 12, 30)
            row = {"event_key": f"{platform}:e{i}", "platform": platform, "source_event_id": f"e{i}",
                   "account_id": f"a{i}", "user_id": f"u{i}", "content_id": f"c{i}", "creator_id": None,
                   "category": None, "event_type": "purchase" if i == 0 else "view", "event_ts": ts,
                   "event_date": ts.date(), "duration_s": 12.5 if i else None, "progress": None,
                   "amount": Decimal("9.90") if i == 0 else Decimal("0.00"), "amount_orig": None,
                   "currency_orig": None, "is_recommended": i % 2 == 1, "campaign_id": None, "session_id": None,
                   "ingest_batch_id": "b1", "source_file": f"raw/{platform}/events/part-0.jsonl"}
            rows.append(tuple(row[f.name] for f in EVENTS.schema.fields))
    return rows


def identity_rows(accounts: list[str]) -> list[tuple]:
    return [("douyin", account, f"user-{account}", 1) for account in accounts]


def sets(settings) -> list[str]:
    """The --set options of a job run on the test session's settings and this lake."""
    return [arg for value in (*TEST_OVERRIDES, f"lake.root={settings.lake_root}") for arg in ("--set", value)]


def bare(spark, query: str) -> list[tuple]:
    return sorted(tuple(r) for r in spark.sql(query).collect())


@pytest.fixture(scope="module", autouse=True)
def catalog_as_found(spark):
    """These tests point the session's names at their own lakes: afterwards every name points
    where it did before (the session is shared; other modules query by name)."""
    layers = dict.fromkeys(t.layer for t in ALL_TABLES)
    before = {name: r for layer in layers for name, r in lake._registrations(spark, layer).items()}
    yield
    after = {name: r for layer in layers for name, r in lake._registrations(spark, layer).items()}
    for name in {*before, *after}:
        if before.get(name) == after.get(name):
            continue
        if name in after:
            spark.sql(f"DROP TABLE {name}")  # external: the files stay
        if name in before:
            spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION '{before[name].location}'")


@pytest.fixture(scope="module")
def lake_a(spark, tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("catalog") / "lake")
    lake.overwrite(spark, settings, EVENTS, spark.createDataFrame(event_rows(EVENTS_PER_PLATFORM), EVENTS.schema))
    quarantine = [("douyin", "raw/douyin/events/part-0.jsonl", i + 1, raw, reasons, "b1")
                  for i, (reasons, raw) in enumerate(QUARANTINED)]
    lake.overwrite(spark, settings, QUARANTINE, spark.createDataFrame(quarantine, QUARANTINE.schema))
    return settings


def catalog_snippet() -> tuple[str, str]:
    """(document, code) of the first python block of the README, else of docs/tables.md, that
    builds a session and counts silver.events per platform: the snippet people copy."""
    for doc in ("README.md", "docs/tables.md"):
        for block in re.findall(r"```python\n(.*?)```", (PROJECT_ROOT / doc).read_text(encoding="utf-8"), re.S):
            if "build_session" in block and "from silver.events group by platform" in block:
                return doc, block
    raise AssertionError("no python block of README.md or docs/tables.md queries silver.events by platform")


def shown_tables(out: str) -> list[list[list[str]]]:
    """The tables DataFrame.show() printed: each a list of rows (header first) of cell texts."""
    blocks = re.findall(r"^\+[-+]+\+\n((?:\|.*\|\n)+)\+[-+]+\+\n((?:\|.*\|\n)*)\+[-+]+\+$", out, re.M)
    return [[[c.strip() for c in line.strip()[1:-1].split("|")] for line in (head + body).splitlines()]
            for head, body in blocks]


def printed_rows(out: str) -> list[list[str]]:
    """The rows (header first) of the table `ipsynergy sql` printed."""
    return [[c.strip() for c in line[1:-1].split(" | ")] for line in out.splitlines() if line.startswith("| ")]


def test_a_new_process_runs_the_documented_query_by_table_name(lake_a):
    """The session of another process, which wrote nothing, answers the documented snippet."""
    doc, code = catalog_snippet()
    env = {**os.environ, LAKE_ROOT_ENV: lake_a.lake_root}
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{doc}'s snippet failed:\n{done.stderr[-3000:]}"
    tables = shown_tables(done.stdout)
    assert tables, done.stdout
    header, *rows = tables[0]
    assert header == ["platform", "count(1)"]
    assert {platform: int(n) for platform, n in rows} == EVENTS_PER_PLATFORM
    if len(tables) > 1 and tables[1][0][0] == "reasons":  # the quarantine query beside it
        cut = [t if len(t) <= 20 else t[:17] + "..." for t in ("[malformed]", "[bad_type, missing_field]")]
        assert {r: int(n) for r, n in tables[1][1:]} == dict(zip(cut, (2, 1)))  # show() cuts cells at 20


def test_the_lake_written_or_opened_last_has_the_names_and_the_other_keeps_its_files(spark, tmp_path):
    a, b, empty = (make_settings(tmp_path / name) for name in ("a", "b", "empty"))
    idm = "select account_id from silver.identity_map"
    lake.overwrite(spark, a, IDENTITY_MAP, spark.createDataFrame(identity_rows(["a1", "a2"]), IDENTITY_MAP.schema))
    assert bare(spark, idm) == [("a1",), ("a2",)]
    a_files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "a").rglob("*"))

    # writing lake B re-points the name (before: the first lake registered kept it)
    lake.overwrite(spark, b, IDENTITY_MAP, spark.createDataFrame(identity_rows(["b1"]), IDENTITY_MAP.schema))
    assert bare(spark, idm) == [("b1",)]
    location = lake._registrations(spark, "silver", "identity_map")["silver.identity_map"].location
    assert location == f"file:{lake.path_of(b, IDENTITY_MAP)}"
    # lake A lost only the name: every file of it is still there, and it reads as before
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "a").rglob("*")) == a_files
    assert sorted(r.account_id for r in lake.read(spark, a, IDENTITY_MAP).collect()) == ["a1", "a2"]

    # a session built for lake A (the start-up registration) gives A the name back
    build_session(a)
    assert bare(spark, idm) == [("a1",), ("a2",)]
    # one built for a lake without the table drops the name: a query fails, it reads no other lake
    build_session(empty)
    with pytest.raises(AnalysisException, match="TABLE_OR_VIEW_NOT_FOUND"):
        spark.sql(idm).collect()
    assert sorted(r.account_id for r in lake.read(spark, b, IDENTITY_MAP).collect()) == ["b1"]
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "a").rglob("*")) == a_files


def test_a_name_left_on_a_deleted_lake_does_not_stop_the_next_write(spark, tmp_path):
    """A lake deleted to start afresh leaves its names in the session; the next write takes them."""
    import shutil

    gone, fresh = make_settings(tmp_path / "gone"), make_settings(tmp_path / "fresh")
    lake.overwrite(spark, gone, IDENTITY_MAP, spark.createDataFrame(identity_rows(["g1"]), IDENTITY_MAP.schema))
    shutil.rmtree(tmp_path / "gone")
    lake.overwrite(spark, fresh, IDENTITY_MAP, spark.createDataFrame(identity_rows(["f1"]), IDENTITY_MAP.schema))
    assert bare(spark, "select account_id from silver.identity_map") == [("f1",)]


def test_dropping_a_registered_table_never_deletes_its_files(spark, lake_a):
    build_session(lake_a)
    table_dir = Path(lake.path_of(lake_a, QUARANTINE))
    files = sorted(p.relative_to(table_dir) for p in table_dir.rglob("*"))
    assert any(p.suffix == ".parquet" for p in files) and any(p.parts[0] == "_delta_log" for p in files)
    assert lake._registrations(spark, "silver", "quarantine")["silver.quarantine"].external

    spark.sql("DROP TABLE silver.quarantine")
    assert not spark.catalog.tableExists("silver.quarantine")
    assert sorted(p.relative_to(table_dir) for p in table_dir.rglob("*")) == files
    lake.register(spark, lake_a, QUARANTINE)
    assert spark.sql("select count(*) from silver.quarantine").first()[0] == len(QUARANTINED)


def test_sql_prints_the_query_result_as_a_table(lake_a, capsys):
    query = "select platform, count(*) as events from silver.events group by platform order by platform"
    assert cli.main(["sql", query, *sets(lake_a)]) == 0
    header, *rows = printed_rows(capsys.readouterr().out)
    assert header == ["platform", "events"]
    assert {platform: int(n) for platform, n in rows} == EVENTS_PER_PLATFORM

    # --limit: the first rows, and a line saying there are more
    assert cli.main(["sql", query, "--limit", "2", *sets(lake_a)]) == 0
    out = capsys.readouterr().out
    assert [r[0] for r in printed_rows(out)[1:]] == ["bilibili", "douyin"] and "only the first 2 rows" in out


def test_the_sql_prompt_runs_each_statement_up_to_its_semicolon(spark, lake_a, capsys):
    typed = io.StringIO("select count(*) as n\n  from silver.events;\nselect * from silver.nope;\n"
                        "select max(amount) as top from silver.events;\nquit\nselect 1;\n")
    build_session(lake_a)  # the names are lake A's whatever ran before
    summary = sql.execute(spark, lake_a, Summary("sql"), stream=typed)
    captured = capsys.readouterr()
    assert printed_rows(captured.out) == [["n"], [str(sum(EVENTS_PER_PLATFORM.values()))], ["top"], ["9.90"]]
    assert "TABLE_OR_VIEW_NOT_FOUND" in captured.err and "silver.events" in captured.err  # and it went on
    assert summary.counts["statements"] == 2  # nothing after quit


def test_sql_names_the_lake_tables_for_an_unknown_one_and_refuses_writes(spark, lake_a, capsys):
    assert cli.main(["sql", "select * from gold.synergy", *sets(lake_a)]) == 3
    err = capsys.readouterr().err
    assert "TABLE_OR_VIEW_NOT_FOUND" in err and "silver.events, silver.quarantine" in err
    assert cli.main(["sql", "delete from silver.events", *sets(lake_a)]) == 5
    assert "only reads" in capsys.readouterr().err
    assert lake.row_count(spark, lake_a, EVENTS) == sum(EVENTS_PER_PLATFORM.values())


def test_export_csv_is_one_file_with_a_header_and_the_table_rows(spark, lake_a, tmp_path, capsys):
    out = tmp_path / "exports" / "quarantine.csv"
    assert cli.main(["export", "silver.quarantine", "--format", "csv", "--out", str(out), *sets(lake_a)]) == 0
    assert "rows exported" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["quarantine.csv"]  # no part folder, no .crc left
    with out.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    assert header == [f.name for f in QUARANTINE.schema.fields]
    expected = [[r.platform, r.source_file, str(r.source_position), r.raw or "",
                 json.dumps(r.reasons, separators=(",", ":")), r.ingest_batch_id]
                for r in lake.read(spark, lake_a, QUARANTINE).collect()]
    assert sorted(rows) == sorted(expected) and len(rows) == len(QUARANTINED)

    # an existing --out is replaced only when asked
    assert cli.main(["export", "silver.quarantine", "--out", str(out), *sets(lake_a)]) == 5
    assert "--force" in capsys.readouterr().err


def test_export_parquet_keeps_the_table_rows_and_types(spark, lake_a, tmp_path):
    out = tmp_path / "events"
    assert cli.main(["export", "silver.events", "--format", "parquet", "--out", str(out), *sets(lake_a)]) == 0
    exported = pq.read_table(out)
    assert exported.column_names == [f.name for f in EVENTS.schema.fields]
    got = sorted((r["event_key"], r["amount"], r["event_date"], r["is_recommended"]) for r in exported.to_pylist())
    table = sorted((r.event_key, r.amount, r.event_date, r.is_recommended)
                   for r in lake.read(spark, lake_a, EVENTS).collect())
    assert got == table and len(got) == sum(EVENTS_PER_PLATFORM.values())
    assert {r[1] for r in got} == {Decimal("9.90"), Decimal("0.00")}


def test_export_of_an_unknown_table_lists_the_known_ones(spark, lake_a, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown table 'gold\.synergy'.*gold\.synergy_scores"):
        export.execute(spark, lake_a, Summary("export"), table="gold.synergy", fmt="csv", out=str(tmp_path / "x.csv"))
    assert cli.main(["export", "events", "--out", str(tmp_path / "x.csv"), *sets(lake_a)]) == 2
    assert "unknown table 'events'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
