"""The benchmark's data preparation: which stages a selection needs, and resuming after a stop.

Timings are never asserted here; the stage bodies are stand-ins that record their calls."""
import json

import pytest

from bench import run as bench


def test_a_selection_prepares_only_as_far_as_its_comparisons_read():
    assert bench.stages_needed(["ingest"]) == ("generate",)
    assert bench.stages_needed(["aggregate"]) == ("generate", "ingest", "refine", "aggregate")
    assert bench.stages_needed(["kmeans", "ingest"]) == ("generate", "ingest", "refine", "aggregate")
    assert bench.stages_needed(["scoring"])[-1] == "train"
    # every comparison: the whole pipeline, score included, for end-to-end events per second
    assert bench.stages_needed(list(bench.BENCHES)) == bench.PIPELINE


class Stop(Exception):
    pass


def bodies(calls, stop_in=None):
    def body(name):
        def run(spark, settings, summary):
            calls.append(name)
            if name == stop_in:
                raise Stop(name)
            if name == "score":
                raise FileNotFoundError("no @champion for x in sqlite:////somewhere/bench/data/1e8/lake/mlflow.db")
            return summary
        return run
    return {name: body(name) for name in bench.PIPELINE}


class Silver:
    def count(self):
        return 1000


@pytest.fixture
def fake_silver(monkeypatch):
    from jobs import lake
    monkeypatch.setattr(lake, "exists", lambda spark, settings, table: True)
    monkeypatch.setattr(lake, "read", lambda spark, settings, table: Silver())
    monkeypatch.setattr(bench, "timed", lambda fn: (10.0, fn()))  # every stage "takes" 10 s


def test_a_stopped_preparation_resumes_at_the_stage_it_stopped_in_and_does_not_count_it(tmp_path, fake_silver):
    calls = []
    with pytest.raises(Stop):
        bench.prepare(None, None, tmp_path, bench.stages_needed(["aggregate"]), bodies(calls, stop_in="refine"))
    state = json.loads((tmp_path / "prepared.json").read_text())
    assert list(state["stage_seconds"]) == ["generate", "ingest"] and state["running"] == "refine"

    calls.clear()
    info = bench.prepare(None, None, tmp_path, bench.PIPELINE, bodies(calls))
    assert calls == ["refine", "aggregate", "personas", "train", "score"]  # finished stages are not rerun
    assert info["resumed"] == ["refine"] and "running" not in info
    assert info["stage_seconds"]["score"] is None and "no @champion" in info["notes"]["score"]

    assert info["silver_events"] == 1000
    summary = bench.pipeline_summary(info)
    assert summary["stages_counted"] == ["ingest", "aggregate", "personas", "train"]
    assert summary["stages_missing"] == ["refine", "score"]
    assert summary["pipeline_seconds"] == 40 and summary["events_per_second"] == 25
    assert "/somewhere/" not in summary["notes"]["score"]  # no machine paths in results

    calls.clear()
    again = bench.prepare(None, None, tmp_path, bench.PIPELINE, bodies(calls))
    assert calls == [] and again["stage_seconds"] == info["stage_seconds"]
