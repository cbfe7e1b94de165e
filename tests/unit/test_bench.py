"""The benchmark's data preparation: which stages a selection needs, and resuming after a stop.

Timings are never asserted here; the stage bodies are stand-ins that record their calls."""
import json

import pytest

from bench import run as bench
from core.errors import MissingInput
from jobs import STAGES


def test_a_selection_prepares_only_as_far_as_its_comparisons_read():
    assert set(bench.NEEDS) == set(bench.BENCHES)  # a new comparison must say what it reads
    assert bench.stages_needed(["ingest"]) == ("generate",)
    assert bench.stages_needed(["aggregate"]) == ("generate", "ingest", "refine", "aggregate")
    assert bench.stages_needed(["kmeans", "ingest"])[-1] == "personas"  # the k that personas chose
    assert bench.stages_needed(["scoring"])[-1] == "train"
    # every comparison: the whole pipeline, score included, for end-to-end events per second
    assert bench.stages_needed(list(bench.BENCHES)) == STAGES


class Stop(Exception):
    pass


class Lake:
    """silver.events appears once refine has run; its count changes with each refine."""

    def __init__(self):
        self.refined = 0

    def exists(self, spark, settings, table):
        return self.refined > 0

    def read(self, spark, settings, table):
        return self

    def count(self):
        return 1000 * self.refined


def bodies(calls, lake, stop_in=None):
    def body(name):
        def run(spark, settings, summary):
            calls.append(name)
            if name == stop_in:
                raise Stop(name)
            if name == "refine":
                lake.refined += 1
            if name == "score":
                raise MissingInput("no @champion for x in sqlite:////somewhere/bench/data/1e8/lake/mlflow.db")
            return summary
        return run
    return {name: body(name) for name in STAGES}


@pytest.fixture
def lake(monkeypatch):
    from core import lake as real
    fake = Lake()
    monkeypatch.setattr(real, "exists", fake.exists)
    monkeypatch.setattr(real, "read", fake.read)
    monkeypatch.setattr(bench, "timed", lambda fn: (10.0, fn()))  # every stage "takes" 10 s
    return fake


def test_a_stopped_preparation_resumes_at_the_stage_it_stopped_in_and_does_not_count_it(tmp_path, lake):
    calls = []
    with pytest.raises(Stop):
        bench.prepare(None, None, tmp_path, bench.stages_needed(["aggregate"]), bodies(calls, lake, stop_in="refine"))
    state = json.loads((tmp_path / "prepared.json").read_text())
    assert list(state["stage_seconds"]) == ["generate", "ingest"] and state["running"] == "refine"
    assert "silver_events" not in state  # no silver yet

    calls.clear()
    info = bench.prepare(None, None, tmp_path, STAGES, bodies(calls, lake))
    assert calls == ["refine", "aggregate", "personas", "train", "score"]  # finished stages are not rerun
    assert info["resumed"] == ["refine"] and "running" not in info
    assert info["silver_events"] == 1000  # counted when refine finished
    assert info["stage_seconds"]["score"] is None and "no @champion" in info["notes"]["score"]
    assert json.loads((tmp_path / "prepared.json").read_text()) == info

    summary = bench.pipeline_summary(info)
    assert summary["stages_counted"] == ["ingest", "aggregate", "personas", "train"]
    assert summary["stages_missing"] == ["refine", "score"]
    assert summary["pipeline_seconds"] == 40 and summary["events_per_second"] == 25
    assert "/somewhere/" not in summary["notes"]["score"]  # no machine paths in results
    text = bench.table({"results": [], "session_startup_s": 1.0, "pipeline": summary})
    assert "refine 10 s (resumed)" in text and "refine (resumed after an interruption)" in text

    calls.clear()
    again = bench.prepare(None, None, tmp_path, STAGES, bodies(calls, lake))
    assert calls == [] and again["stage_seconds"] == info["stage_seconds"]


def test_a_marker_from_before_resuming_existed_reads_as_a_finished_preparation(tmp_path, lake):
    old = {"silver_events": 600, "stage_seconds": {s: 1.0 for s in STAGES}, "notes": {}, "load_avg_1m": 2.0}
    (tmp_path / "prepared.json").write_text(json.dumps(old))
    calls = []
    info = bench.prepare(None, None, tmp_path, STAGES, bodies(calls, lake))
    assert calls == [] and bench.pipeline_summary(info)["events_per_second"] == 100  # 600 events in 6 s


def test_the_btyd_comparison_draws_its_own_customers_and_prepares_nothing():
    assert bench.stages_needed(["btyd"]) == ()
    drawn = bench.btyd_customers(20_000, seed=1)
    assert len(drawn) == 20_000 and drawn["customer_id"].is_unique
    assert (drawn["recency"] <= drawn["T"]).all() and (drawn["frequency"] >= 0).all()
    assert ((drawn["monetary_value"] > 0) == (drawn["frequency"] > 0)).all()
    # the mean number of repeat purchases is BG/NBD's own E[X(T)] (Fader, Hardie & Lee 2005, eq. 9)
    from scipy.special import hyp2f1

    k = bench.BTYD_TRUTH
    t = drawn["T"].to_numpy()
    expected = (k["a"] + k["b"] - 1) / (k["a"] - 1) * (
        1 - (k["alpha"] / (k["alpha"] + t)) ** k["r"] * hyp2f1(k["r"], k["b"], k["a"] + k["b"] - 1, t / (k["alpha"] + t)))
    assert drawn["frequency"].mean() == pytest.approx(expected.mean(), rel=0.05)
