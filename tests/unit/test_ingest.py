"""Bronze line numbers: each record's 1-based line in its file, whatever the splits and tasks."""
import datetime as dt
import json

import pytest

from core.sources import java_charset
from jobs import ingest as ingest_job
from transforms.ingest import to_bronze


@pytest.fixture
def small_splits(spark):
    spark.conf.set("spark.sql.files.maxPartitionBytes", "2048")  # several splits per file
    yield
    spark.conf.unset("spark.sql.files.maxPartitionBytes")


@pytest.mark.parametrize("partitions", [None, 1, 2, 5])
def test_lines_are_numbered_in_file_order_across_splits_and_tasks(spark, tmp_path, small_splits, partitions):
    files = []
    for f in range(3):
        path = tmp_path / f"part-{f}.jsonl"
        path.write_text("".join(json.dumps({"file": f, "line": i}) + "\n" for i in range(1, 401)))
        files.append(str(path))
    raw = ingest_job.read_records(spark, files, "text")
    assert raw.rdd.getNumPartitions() > len(files)  # the files really are split
    rows = to_bronze(raw, "p", "json", "b", dt.datetime(2026, 1, 1), partitions=partitions) \
        .select("source_file", "source_position", "raw").collect()
    assert len(rows) == 1200
    wrong = [r for r in rows if json.loads(r.raw)["line"] != r.source_position
             or not r.source_file.endswith(f"part-{json.loads(r.raw)['file']}.jsonl")]
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "latin-1", "gb18030", "cp1252"])
def test_exports_in_other_encodings_arrive_as_text_without_bom_or_blank_lines(spark, tmp_path, encoding):
    # GIVEN a CSV written by hand in another encoding: a byte-order mark where the encoding has
    # one, Windows line ends, blank and whitespace-only lines, non-ASCII text
    text = "名字,城市" if encoding in ("utf-16", "utf-16-le", "gb18030") else "nom,ville"
    body = [text, "Zoë,Köln", "", "   ", "Ana,São Paulo", "\t", "Bjørn,Tromsø"]
    if encoding == "utf-16-le":
        body[0] = "\ufeff" + body[0]  # explicit-endian UTF-16 keeps its BOM as a character
    path = tmp_path / f"people.{encoding}.csv"
    data = "\r\n".join(body) + "\r\n"
    path.write_bytes(("\ufeff" + data if encoding == "gb18030" else data).encode(encoding))
    # WHEN it is read and turned into bronze rows with the mapping's encoding
    rows = to_bronze(ingest_job.read_records(spark, [str(path)], "csv", java_charset(encoding)), "p", "csv", "b", dt.datetime(2026, 1, 1),
                     csv_header=body[0].lstrip("\ufeff")).select("source_position", "raw").orderBy("source_position")
    # THEN each record is its own decoded line, numbered as in the file; the header, the BOM and
    # blank lines are gone
    assert [(r.source_position, r.raw) for r in rows.collect()] == [(2, "Zoë,Köln"), (5, "Ana,São Paulo"),
                                                                     (7, "Bjørn,Tromsø")]
