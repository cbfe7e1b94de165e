"""Your own exports, end to end: the whole pipeline (generate excluded) on exports written by hand
that look nothing like the generator's, in a platforms folder outside the repo. The run ends
with a score for every user, no demo platform anywhere, and a summary naming what it skipped.
Then: the check command on a good mapping and three broken ones, and a replay after a fix."""
import datetime as dt
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from core import lake, tracking
from core.errors import InputRejected
from core.tables import EVENTS, QUARANTINE, REFINE_LOG, USER_FEATURES, USER_REVENUE_SCORES
from jobs import check, ingest, pipeline, refine
from jobs.cli import Summary
from tests.conftest import make_settings
from tests.exports import course_events, gb18030_orders, purchase_log, write_mapping

DEMO = ("zhixue", "tingshu", "ketang", "globalearn")
# Tiny exports, quick models: a handful of personas, two folds, a small network.
QUICK = ["personas.k_min=2", "personas.k_max=2", "personas.restarts=1", "train.folds=2", "train.windows=2",
         "train.min_history_days=30", "train.net.hidden=[8]", "train.net.max_epochs=8", "train.net.patience=3",
         "gold.lookback_days=60"]


def run_pipeline(spark, tmp_path, write, *overrides):
    exports, platforms = tmp_path / "exports", tmp_path / "my-platforms"
    mapping = write(exports)
    write_mapping(platforms, mapping)
    settings = make_settings(tmp_path / "lake", f"platforms_dir={platforms}", *QUICK, *overrides)
    summary = pipeline.execute(spark, settings, Summary("pipeline"), input_root=str(exports), as_of_given=False)
    return settings, summary, mapping["name"]


def run_date_of(summary) -> dt.date:
    line = next(n for n in summary.notes if n.startswith("run date "))
    return dt.date.fromisoformat(line.split()[2])


def assert_scored_and_only_mine(spark, settings, summary, platform):
    as_of = run_date_of(summary)
    # the run date follows the data: the last event date refine kept
    assert as_of == lake.read(spark, settings, EVENTS).agg(F.max("event_date")).first()[0]
    users = lake.read(spark, settings, USER_FEATURES).where(F.col("as_of_date") == F.lit(as_of))
    scores = lake.read(spark, settings, USER_REVENUE_SCORES).where(F.col("as_of_date") == F.lit(as_of))
    # a score for every user, exactly once
    assert scores.count() == users.count() > 0
    assert scores.join(users, "user_id", "left_anti").count() == 0
    assert scores.where(F.col("predicted_revenue").isNull()).count() == 0
    # no demo platform in any table, summary or report
    root = Path(settings.lake_root)
    for layer in ("bronze", "silver", "gold"):
        for folder in (root / layer).iterdir():
            df = spark.read.format("delta").load(str(folder))
            if "platform" in df.columns:
                assert {r.platform for r in df.select("platform").distinct().collect()} <= {platform}, folder.name
    text = summary.render() + next((root / "reports").glob("*.html")).read_text()
    assert not [d for d in DEMO if d in text]
    # always a champion to score with, and the summary says which model won
    name = tracking.model_name(settings, "user_revenue")
    winner = MlflowClient().get_model_version_by_alias(name, "champion").tags["candidate"]
    assert f"({winner}): Gini" in text
    return as_of


# A whole run takes two to three minutes (mostly Spark's fixed cost per stage and table), so the
# slow suite (make test-slow, CI) runs one here, on the JSON export; the purchase-only export's
# whole run is the README walkthrough's
# (test_readme_own_data.py). make test checks the GB18030 export through ingest and refine (where
# its encoding matters), the check command, and a replay, below.
@pytest.mark.slow
def test_single_platform_json_without_a_recommendation_funnel(spark, tmp_path):
    settings, summary, platform = run_pipeline(spark, tmp_path, course_events)
    assert_scored_and_only_mine(spark, settings, summary, platform)
    text = summary.render()
    assert "features left out (null or one value for every user): " in text and "rec_ctr" in text
    assert "no account export: identity stitching skipped" in text


def assert_decoded_and_reconciled(spark, settings, tmp_path, platform):
    # the Chinese text arrives decoded; blank lines and the header are not records
    silver = lake.read(spark, settings, EVENTS)
    assert {r.category for r in silver.select("category").distinct().collect()} == {"历史", "理财"}
    assert {r.event_type for r in silver.select("event_type").distinct().collect()} == {"view", "purchase"}
    assert lake.read(spark, settings, QUARANTINE).count() == 0
    lines = (tmp_path / "exports" / platform / "events" / "订单.csv").read_bytes().decode("gb18030").splitlines()
    records = [x for x in lines[1:] if x.strip()]
    log = lake.read(spark, settings, REFINE_LOG).first()
    assert (log.records_read, log.new_rows, log.quarantined, log.duplicates) == (len(records), len(records), 0, 0)


def test_gb18030_csv_is_ingested_and_refined_whole(spark, tmp_path):
    exports, platforms = tmp_path / "exports", tmp_path / "my-platforms"
    mapping = gb18030_orders(exports)
    write_mapping(platforms, mapping)
    settings = make_settings(tmp_path / "lake", f"platforms_dir={platforms}", "as_of=2025-12-31")
    ingest.execute(spark, settings, Summary("ingest"), input_root=str(exports))
    summary = refine.execute(spark, settings, Summary("refine"))
    assert_decoded_and_reconciled(spark, settings, tmp_path, mapping["name"])
    assert "no account export: identity stitching skipped" in summary.render()


# -- the check command ---------------------------------------------------------------------
@pytest.fixture
def exports(tmp_path):
    root, platforms = tmp_path / "exports", tmp_path / "platforms"
    return root, platforms, course_events(root, users=6, days=20)


def run_check(capsys, exports, tmp_path):
    root, platforms, _ = exports
    code = check.main(["--input", str(root), "--platforms", str(platforms), "--set", f"lake.root={tmp_path}/lake"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_reports_a_good_mapping_and_writes_nothing(capsys, exports, tmp_path):
    root, platforms, mapping = exports
    write_mapping(platforms, mapping)
    code, text = run_check(capsys, exports, tmp_path)
    assert code == 0
    assert "xuetang: 1 events file(s)" in text and "would be quarantined" in text and "dates 2025-03-" in text
    assert "feeds: personas yes; revenue forecasts yes; creator x platform model and expansion yes; synergy Q and " \
           "E no (needs creator_id and impression/click events); identity stitching no" in text
    assert not (tmp_path / "lake").exists()


def test_check_names_the_file_and_key_of_a_field_that_is_not_a_column(capsys, exports, tmp_path):
    root, platforms, _ = exports
    broken = purchase_log(root, customers=3, name="shop")
    broken["events"]["fields"]["amount"] = "price"  # the column is called dollars
    write_mapping(platforms, broken)
    code, text = run_check(capsys, exports, tmp_path)
    assert code == 2  # a configuration error: nothing was read
    assert "shop.yaml" in text and "events.fields refer to columns not in events.columns: ['price']" in text


def test_check_shows_a_wrong_timestamp_format_with_an_example_and_the_fix(capsys, exports, tmp_path):
    root, platforms, mapping = exports
    mapping["events"]["timestamp"] = {"format": "yyyy-MM-dd HH:mm:ss"}  # the data is ISO 8601 with an offset
    write_mapping(platforms, mapping)
    code, text = run_check(capsys, exports, tmp_path)
    assert code == InputRejected.exit_code  # read and refused: 5
    assert "bad_timestamp" in text and "e.g. 2025-spring.jsonl line 1:" in text
    assert "fix: events.timestamp.format in the mapping" in text
    assert "problem: xuetang:" in text and "would be quarantined" in text


def test_check_names_a_missing_required_field(capsys, exports, tmp_path):
    root, platforms, mapping = exports
    del mapping["events"]["fields"]["account_id"]
    write_mapping(platforms, mapping)
    code, text = run_check(capsys, exports, tmp_path)
    assert code == 2
    assert "xuetang.yaml" in text and "required fields missing: ['account_id']" in text


# -- replay after a fix --------------------------------------------------------------------
def test_a_whole_export_quarantined_by_its_timestamp_format_is_replayed_once_after_the_fix(spark, tmp_path):
    root, platforms = tmp_path / "exports", tmp_path / "platforms"
    mapping = course_events(root, users=5, days=15)
    good_format = mapping["events"]["timestamp"]
    mapping["events"]["timestamp"] = {"format": "epoch_ms"}
    write_mapping(platforms, mapping)
    settings = make_settings(tmp_path / "lake", f"platforms_dir={platforms}", "as_of=2025-03-31")
    ingest.execute(spark, settings, Summary("ingest"), input_root=str(root))
    # WHEN refine meets the wrong format THEN it stops loudly, naming the reason and the fix
    with pytest.raises(InputRejected, match=r"(?s)100%\) quarantined, mostly bad_timestamp; fix events\.timestamp\.format"):
        refine.execute(spark, settings, Summary("refine"))
    read = lake.read(spark, settings, REFINE_LOG).first().records_read
    assert lake.read(spark, settings, QUARANTINE).count() == read > 0
    # WHEN the mapping is fixed and the quarantine replayed, twice
    mapping["events"]["timestamp"] = good_format
    write_mapping(platforms, mapping)
    fixed = make_settings(tmp_path / "lake", f"platforms_dir={platforms}", "as_of=2025-03-31")
    refine.replay(spark, fixed, Summary("replay"))
    refine.replay(spark, fixed, Summary("replay"))
    # THEN every record is in silver once, none left in quarantine, and reconciliation is exact
    silver = lake.read(spark, fixed, EVENTS)
    assert silver.count() == silver.select("event_key").distinct().count() == read
    assert lake.read(spark, fixed, QUARANTINE).count() == 0
    log = lake.read(spark, fixed, REFINE_LOG).first()
    assert (log.records_read, log.new_rows, log.quarantined, log.duplicates) == (read, read, 0, 0)
    assert log.ingest_batch_id == silver.first().ingest_batch_id
