"""spark-submit to a real Spark standalone cluster on 127.0.0.1 (a master and two workers started
by jobs.deploy with the installed pyspark's spark-class, and an `mlflow server`), using only the
artefacts of `make package`: the code zip, the packed environment (which also runs the driver),
the Delta jars and submit.py. The pipeline's tables equal those of a local-mode run on the same
generated input, and a worker killed while a stage runs leaves the result unchanged.

Run by `make test-slow` (which builds the package first)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core import lake
from core.settings import PROJECT_ROOT, load_settings
from core.tables import DATA_TABLES as TABLES
from jobs import deploy
from tests.conftest import make_settings

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

# A third of make run's people over the same 181 days (a 90-day lookback and four training dates
# need them all), two folds, a narrower persona sweep and shorter training: every stage runs,
# scoring and the BTYD fits included, in minutes rather than the default data's quarter hour
# per run. Generated once; both runs read it with --input.
PIPELINE = ["generate.users=1000", "generate.creators=60", "generate.sessions=60000", "train.folds=2",
            "personas.k_max=5", "personas.restarts=1", "train.net.max_epochs=40"]
MIN_EVENTS = 100_000  # what the generated input above must reach in silver.events
# K-means stops once every centre moves less than personas.tol, so the last centres depend on
# float sums whose order follows the partitioning: assignments must be equal, the distances to
# the centres only this close.
RTOL = {"gold.user_personas.distance": 1e-3}
# Columns that differ between two runs by design: wall-clock times, batch and run ids.
RUN_SPECIFIC = {"ingested_at", "ingest_batch_id", "modified_ms", "run_id", "mlflow_run_id"}
LOCAL_SHUFFLE, CLUSTER_SHUFFLE = 4, 8  # different partitionings on purpose
SNAPSHOT_PARTITIONS = "spark.databricks.delta.snapshotPartitions"
LOCAL_CONF = load_settings("local").spark.conf
CLEANUP_AFTER = 10  # seconds: the workers remove a finished application's folders this soon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


@pytest.fixture(scope="module")
def dist() -> Path:
    dist = PROJECT_ROOT / "dist"
    needed = [dist / "ipsynergy.zip", dist / "submit.py", dist / deploy.ENV_ARCHIVE]
    missing = [p.name for p in needed if not p.exists()] + ([] if list((dist / "jars").glob("*.jar")) else ["jars/"])
    if missing:
        pytest.fail(f"missing in dist/: {missing}; run 'make package' (make test-slow does)")
    return dist


@pytest.fixture(scope="module")
def driver_python(dist, tmp_path_factory) -> str:
    """The packed environment, unpacked, runs the driver: nothing of the checkout is used."""
    target = tmp_path_factory.mktemp("driver-env")
    subprocess.run(["tar", "xzf", str(dist / deploy.ENV_ARCHIVE), "-C", str(target)], check=True)
    yield str(target / "bin" / "python")
    shutil.rmtree(target, ignore_errors=True)  # 5 GB


def test_the_packed_environment_carries_no_project_code(driver_python):
    """So the cluster run below can only have used the code in ipsynergy.zip."""
    probe = subprocess.run([driver_python, "-c", "import torch, mlflow, pandas, pyarrow; import jobs"],
                           capture_output=True, text=True, cwd="/")
    assert probe.returncode == 1 and "No module named 'jobs'" in probe.stderr, probe.stderr[-2000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    up = deploy.cluster_up(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="5g",
                           master_port=free_port(), ui_port=free_port(), mlflow_port=free_port(),
                           cleanup_after=CLEANUP_AFTER)
    yield up
    deploy.cluster_down(Path(up.state_dir))
    shutil.rmtree(up.state_dir, ignore_errors=True)  # executors' unpacked environments: GBs


@contextmanager
def submit(cluster, dist, driver_python, job: list[str], workdir: Path, conf: dict[str, str] | None = None):
    """Run one spark-submit from an empty working directory, its output in workdir/submit.log;
    whatever happens, the submission and its driver are gone (and their scratch space) after."""
    # Delta rebuilds a table's snapshot with 50 tasks by default: on two one-core executors and
    # tables of a few files that is most of a stage's time, so the submissions take local mode's
    # setting (conf/local.yaml).
    argv = deploy.submit_argv(cluster.master, job, dist, driver_python,
                              {"spark.driver.host": "127.0.0.1", "spark.executor.memory": "2g",
                               SNAPSHOT_PARTITIONS: LOCAL_CONF[SNAPSHOT_PARTITIONS], **(conf or {})})
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH")}
    workdir.mkdir(parents=True, exist_ok=True)
    env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_DIRS=str(workdir / "spark-local"))
    with (workdir / "submit.log").open("w") as log:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(workdir / "spark-local", ignore_errors=True)


def finish(proc, workdir: Path, timeout: int = 2400) -> str:
    proc.wait(timeout=timeout)
    out = (workdir / "submit.log").read_text()
    assert proc.returncode == 0, f"spark-submit exited {proc.returncode}:\n{out[-6000:]}"
    return out


def table_frame(spark, settings, table) -> pd.DataFrame:
    """A table as pandas, comparable across runs: run-specific columns dropped, the lake root
    replaced by a placeholder, arrays as text, a map as its sorted keys (text) and, if numeric,
    its values (<name>__values, compared with a tolerance), rows in a canonical order."""
    df = lake.read(spark, settings, table)
    df = df.drop(*[c for c in df.columns if c in RUN_SPECIFIC])
    for f in df.schema.fields:
        if isinstance(f.dataType, T.MapType):
            entries = F.array_sort(F.map_entries(f.name))
            if isinstance(f.dataType.valueType, T.NumericType):
                df = df.withColumn(f"{f.name}__values", F.transform(entries, lambda e: e["value"].cast("double")))
                entries = F.transform(entries, lambda e: e["key"])
            df = df.withColumn(f.name, F.to_json(entries))
        elif isinstance(f.dataType, (T.ArrayType, T.StructType)):
            df = df.withColumn(f.name, F.to_json(f.name))
        elif isinstance(f.dataType, T.StringType):
            df = df.withColumn(f.name, F.replace(f.name, F.lit(settings.lake_root), F.lit("<lake>")))
    frame = df.toPandas()
    keys = [c for c in frame.columns if frame[c].dtype.kind not in "fc" and not c.endswith("__values")]
    return frame.sort_values(keys, kind="mergesort", na_position="first").reset_index(drop=True)


def assert_same_tables(spark, ours, reference, tables) -> dict[str, int]:
    counts = {}
    for table in tables:
        a, b = table_frame(spark, ours, table), table_frame(spark, reference, table)
        assert list(a.columns) == list(b.columns), table.qualified
        assert len(a) == len(b), f"{table.qualified}: {len(a)} rows vs {len(b)} in the local run"
        for col in a.columns:
            if col.endswith("__values"):  # a numeric map's values, in key order (keys compared exactly)
                np.testing.assert_allclose(np.concatenate([np.asarray(v, float) for v in a[col]] or [[]]),
                                           np.concatenate([np.asarray(v, float) for v in b[col]] or [[]]),
                                           rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=f"{table.qualified}.{col}")
            elif a[col].dtype.kind in "fc":
                np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float),
                                           rtol=RTOL.get(f"{table.qualified}.{col}", 1e-6), atol=1e-9,
                                           equal_nan=True, err_msg=f"{table.qualified}.{col}")
            else:
                assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), f"{table.qualified}.{col}"
        counts[table.qualified] = len(a)
    return counts


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("input") / "lake"
    run_local(["jobs.generate", *sets([f"lake.root={root}", *PIPELINE])])
    return root / "raw"


def run_local(argv: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", *argv], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=2400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def local_run(raw, tmp_path_factory):
    """The reference: the same pipeline in local mode, from the checkout (python -m jobs.pipeline).
    Its run date is the data's (printed by the pipeline); a single job run on its lake gets it
    with --as-of."""
    root = tmp_path_factory.mktemp("local") / "lake"
    out = run_local(["jobs.pipeline", "--input", str(raw),
                     *sets([f"lake.root={root}", f"spark.shuffle_partitions={LOCAL_SHUFFLE}", *PIPELINE])])
    found = re.search(r"pipeline: run date (\d{4}-\d\d-\d\d)", out)
    assert found, out[-4000:]
    return make_settings(root, *PIPELINE, f"as_of={found[1]}")


@pytest.fixture(scope="module")
def cluster_run(cluster, dist, driver_python, raw, tmp_path_factory):
    work = tmp_path_factory.mktemp("submit")
    root = work / "lake"
    with submit(cluster, dist, driver_python,
                ["pipeline", "--env", "cluster", "--input", str(raw),
                 *sets([f"lake.root={root}", f"mlflow.tracking_uri={cluster.tracking_uri}",
                        f"spark.shuffle_partitions={CLUSTER_SHUFFLE}", *PIPELINE])], work) as proc:
        out = finish(proc, work)
    return make_settings(root, *PIPELINE, f"mlflow.tracking_uri={cluster.tracking_uri}"), out


def test_the_pipeline_on_the_cluster_equals_the_local_run(spark, local_run, cluster_run):
    settings, out = cluster_run
    assert "== jobs.pipeline summary ==" in out
    written = [t for t in TABLES if lake.exists(spark, local_run, t)]
    assert [t for t in TABLES if lake.exists(spark, settings, t)] == written
    counts = assert_same_tables(spark, settings, local_run, written)
    assert counts["silver.events"] > MIN_EVENTS
    assert counts["gold.user_revenue_scores"] > 0 and counts["gold.synergy_scores"] > 0


def test_the_champions_load_from_the_tracking_server(cluster_run, cluster):
    import mlflow

    settings, _ = cluster_run
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(cluster.tracking_uri)
    try:
        for model in ("user_revenue", "creator_platform_revenue"):
            loaded = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.experiment_prefix}-{model}@champion")
            assert loaded.metadata.get_input_schema() is not None
    finally:
        mlflow.set_tracking_uri(previous)
    assert not Path(settings.lake_root, "mlartifacts").exists()  # the server keeps them, not the lake


def test_a_finished_application_leaves_no_unpacked_environment(cluster_run, cluster):
    """Each executor of the pipeline's application unpacked the environment archive (about 5 GB)
    into its worker's folder; the workers' cleanup removes those folders once it has ended, so
    submissions do not pile up gigabytes (this suite's scratch once passed 45 GB)."""
    state = Path(cluster.state_dir)

    def left() -> list[str]:
        return sorted(f"{w.name}/{app.name}" for w in state.glob("worker-*") for app in w.glob("app-*"))

    deadline = time.monotonic() + 12 * CLEANUP_AFTER
    while left() and time.monotonic() < deadline:
        time.sleep(1)
    assert not left(), f"application folders still there {12 * CLEANUP_AFTER}s after the run: {left()}"
    removed = [line for log in (state / "logs").glob("worker-*.log") for line in log.read_text().splitlines()
               if "Removing directory" in line and "/app-" in line]
    assert len(removed) >= 2, "the workers logged no removal of the application's folders"


def _json(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def test_a_worker_killed_mid_stage_changes_nothing(spark, cluster, dist, driver_python, local_run, tmp_path):
    """aggregate on the cluster, from a copy of the local run's silver: once both executors have run
    tasks (so both hold shuffle output) and a stage is running, worker-2 (and its executor) is
    SIGKILLed; the job finishes on the other worker and its gold tables equal the local run's.

    The tasks here last milliseconds, so the trigger must not need two of them caught running at
    one poll: the driver waits for both executors before scheduling and does not hold tasks back
    for locality, and the kill comes at the first poll that sees a stage running after both
    executors have worked."""
    root = tmp_path / "lake"
    shutil.copytree(local_run.lake_root, root, ignore=shutil.ignore_patterns("gold", "mlflow.db", "mlartifacts",
                                                                             "reports"))
    ui, work = free_port(), tmp_path / "work"
    spread = {"spark.ui.port": str(ui), "spark.port.maxRetries": "0", "spark.cores.max": "2",
              "spark.scheduler.minRegisteredResourcesRatio": "1.0",
              "spark.scheduler.maxRegisteredResourcesWaitingTime": "600s", "spark.locality.wait": "0s"}
    with submit(cluster, dist, driver_python,
                ["aggregate", "--env", "cluster", "--as-of", local_run.as_of.isoformat(),
                 *sets([f"lake.root={root}", "spark.ui=true", f"spark.shuffle_partitions={CLUSTER_SHUFFLE}", *PIPELINE])],
                work, spread) as proc:
        api = f"http://127.0.0.1:{ui}/api/v1/applications"
        seen: list[dict] = []
        deadline = time.monotonic() + 1200
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            try:  # the UI comes up late and goes away with the job: any read may fail
                app = _json(api)[0]["id"]
                seen = [e for e in _json(f"{api}/{app}/executors") if e["id"] != "driver" and e["isActive"]]
                ready = len(seen) == 2 and all(e["totalTasks"] > 0 for e in seen) and (
                    any(e["activeTasks"] > 0 for e in seen) or bool(_json(f"{api}/{app}/stages?status=active")))
            except (OSError, IndexError, KeyError, ValueError):
                continue
            if ready:
                cluster.kill("worker-2")
                break
        else:
            state = "still running" if proc.poll() is None else f"exited {proc.returncode}"
            tasks = [(e["id"], e["totalTasks"], e["activeTasks"]) for e in seen]
            pytest.fail(f"worker-2 not killed: spark-submit {state}; executors (id, tasks, active) last seen: "
                        f"{tasks}\n{(work / 'submit.log').read_text()[-4000:]}")
        out = finish(proc, work)
    assert cluster.alive_workers() == 1
    assert "Lost executor" in out, out[-4000:]
    settings = make_settings(root, *PIPELINE)
    gold = [t for t in TABLES if t.layer == "gold" and lake.exists(spark, local_run, t)
            and t.name in {"user_platform_daily", "creator_platform_daily", "platform_daily", "user_features",
                           "creator_quality", "creator_platform_period", "platform_period"}]
    assert len(gold) == 7
    assert_same_tables(spark, settings, local_run, gold)
