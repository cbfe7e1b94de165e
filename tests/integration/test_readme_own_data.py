"""README "Use your own data", followed as written: its mapping file verbatim, its commands run in
fresh processes from the project folder (with $HOME pointing at a scratch folder that holds a
purchase log written by hand). Slow: three fresh Spark processes and a whole pipeline.

This is also the suite's whole-pipeline run on a purchase-only export (1997 dates, USD, no
creators, no account export, mappings outside the repo): it checks what the run left out and
why, and that no demo platform appears."""
import os
import re
import subprocess

import pytest

from core.settings import PROJECT_ROOT
from tests.exports import purchase_log
from tests.integration.test_own_exports import DEMO

pytestmark = pytest.mark.slow


def section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    return text[start:text.index("\n## ", start + 1)]


def test_the_own_data_walkthrough_runs_as_written(tmp_path):
    readme = section((PROJECT_ROOT / "README.md").read_text(encoding="utf-8"), "Use your own data")
    blocks = re.findall(r"```(\w*)\n(.*?)```", readme, re.S)
    mapping = next(body for lang, body in blocks if lang == "yaml")
    commands = [line for lang, body in blocks if lang == "bash" for line in body.splitlines()
                if line.startswith(".venv/bin/ipsynergy ")]
    assert [c.split()[1] for c in commands] == ["check", "pipeline", "refine"]
    # GIVEN the layout the README shows, under a scratch $HOME
    purchase_log(tmp_path / "cdstore" / "exports", customers=40, weeks=30)  # enough history for the defaults
    dates = [line.split(",")[2] for line in (tmp_path / "cdstore" / "exports" / "cdstore" / "events" / "transactions.csv")
             .read_text(encoding="utf-8").splitlines()[1:]]
    last = max(dates)  # yyyyMMdd: the run date the pipeline must take from the data
    target = mapping.splitlines()[0].removeprefix("# ").replace("$HOME", str(tmp_path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w", encoding="utf-8") as fh:
        fh.write(mapping)
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("IPSYNERGY_LAKE_ROOT", None)
    # WHEN each command runs as written THEN each succeeds
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    check, run, replay = outputs
    assert "feeds: personas yes; revenue forecasts yes" in check
    assert f"run date {last[:4]}-{last[4:6]}-{last[6:]}" in run and "users scored" in run
    assert not [demo for demo in DEMO if demo in run]
    # the closing summary names what the data could not support, and why
    for skipped in ("no account export: identity stitching skipped",
                    "creator_platform_revenue skipped: the events name no creator",
                    "synergy and expansion skipped",
                    "features left out (null or one value for every user): watch_hours",
                    "user_revenue: features left out (missing or one value in every training row):"):
        assert skipped in run, skipped
    assert "nothing to replay" in replay
    assert (tmp_path / "cdstore" / "lake" / "gold" / "user_revenue_scores").is_dir()
