"""Benchmarks (issue #9): our jobs against single-process baselines on the same input.

    python -m bench.run --scale small|1e7|1e8 [--only ingest,aggregate,kmeans,scoring,btyd] [--set key=value]

1. Data: generates the raw exports once per scale with our generator and runs the real
   pipeline stages on them (ingest -> refine -> aggregate -> personas -> train -> score), each
   timed: that is the end-to-end events per second. A run prepares only as far as its
   comparisons need (--only aggregate stops after aggregate; all comparisons run every stage).
   Cached in bench/data/<scale>/ with each finished stage recorded in prepared.json, so a
   rerun goes on where the last one stopped (--prepare-only prepares and stops; delete the
   folder to start over).
2. Comparisons: for each, one discarded warm-up of both sides, then 3 timed runs of each
   (interleaved), both sides writing their full result as Parquet; the median is reported.
   Our side calls the functions the jobs call; the baselines are in bench/baselines.py.
3. Checks: row counts and checksums of both outputs (DuckDB over the written Parquet) must
   agree; a failed check is recorded in the result and the run exits 1.
4. Writes bench/results/latest.json and bench/results/<scale>.json and prints a Markdown table;
   a run with --only replaces its own comparisons there and keeps the others (each result
   says when it was measured).
   Session start-up is measured apart and never enters a ratio.

Never run from tests: timings are not assertions.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform as pyplatform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from jobs import STAGES

if TYPE_CHECKING:  # pandas is imported where a bench needs it
    import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
# Sizes per scale: one session is about 1.9 events (measured: 180,000 sessions -> 337,303
# silver events), so 1e7 / 1e8 events need about 5.3 / 53 million sessions. Users grow with
# events (about 180 events a user, as in make run's data).
SCALES = {
    "small": {"users": 3_000, "sessions": 100_000, "files": 2},
    "1e7": {"users": 55_000, "sessions": 5_300_000, "files": 8},
    "1e8": {"users": 550_000, "sessions": 53_000_000, "files": 32},
}
TARGETS = {"ingest": 3.0, "aggregate": 3.0, "kmeans": 3.0, "scoring": 8.0, "scaling": 11.0, "btyd": 1.0}
COUNTED = STAGES[1:]  # the stages counted in end-to-end events per second
log = logging.getLogger("bench")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def machine() -> dict:
    from importlib.metadata import version

    import duckdb
    import pyspark
    import sklearn
    import torch

    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1), "os": pyplatform.platform(),
            "python": pyplatform.python_version(), "spark": pyspark.__version__, "delta": version("delta-spark"),
            "duckdb": duckdb.__version__, "sklearn": sklearn.__version__, "torch": torch.__version__,
            "mlflow": version("mlflow"), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


# -- data: generated once per scale, then the real pipeline stages ------------------------------------
# What each comparison reads, as the last pipeline stage it needs: the aggregate compares over
# silver.events and gold.user_platform_daily, K-means over gold.user_features with the k that
# jobs.personas chose (gold.persona_profiles), scoring a registered model. A run prepares up to
# the furthest stage its comparisons need; a full run (every comparison) takes the pipeline to
# its end, score included, for events per second.
NEEDS = {"ingest": "generate", "aggregate": "aggregate", "kmeans": "personas", "scoring": "train",
         "btyd": None}  # btyd draws its own customers


def stages_needed(only: list[str]) -> tuple[str, ...]:
    """The pipeline stages to prepare for these comparisons (all of them for a full run)."""
    if set(only) >= set(NEEDS):
        return STAGES
    last = max((STAGES.index(NEEDS[n]) for n in only if NEEDS[n]), default=-1)
    return STAGES[:last + 1]


def _pipeline_bodies() -> dict[str, Callable]:
    from jobs import aggregate, generate, ingest, personas, refine, score, train
    return {"generate": generate.execute, "ingest": ingest.execute, "refine": refine.execute,
            "aggregate": aggregate.execute, "personas": personas.execute, "train": train.execute,
            "score": score.execute}


def prepare(spark, settings, data_dir: Path, stages: tuple[str, ...] = STAGES,
            bodies: dict[str, Callable] | None = None) -> dict:
    """Take this scale's data through ``stages`` of the pipeline, each timed, and keep the
    times in <data_dir>/prepared.json after every stage.

    A rerun skips the stages already recorded, so a long preparation (10^8) can be stopped and
    resumed: the jobs are incremental and finish an interrupted stage's work exactly once. A
    stage that was interrupted is marked ``resumed``: its time covers only the rest of its work
    and it is not counted in events per second. A stage that stopped with a missing input (e.g.
    score without a champion) is recorded as such and not tried again."""
    from core import lake
    from core.errors import UserError
    from core.tables import EVENTS
    from jobs.cli import Summary

    bodies = bodies or _pipeline_bodies()
    marker = data_dir / "prepared.json"
    info = json.loads(marker.read_text()) if marker.exists() else {}
    info = {"stage_seconds": {}, "notes": {}, "resumed": [], **info}

    def save() -> None:  # atomically: a stop while writing must not leave a truncated marker
        part = marker.with_suffix(".part")
        part.write_text(json.dumps(info, indent=2))
        os.replace(part, marker)

    for name in stages:
        if name in info["stage_seconds"]:
            continue
        if info.get("running") == name:  # the last run stopped inside this stage
            info["resumed"] = sorted({*info["resumed"], name})
        info["running"] = name
        save()
        log.info("prepare %s: %s", data_dir.name, name)
        try:
            seconds, summary = timed(lambda: bodies[name](spark, settings, Summary(f"bench/{name}")))
            print(summary.render(), flush=True)
        except UserError as err:  # e.g. too little data to train: recorded, the bench goes on
            seconds = None
            info["notes"][name] = str(err)
            log.warning("prepare %s failed: %s", name, err)
        info["stage_seconds"][name] = seconds
        info.pop("running")
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was
        info.setdefault("stage_load_avg_1m", {})[name] = info["load_avg_1m"]
        save()
        if "silver_events" not in info and lake.exists(spark, settings, EVENTS):  # once refine has run
            info["silver_events"] = lake.read(spark, settings, EVENTS).count()
            save()
    return info


def pipeline_summary(info: dict) -> dict:
    """End-to-end events per second over the pipeline stages (ingest .. score) that ran in full;
    a stage that stopped (e.g. score without a champion), was resumed after an interruption or
    has not been prepared yet is named, not counted."""
    resumed = set(info.get("resumed", []))
    ran = {s: (None if s in resumed else info["stage_seconds"].get(s)) for s in COUNTED}
    # errors name the lake by its absolute path: keep this machine's folders out of the results
    info = {**info, "notes": {k: re.sub(r"\S*/(bench/data/)", r"\1", v) for k, v in info["notes"].items()}}
    done = {s: v for s, v in ran.items() if v is not None}
    total = sum(done.values())
    events = info.get("silver_events")
    return {**info, "pipeline_seconds": round(total, 1), "stages_counted": list(done),
            "stages_missing": [s for s, v in ran.items() if v is None],
            "events_per_second": round(events / total) if total and events else None}


# -- one comparison ---------------------------------------------------------------------------------
def compare_runs(name: str, ours: Callable[[], None], baseline: Callable[[], None], runs: int) -> tuple[list, list]:
    """One discarded warm-up of each, then ``runs`` timed runs of each, interleaved."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()

    def grouped() -> None:  # the Spark side's jobs, found again in the event log by --profile
        spark.sparkContext.setJobGroup(name, f"bench {name}: ours")
        try:
            ours()
        finally:
            spark.sparkContext.setJobGroup("bench-other", "bench bookkeeping")

    log.info("%s: warm-up", name)
    grouped()
    baseline()
    a, b = [], []
    for i in range(runs):
        a.append(timed(grouped)[0])
        b.append(timed(baseline)[0])
        log.info("%s run %d: ours %.2fs, baseline %.2fs", name, i + 1, a[-1], b[-1])
    return a, b


def result(name: str, scale: str, ours: list[float], baseline: str, theirs: list[float], target: float,
           problems: list[str], details: dict | None = None) -> dict:
    o, t = statistics.median(ours), statistics.median(theirs)
    ratio = o / t if t > 0 else float("inf")
    met = ratio <= target and not (details or {}).get("quality_missed")
    return {"name": name, "scale": scale, "ours_s": round(o, 3), "baseline": baseline, "baseline_s": round(t, 3),
            "ratio": round(ratio, 2), "target": target, "met": bool(met and not problems),
            "check": "ok" if not problems else "FAILED: " + "; ".join(problems[:8]),
            "runs_ours_s": [round(x, 3) for x in ours], "runs_baseline_s": [round(x, 3) for x in theirs],
            **({"details": details} if details else {})}


def _clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def bench_ingest(spark, settings, work: Path, scale: str, runs: int) -> list[dict]:
    """ingest_json / ingest_csv: raw exports -> typed, validated, silver-shaped Parquet."""
    from pyspark.sql import functions as F

    from bench import baselines
    from jobs import ingest as ingest_job
    from transforms import refine as RF
    from transforms.ingest import to_bronze

    listing = ingest_job.list_files(spark, settings.raw_root)
    out = []
    for fmt in ("json", "csv"):
        platforms = sorted(p for p, m in settings.platforms.items() if m.format == fmt)
        sources = [(settings.platforms[p], [path for plat, kind, path, *_ in listing if plat == p and kind == "events"])
                   for p in platforms]
        ours_out, base_out = work / f"ingest_{fmt}_ours", work / f"ingest_{fmt}_duckdb.parquet"
        ingested_at = dt.datetime(2026, 7, 1)

        def ours() -> None:
            frames = []
            for mapping, files in sources:
                header = ",".join(mapping.events.columns) if mapping.format == "csv" and mapping.events.columns else None
                bronze = to_bronze(ingest_job.read_records(spark, files, "text"), mapping.name, mapping.format, "bench", ingested_at,
                                   header, partitions=len(files))
                parsed = RF.parse_events(bronze, mapping, settings.refine, settings.as_of)
                frames.append(parsed.where(F.size("reasons") == 0).select(*baselines.INGEST_COLUMNS))
            df = frames[0]
            for f in frames[1:]:
                df = df.unionByName(f)
            df.write.mode("overwrite").parquet(str(ours_out))

        con = baselines.connect(2)
        local = [(m, [f.removeprefix("file:") for f in files]) for m, files in sources]

        def baseline() -> None:
            _clean(base_out)
            baselines.ingest(con, local, settings.refine, settings.as_of, base_out)

        a, b = compare_runs(f"ingest_{fmt}", ours, baseline, runs)
        problems = baselines.compare(baselines.checksum(ours_out, list(baselines.INGEST_COLUMNS)), baselines.checksum(base_out, list(baselines.INGEST_COLUMNS)))
        rows = baselines.checksum(base_out, ["event_key"])["rows"]
        out.append(result(f"ingest_{fmt}", scale, a, "duckdb (2 threads)", b, TARGETS["ingest"], problems,
                          {"platforms": platforms, "files": sum(len(f) for _, f in sources), "valid_rows": int(rows)}))
    return out


def _files_of(spark, path: str) -> list[str]:
    """The Parquet files of a Delta table's current snapshot (not every file in its folder)."""
    return sorted(f.removeprefix("file://").removeprefix("file:") for f in spark.read.format("delta").load(path).inputFiles())


def bench_aggregate(spark, settings, work: Path, scale: str, runs: int) -> list[dict]:
    """aggregate_user_features: gold.user_features from silver.events (+ gold.user_platform_daily)."""
    from bench import baselines
    from core import lake
    from core.tables import EVENTS, USER_FEATURES, USER_PLATFORM_DAILY
    from transforms import gold

    as_of, cfg = settings.as_of, settings.gold
    ours_out, base_out = work / "aggregate_ours", work / "aggregate_duckdb.parquet"

    def ours() -> None:
        silver = lake.read(spark, settings, EVENTS)
        lookback = gold.window(silver, gold.lookback_start(as_of, cfg.lookback_days), as_of)
        history = lake.read(spark, settings, USER_PLATFORM_DAILY)
        gold.user_features(lookback, history, as_of, cfg.period_days).write.mode("overwrite").parquet(str(ours_out))

    silver_files = _files_of(spark, lake.path_of(settings, EVENTS))
    daily_files = _files_of(spark, lake.path_of(settings, USER_PLATFORM_DAILY))
    con = baselines.connect(2)

    def baseline() -> None:
        _clean(base_out)
        baselines.user_features(con, silver_files, daily_files, as_of, cfg.lookback_days, cfg.period_days, base_out)

    a, b = compare_runs("aggregate_user_features", ours, baseline, runs)
    columns = USER_FEATURES.schema.fieldNames()
    problems = baselines.compare(baselines.checksum(ours_out, columns), baselines.checksum(base_out, columns))
    rows = baselines.checksum(base_out, ["user_id"])["rows"]
    events = lake.read(spark, settings, EVENTS).count()
    return [result("aggregate_user_features", scale, a, "duckdb (2 threads)", b, TARGETS["aggregate"], problems,
                   {"silver_events": events, "users": int(rows), "silver_files": len(silver_files)})]


def _persona_data(spark, settings):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from core import lake
    from core.tables import PERSONA_PROFILES, USER_FEATURES
    from ml import personas as persona_model
    from transforms.gold import map_keys_in

    features = lake.read(spark, settings, USER_FEATURES).where(F.col("as_of_date") == F.lit(settings.as_of))
    categories = map_keys_in(features, "category_share")  # the job's own input preparation
    flat = persona_model.model_input(features, categories, settings.personas.partitions)
    data = persona_model.prep_pipeline(persona_model.model_columns(flat, categories)[0]).fit(flat).transform(flat).select("user_id", persona_model.PREP_OUT)
    data = data.persist(StorageLevel.MEMORY_AND_DISK)
    data.count()
    k = None
    if lake.exists(spark, settings, PERSONA_PROFILES):
        k = lake.read(spark, settings, PERSONA_PROFILES).where(F.col("as_of_date") == F.lit(settings.as_of)).count() or None
    return data, k or 5


def bench_kmeans(spark, settings, work: Path, scale: str, runs: int) -> list[dict]:
    """kmeans: one persona fit (personas.restarts restarts, k-means||) vs scikit-learn KMeans
    (k-means++, n_init = restarts, same max_iter) on the same standardised rows.

    The two stop on different rules: Spark when every centre moved at most ``tol`` (a distance),
    scikit-learn when the centres' total squared shift is at most ``tol`` times the mean feature
    variance. scikit-learn gets tol**2 / mean variance: its rule then implies ours, so it never
    stops on a looser rule than our fit (and does not win by iterating less)."""
    import numpy as np
    from pyspark.ml.functions import vector_to_array
    from sklearn.cluster import KMeans

    from ml import personas as persona_model

    cfg = settings.personas
    data, k = _persona_data(spark, settings)
    x = np.stack(data.select(vector_to_array(persona_model.PREP_OUT).alias("v")).toPandas()["v"].to_numpy())
    sk_tol = cfg.tol ** 2 / float(np.mean(np.var(x, axis=0)))
    fitted: dict = {}

    def ours() -> None:
        fitted["ours"] = persona_model.fit_best_of(data, k, cfg, cfg.seed)

    def baseline() -> None:
        fitted["sk"] = KMeans(n_clusters=k, init="k-means++", n_init=cfg.restarts, max_iter=cfg.max_iter,
                              tol=sk_tol, random_state=cfg.seed).fit(x)

    a, b = compare_runs("kmeans_personas", ours, baseline, runs)
    ours_cost, sk_cost = float(fitted["ours"].summary.trainingCost), float(fitted["sk"].inertia_)
    n_ours = int(sum(fitted["ours"].summary.clusterSizes))
    problems = [] if n_ours == x.shape[0] else [f"rows: {n_ours} vs {x.shape[0]}"]
    gap = ours_cost / sk_cost - 1
    data.unpersist()
    return [result("kmeans_personas", scale, a, f"scikit-learn KMeans (k-means++, n_init={cfg.restarts})", b,
                   TARGETS["kmeans"], problems,
                   {"k": k, "rows": int(x.shape[0]), "features": int(x.shape[1]), "inertia_ours": round(ours_cost, 3),
                    "inertia_sklearn": round(sk_cost, 3), "inertia_gap_pct": round(100 * gap, 3),
                    "iterations_ours": fitted["ours"].summary.numIter, "iterations_sklearn": int(fitted["sk"].n_iter_),
                    "tol_ours": cfg.tol, "tol_sklearn": sk_tol,
                    "quality_missed": gap > 0.01})]


def bench_scoring(spark, settings, work: Path, scale: str, runs: int) -> list[dict]:
    """scoring_users: mlflow.pyfunc.spark_udf over gold.user_features rows (jobs.score.predict)
    vs the same logged model loaded in this process and called on the same rows."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from pyspark.sql import functions as F

    from bench import baselines
    from core import lake, tracking
    from core.tables import USER_FEATURES
    from jobs import score
    from transforms import scoring, training

    tracking.experiment(settings, "revenue")
    name = tracking.model_name(settings, "user_revenue")
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, "champion").version
        which = "champion"
    except mlflow.exceptions.MlflowException:  # the gate refused every version on this data: take the latest
        version = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        which = "latest (no champion)"
    uri = f"models:/{name}/{version}"
    inputs = list(mlflow.models.get_model_info(uri).signature.inputs.input_names())
    platforms, categories = scoring.keys_of(inputs, "platform_"), scoring.keys_of(inputs, "cat_")
    features = lake.read(spark, settings, USER_FEATURES).where(F.col("as_of_date") == F.lit(settings.as_of))
    rows_in = work / "scoring_input"
    training.user_model_frame(features, training.user_spec(platforms, categories), platforms, categories) \
        .write.mode("overwrite").parquet(str(rows_in))
    ours_out, base_out = work / "scoring_ours", work / "scoring_torch.parquet"

    def ours() -> None:
        frame = spark.read.parquet(str(rows_in))
        score.predict(spark, frame, uri, inputs).select("user_id", "prediction").write.mode("overwrite").parquet(str(ours_out))

    def baseline() -> None:
        frame = pd.read_parquet(rows_in)
        model = mlflow.pyfunc.load_model(uri)
        pred = np.asarray(model.predict(frame[inputs])).ravel().astype("float64")
        pd.DataFrame({"user_id": frame["user_id"], "prediction": pred}).to_parquet(base_out, index=False)

    a, b = compare_runs("scoring_users", ours, baseline, runs)
    # float32 network: the same rows in other batch sizes may differ in the last bits
    problems = baselines.compare(baselines.checksum(ours_out), baselines.checksum(base_out), rel_tol=1e-6)
    rows = baselines.checksum(base_out, ["user_id"])["rows"]
    return [result("scoring_users", scale, a, "same torch model in-process (mlflow.pyfunc, pandas)", b,
                   TARGETS["scoring"], problems, {"model": f"{name} v{version} ({which})", "users": int(rows)})]


# BG/NBD x Gamma-Gamma parameters of the customers bench_btyd draws (days).
BTYD_TRUTH = {"r": 0.8, "alpha": 5.0, "a": 0.6, "b": 2.5, "p": 6.0, "q": 4.0, "v": 15.0}
BTYD_CUSTOMERS = 1_000_000


def btyd_customers(n: int, seed: int) -> pd.DataFrame:
    """The RFM summary of ``n`` customers drawn from the BG/NBD x Gamma-Gamma process itself
    (BTYD_TRUTH), each observed for 1 to 272 days after a first purchase; vectorised numpy."""
    import numpy as np
    import pandas as pd

    k = BTYD_TRUTH
    rng = np.random.default_rng(seed)
    rate, drop = rng.gamma(k["r"], 1 / k["alpha"], n), rng.beta(k["a"], k["b"], n)
    age = rng.integers(1, 273, n).astype(float)
    t, x, last = np.zeros(n), np.zeros(n), np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        t[idx] += rng.exponential(1 / rate[idx])
        inside = t[idx] < age[idx]
        alive[idx[~inside]] = False
        buy = idx[inside]
        x[buy] += 1
        last[buy] = t[buy]
        alive[buy[rng.random(buy.size) < drop[buy]]] = False  # dropout only after a repeat purchase
    nu = rng.gamma(k["q"], 1 / k["v"], n)
    mean_spend = np.where(x > 0, rng.gamma(k["p"] * np.maximum(x, 1), 1 / (nu * np.maximum(x, 1))), 0.0)
    return pd.DataFrame({"customer_id": np.arange(n), "frequency": x, "recency": last, "T": age,
                         "monetary_value": mean_spend})


def bench_btyd(spark, settings, work: Path, scale: str, runs: int) -> list[dict]:
    """btyd_fit: the BTYD baseline's MAP fit (ml.btyd.fit, pymc-marketing) on the RFM summaries
    of 10^6 customers at every scale, against the one-minute budget of the issue (a budget,
    not a rival: the fit runs on one machine, the driver, whatever the cluster). Quality: the
    parameters must come back within 15 % of the process they were drawn from."""
    from ml import btyd

    summary = btyd_customers(BTYD_CUSTOMERS, seed=11)
    fitted = []

    def ours() -> None:
        fitted.append(btyd.fit(summary))

    ours()  # warm-up: pytensor compiles the model once per machine
    seconds = [timed(ours)[0] for _ in range(runs)]
    params = fitted[-1].as_dict()
    errors = {k: round(params[k] / v - 1, 3) for k, v in BTYD_TRUTH.items()}
    details = {"customers": BTYD_CUSTOMERS, "repeat_customers": params["repeat_customers"],
               "relative_error": errors, "quality_missed": any(abs(e) > 0.15 for e in errors.values())}
    return [result("btyd_fit", scale, seconds, "one-minute budget", [60.0] * runs, TARGETS["btyd"], [], details)]


def scaling(scale: str, current: list[dict]) -> list[dict]:
    """scaling_aggregate: the aggregate at 1e8 over the aggregate at 1e7 (from bench/results/1e7.json)."""
    if scale != "1e8" or not (RESULTS_DIR / "1e7.json").exists():
        return []
    before = {r["name"]: r for r in json.loads((RESULTS_DIR / "1e7.json").read_text())["results"]}
    now = {r["name"]: r for r in current}
    if "aggregate_user_features" not in before or "aggregate_user_features" not in now:
        return []
    o, t = now["aggregate_user_features"]["ours_s"], before["aggregate_user_features"]["ours_s"]
    return [{"name": "scaling_aggregate", "scale": "1e8/1e7", "ours_s": o, "baseline": "our aggregate at 1e7",
             "baseline_s": t, "ratio": round(o / t, 2), "target": TARGETS["scaling"], "met": o / t <= TARGETS["scaling"],
             "check": now["aggregate_user_features"]["check"]}]


def profile_summary(log_dir: Path) -> dict[str, dict]:
    """Per job group (one per comparison's Spark side), from the Spark event log: jobs, stages,
    tasks, executor run time, input, shuffle, spill, and the slowest task against the median
    task of its stage (skew)."""
    apps = sorted((p for p in log_dir.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    if not apps:
        return {}
    # Spark 4 writes a rolling log: a folder eventlog_v2_<app>/ of events_<n>_<app> files
    parts = sorted((p for p in apps[-1].iterdir() if p.name.startswith("events_")),
                   key=lambda p: int(p.name.split("_")[1])) if apps[-1].is_dir() else [apps[-1]]
    stage_group, groups, tasks = {}, {}, {}
    for line in (line for part in parts for line in part.open()):
        ev = json.loads(line)
        kind = ev.get("Event")
        if kind == "SparkListenerJobStart":
            group = (ev.get("Properties") or {}).get("spark.jobGroup.id")
            if group:
                g = groups.setdefault(group, {"jobs": 0, "stages": 0})
                g["jobs"] += 1
                for sid in ev.get("Stage IDs", []):
                    stage_group[sid] = group
        elif kind == "SparkListenerTaskEnd" and ev.get("Stage ID") in stage_group:
            m = ev.get("Task Metrics") or {}
            tasks.setdefault((stage_group[ev["Stage ID"]], ev["Stage ID"]), []).append(m)
    out = {}
    for (group, _), ms in tasks.items():
        g = out.setdefault(group, {"jobs": groups[group]["jobs"], "stages": 0, "tasks": 0, "executor_run_s": 0.0,
                                   "input_mb": 0.0, "shuffle_write_mb": 0.0, "spill_memory_mb": 0.0,
                                   "spill_disk_mb": 0.0, "max_task_over_median": 1.0})
        runs = [m.get("Executor Run Time", 0) for m in ms]
        g["stages"] += 1
        g["tasks"] += len(ms)
        g["executor_run_s"] += sum(runs) / 1000
        g["input_mb"] += sum((m.get("Input Metrics") or {}).get("Bytes Read", 0) for m in ms) / 2**20
        g["shuffle_write_mb"] += sum((m.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0) for m in ms) / 2**20
        g["spill_memory_mb"] += sum(m.get("Memory Bytes Spilled", 0) for m in ms) / 2**20
        g["spill_disk_mb"] += sum(m.get("Disk Bytes Spilled", 0) for m in ms) / 2**20
        if len(runs) > 2 and statistics.median(runs) > 50:
            g["max_task_over_median"] = max(g["max_task_over_median"], max(runs) / statistics.median(runs))
    return {k: {n: round(v, 2) if isinstance(v, float) else v for n, v in g.items()} for k, g in out.items()}


BENCHES = {"ingest": bench_ingest, "aggregate": bench_aggregate, "kmeans": bench_kmeans, "scoring": bench_scoring,
           "btyd": bench_btyd}


def with_earlier(scale: str, fresh: list[dict]) -> list[dict]:
    """This run's results plus the earlier ones in bench/results/<scale>.json that it did not
    repeat (a --only run replaces just its own comparisons); each carries when it was measured."""
    path = RESULTS_DIR / f"{scale}.json"
    earlier = json.loads(path.read_text()) if path.exists() else {"results": []}
    names = {r["name"] for r in fresh}
    kept = [{"measured_at": earlier.get("machine", {}).get("date"), **r}
            for r in earlier["results"] if r["name"] not in names]
    order = [*BENCHES, "scaling"]
    return sorted(kept + fresh, key=lambda r: order.index(r["name"].split("_")[0]))


def table(report: dict) -> str:
    lines = ["| comparison | scale | ours (s) | baseline | baseline (s) | ratio | target | met | check | measured |",
             "|---|---|---:|---|---:|---:|---:|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['name']} | {r['scale']} | {r['ours_s']:.2f} | {r['baseline']} | {r['baseline_s']:.2f} | "
                     f"{r['ratio']:.2f} | <= {r['target']:g} | {'yes' if r['met'] else 'NO'} | {r['check']} | "
                     f"{(r.get('measured_at') or '')[:16]} |")
    p = report["pipeline"]
    lines.append("")
    lines.append(f"Session start-up (build_session, JVM + Delta): {report['session_startup_s']:.1f} s (not in any ratio)")
    resumed = set(p.get("resumed", []))
    stages = ", ".join(f"{k} {v:.0f} s" + (" (resumed)" if k in resumed else "") if v is not None else f"{k} failed"
                       for k, v in p["stage_seconds"].items())
    eps = f"{p['events_per_second']:,.0f} events/s" if p.get("events_per_second") else "n/a"
    total = f"{p['pipeline_seconds']:.0f} s" if p.get("pipeline_seconds") else "n/a"
    why = {m: p["notes"].get(m) or ("resumed after an interruption" if m in resumed else "not prepared yet")
           for m in p["stages_missing"]}
    missing = f"; not counted: {'; '.join(f'{m} ({w})' for m, w in why.items())[:240]}" if why else ""
    events = f"{p['silver_events']:,}" if p.get("silver_events") is not None else "n/a"
    lines.append(f"End-to-end pipeline ({', '.join(p['stages_counted'])}) on {events} silver events: "
                 f"{total} = {eps} [{stages}]{missing}")
    for r in report["results"]:
        d = r.get("details", {})
        if "inertia_ours" in d:
            lines.append(f"K-means k={d['k']} on {d['rows']:,} users x {d['features']} features: inertia ours "
                         f"{d['inertia_ours']:,.1f} ({d['iterations_ours']} it.) vs scikit-learn {d['inertia_sklearn']:,.1f} "
                         f"({d['iterations_sklearn']} it.), gap {d['inertia_gap_pct']:+.2f}% (target within 1%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES))
    parser.add_argument("--prepare-only", action="store_true",
                        help="only prepare the data those comparisons need (resumable: a rerun goes on from "
                             "the last finished stage) and stop; nothing is compared or written to results")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (median reported)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override for the jobs (e.g. to measure a tuning), repeatable")
    parser.add_argument("--profile", action="store_true",
                        help="write a Spark event log and add per-comparison stage metrics (tasks, shuffle, "
                             "spill, skew) to the results")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in BENCHES]
    if unknown or not only:
        what = f"unknown comparison(s) {', '.join(unknown)}" if unknown else "no comparison named"
        parser.error(f"--only {args.only!r}: {what}; choose from {','.join(BENCHES)}")
    from core.settings import load_settings
    from jobs.cli import configure_logging

    configure_logging()
    size = SCALES[args.scale]
    data_dir = BENCH_DIR / "data" / args.scale
    work = data_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    overrides = [f"lake.root={data_dir / 'lake'}", f"generate.users={size['users']}",
                 f"generate.sessions={size['sessions']}", f"generate.files_per_platform={size['files']}"]
    event_dir = data_dir / "eventlog"
    if args.profile:
        event_dir.mkdir(exist_ok=True)
        overrides.append("spark.conf=" + json.dumps({"spark.eventLog.enabled": "true",
                                                     "spark.eventLog.dir": event_dir.as_uri(),
                                                     "spark.eventLog.compress": "false"}))
    settings = load_settings("local", [*overrides, *args.set])
    load_start = os.getloadavg()
    from core.session import build_session

    startup, spark = timed(lambda: build_session(settings))
    info = prepare(spark, settings, data_dir, stages_needed(only))
    if args.prepare_only:
        spark.stop()
        print(json.dumps(pipeline_summary(info), indent=2), flush=True)
        return 0
    results: list[dict] = []
    for name in only:
        results += BENCHES[name](spark, settings, work, args.scale, args.runs)
    results += scaling(args.scale, results)
    spark.stop()  # also completes the event log
    if args.profile:
        try:
            profiles = profile_summary(event_dir)
        except (OSError, ValueError) as err:
            log.warning("could not read the Spark event log in %s: %s", event_dir, err)
            profiles = {}
        for r in results:
            if r["name"] in profiles:
                r.setdefault("details", {})["spark_profile"] = profiles[r["name"]]
    about = machine()
    for r in results:
        r.update(measured_at=about["date"], settings_overrides=args.set)
    report = {"machine": {**about, "load_avg_1m_start": round(load_start[0], 2),
                          "load_avg_1m_end": round(os.getloadavg()[0], 2)},
              "results": with_earlier(args.scale, results), "session_startup_s": round(startup, 2),
              "pipeline": pipeline_summary(info)}
    RESULTS_DIR.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    (RESULTS_DIR / "latest.json").write_text(text + "\n")
    (RESULTS_DIR / f"{args.scale}.json").write_text(text + "\n")
    print(table(report), flush=True)
    return 1 if any(r["check"] != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
