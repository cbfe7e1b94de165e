"""Bronze line numbers: each record's 1-based line in its file, whatever the splits and tasks."""
import datetime as dt
import json

import pytest

from jobs import ingest as I
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
    raw = I._read(spark, files, "text")
    assert raw.rdd.getNumPartitions() > len(files)  # the files really are split
    rows = to_bronze(raw, "p", "json", "b", dt.datetime(2026, 1, 1), partitions=partitions) \
        .select("source_file", "source_position", "raw").collect()
    assert len(rows) == 1200
    wrong = [r for r in rows if json.loads(r.raw)["line"] != r.source_position
             or not r.source_file.endswith(f"part-{json.loads(r.raw)['file']}.jsonl")]
    assert not wrong, wrong[:3]
