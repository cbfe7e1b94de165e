"""Train the revenue models for one --as-of date, track them in MLflow, promote only winners.

--model user_revenue: a user's net revenue in the next train.horizon_days from the features
  of gold.user_features as of t.
--model creator_platform_revenue: a creator's net revenue on one platform in the next
  horizon, from its K, R, X and funnel there, its Q(C), E(P) and its activity elsewhere.

Training rows are built in Spark from one pinned version of silver.events, point in time:
features as of each feature date t, label from the days after t. The test date is
as_of - horizon; the training dates (train.windows of them) end a further horizon earlier,
so no training label overlaps the test window. Each split is a stratified sample (persona x
payer for users, platform x payer for pairs; train.sample_cap rows) with weights that keep
the metrics unbiased; only the sample reaches pandas.

Every run logs parameters, per-epoch losses, the input tables with their versions, held-out
metrics (test_rmse, test_mae, test_gini, test_spearman, test_total_error_pct) and the same for
the baselines (baseline_<naive|linear|hgb|btyd>_test_<metric>), the coverage of each
candidate's P10-P90 interval on the test split (test_coverage_p10_p90, _payers, what the
network's own distribution expects of it, test_expected_coverage_*, and per decile in
interval_coverage.json), plots, and every candidate model (the network and the baselines)
with its signature, as one pyfunc that gives the mean and, asked, P10 / P50 / P90. The BTYD
baseline (ml/btyd.py: BG/NBD x Gamma-Gamma, fitted per feature date on the customers' RFM
summary) also gives the user model three features. The run's winner is registered as
<prefix>-<model>: among the candidates whose |total error| is no worse than the naive
baseline's (naive always is), the highest held-out Gini. It becomes `champion` unless the
current champion, re-scored on the same split, is eligible too and ranks at least as well, so
a champion always exists after the first run. Features that are missing or constant in every
training row are left out and recorded (param features_dropped); the model's signature is its
input. The creator x platform model is skipped, with a note, when the events name no creator
or hold too little to learn from. --sweep trains one run per train.sweep entry.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import sklearn
import torch
from mlflow.entities import Metric
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from tqdm.auto import tqdm

from core import lake, tracking
from core.errors import MissingInput, NotEnoughData
from core.settings import NetSettings, Settings
from core.tables import EVENTS, USER_PERSONAS
from jobs import report
from jobs.cli import Summary, run_job
from ml import btyd, revenue
from transforms import gold, training

log = logging.getLogger(__name__)
MODELS = ("user_revenue", "creator_platform_revenue")
ML_DIR = Path(revenue.__file__).resolve().parent


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    fold: np.ndarray
    frame: pd.DataFrame  # every feature column of the rows, also those the model leaves out


def _split(df: pd.DataFrame, spec: training.ModelSpec) -> Split:
    return Split(df[list(spec.features)].to_numpy(np.float64), df["label"].to_numpy(np.float64),
                 df["weight"].to_numpy(np.float64), df["fold"].to_numpy(), df)


def training_rows(spark: SparkSession, settings: Settings, model: str, silver: DataFrame,
                  personas_version: int | None) -> tuple[training.ModelSpec, DataFrame, list, object]:
    """(spec, rows of every feature date with a `stratum` column, training dates, test date).
    ``personas_version``: the gold.user_personas version to stratify users by (None: payer only)."""
    cfg, gcfg = settings.train, settings.gold
    first, last = silver.agg(F.min("event_date"), F.max("event_date")).first()
    if first is None:
        raise NotEnoughData("silver.events is empty: run jobs.refine first")
    train_dates, test_date = training.feature_dates(settings.as_of, first, cfg.horizon_days, cfg.windows,
                                             cfg.window_step_days, cfg.min_history_days)
    if not train_dates:
        raise NotEnoughData(
            f"no training date fits: silver.events starts {first}, the test date is {test_date} and training "
            f"dates end {cfg.horizon_days} days before it with {cfg.min_history_days} days of history "
            f"(use a later --as-of or lower train.horizon_days / train.min_history_days)")
    if last < settings.as_of:
        raise NotEnoughData(f"silver.events ends {last}, before --as-of {settings.as_of}: the test labels "
                                f"({test_date} to {settings.as_of}) would be cut short; use --as-of {last} or refine newer data")
    known = silver.where(F.col("event_date") <= F.lit(settings.as_of))
    platforms = gold.platforms_in(known)
    categories = sorted(r[0] for r in known.where(F.col("category").isNotNull()).select("category").distinct().collect())
    dates = [*train_dates, test_date]
    if model == "user_revenue":
        spec = training.user_spec(platforms, categories)
        # One daily history for every feature date (each reads its own days up to t).
        daily = gold.user_platform_daily(known)
        parts = [training.user_rows(silver, daily, t, cfg.horizon_days, gcfg.lookback_days, gcfg.period_days, spec,
                             platforms, categories) for t in dates]
        rows = reduce(DataFrame.unionByName, parts)
        persona = F.lit("(none)")
        if personas_version is not None:
            # Used for sampling only, never as a feature: the latest persona slice up to as_of.
            personas = (lake.read(spark, settings, USER_PERSONAS, as_of_version=personas_version)
                        .where(F.col("as_of_date") <= F.lit(settings.as_of)))
            latest = personas.agg(F.max("as_of_date")).first()[0]
            if latest is not None:
                rows = rows.join(personas.where(F.col("as_of_date") == F.lit(latest))
                                 .select("user_id", "persona_label"), "user_id", "left")
                persona = F.coalesce(F.col("persona_label"), F.lit("(none)"))
        rows = rows.withColumn("stratum", F.concat_ws("|", persona, F.when(F.col("monetary") > 0, "payer")
                                                                   .otherwise("non-payer")))
    else:
        spec = training.pair_spec(platforms, categories)
        parts = [training.pair_rows(silver, t, cfg.horizon_days, gcfg.lookback_days, gcfg.period_days,
                             gcfg.quality_weights, spec, platforms, categories) for t in dates]
        rows = reduce(DataFrame.unionByName, parts)
        platform = reduce(lambda acc, p: F.when(F.col(f"is_{p}") == 1, F.lit(p)).otherwise(acc), platforms, F.lit("?"))
        rows = rows.withColumn("stratum", F.concat_ws("|", platform, F.when(F.col("revenue") > 0, "payer")
                                                                    .otherwise("non-payer")))
    return spec, rows, train_dates, test_date


def cohorts(frame: pd.DataFrame) -> np.ndarray:
    """The acquisition cohort of each row: the month of the user's first active day."""
    first = pd.to_datetime(frame["as_of_date"]) - pd.to_timedelta(frame["tenure_days"], unit="D")
    return first.dt.strftime("%Y-%m").fillna("unknown").to_numpy()


def champion_metrics(settings: Settings, model_kind: str, test: Split) -> tuple[str, dict[str, float] | None, str] | None:
    """(version, metrics on this test split, what they are) of the current champion; metrics
    None when it reads a feature today's data does not have (it cannot score this split, nor
    today's users)."""
    version = tracking.champion(settings, model_kind)
    if version is None:
        return None
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    inputs = list(model.metadata.get_input_schema().input_names())
    if not set(inputs) <= set(test.frame.columns):
        return version.version, None, f"reads {sorted(set(inputs) - set(test.frame.columns))}, which today's data lacks"
    scores = revenue.metrics(test.y, np.asarray(model.predict(test.frame[inputs].astype("float64"))).ravel(), test.w)
    return version.version, scores, "re-scored on this test split"


def log_candidates(candidates: dict[str, revenue.RevenueModel], frame: pd.DataFrame) -> dict[str, str]:
    """Log every candidate (the network as ``model``, each baseline as ``baseline_<name>``) to
    the active run as a revenue.RevenueModel pyfunc, with its signature and an input example,
    so whichever wins can be registered and scored. The signature's ``intervals`` parameter
    (default false: the mean only, as before) is how scoring tells a champion that gives
    P10 / P50 / P90 from an older one. Returns the model URI of each candidate."""
    frame = frame.astype("float64")
    example = frame.dropna().head(5) if len(frame.dropna()) >= 5 else frame.head(5)
    # ml/revenue.py imports torch, so every candidate needs it, the baselines too
    pins = [f"mlflow=={mlflow.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}",
            f"scikit-learn=={sklearn.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    uris = {}
    with tempfile.TemporaryDirectory() as tmp:
        code = [ml_folder(tmp)]  # the classes travel with the models, e.g. to Spark executors
        for name, candidate in candidates.items():
            signature = infer_signature(example, candidate.predict(None, example), params={revenue.INTERVALS: False})
            uris[name] = mlflow.pyfunc.log_model(
                name="model" if name == "torch" else f"baseline_{name}", python_model=candidate, code_paths=code,
                signature=signature, input_example=example, pip_requirements=pins).model_uri
    return uris


def ml_folder(scratch: str) -> str:
    """The ml/ package as a folder (MLflow copies code_paths from disk). Run from the packaged
    zip (spark-submit --py-files), it is extracted into ``scratch`` first."""
    if ML_DIR.is_dir():
        return str(ML_DIR)
    archive = next(p for p in ML_DIR.parents if p.is_file())
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(scratch, [m for m in zf.namelist() if m.startswith("ml/")])
    return str(Path(scratch, "ml"))


@dataclass
class Prepared:
    """One model's training inputs: the samples, the fitted baselines and their held-out
    metrics, the current champion on the same split, and what the run logs about them."""
    spec: training.ModelSpec
    train: Split
    test: Split
    log_mask: np.ndarray
    baselines: dict
    residuals: dict[str, revenue.ResidualQuantiles]  # each baseline's error quantiles, for its intervals
    base: dict[str, dict[str, float]]  # held-out metrics and interval coverage of each baseline
    coverage: pd.DataFrame  # each baseline's interval coverage per decile (candidate column)
    champion: tuple | None
    inputs: list
    params: dict
    fits: dict


def prepare(spark: SparkSession, settings: Settings, summary: Summary, model: str, silver: DataFrame,
            silver_version: int, personas_version: int | None) -> Prepared | None:
    """Sample the rows, leave out uninformative features, fit the baselines and re-score the
    champion. None (with a note) when the creator x platform model has too little to learn."""
    cfg = settings.train
    try:
        spec, train, test, train_dates, test_date, fits = training_data(spark, settings, model, silver,
                                                                         personas_version)
    except NotEnoughData as err:
        if model == "user_revenue":
            raise
        summary.skip(f"{model} skipped: {err}")
        return None
    summary.count(f"{model} rows train", len(train.y))
    summary.count(f"{model} rows test", len(test.y))
    kept = revenue.informative(train.x)
    dropped = [f for f, k in zip(spec.features, kept) if not k and f != spec.naive_column]
    if dropped:
        spec = spec.without(dropped)
        train, test = _split(train.frame, spec), _split(test.frame, spec)
        summary.skip(f"{model}: features left out (missing or one value in every training row): {', '.join(dropped)}")
    log_mask = np.array([f in spec.log_features for f in spec.features])
    btyd_columns = None
    if fits and all(f is not None for f in fits.values()) and {"btyd_purchases", "btyd_spend"} <= set(spec.features):
        btyd_columns = (spec.features.index("btyd_purchases"), spec.features.index("btyd_spend"))
    elif model == "user_revenue":
        summary.skip(f"{model}: no BTYD baseline (too few repeat customers on some feature date to fit BG/NBD x "
                     f"Gamma-Gamma, at least {btyd.MIN_REPEAT_CUSTOMERS} needed)")
    baselines = revenue.fit_baselines(train.x, train.y, train.w, log_mask, cfg.seed, spec.features.index(spec.naive_column),
                                cfg.horizon_days / settings.gold.period_days, btyd_columns)
    # Each baseline's intervals come from its errors on training rows it did not learn from.
    out_of_fold = revenue.baseline_out_of_fold(baselines, train.x, train.y, train.w, train.fold)
    residuals = {b: revenue.ResidualQuantiles.fit(out_of_fold[b], train.y, train.w) for b in baselines}
    base, tables = {}, []
    for b, m in baselines.items():
        base[b], table, _ = held_out(revenue.RevenueModel(m, residuals[b]), test)
        tables.append(table.assign(candidate=b))
    params = {"model": model, "as_of": str(settings.as_of), "horizon_days": cfg.horizon_days,
              "train_dates": ",".join(map(str, train_dates)), "test_date": str(test_date),
              "sample_cap": cfg.sample_cap, "seed": cfg.seed, "silver_events_version": silver_version,
              "features": len(spec.features), "features_dropped": ",".join(dropped) or "(none)",
              "rows_train": len(train.y), "folds": cfg.folds, "rows_test": len(test.y), "sklearn": sklearn.__version__}
    if fits.get(test_date) is not None:  # the fit that scored the test split; the others are in btyd_fits.json
        params.update({f"btyd_{k}": v for k, v in fits[test_date].as_dict().items()})
    summary.note(f"{model}: train dates {', '.join(map(str, train_dates))}; test date {test_date} "
                 f"(labels {cfg.horizon_days} days after each)")
    return Prepared(spec, train, test, log_mask, baselines, residuals, base, pd.concat(tables, ignore_index=True),
                    champion_metrics(settings, model, test),
                    _lineage(spark, settings, model, silver, silver_version, personas_version), params, fits)


def held_out(candidate: revenue.RevenueModel, test: Split) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """A candidate's metrics on the test split with the coverage of its P10-P90 interval, that
    coverage per decile of its prediction, and the prediction."""
    out = candidate.predict(None, test.x, {revenue.INTERVALS: True})
    mean, bounds = out["prediction"].to_numpy(), out[list(revenue.INTERVAL_COLUMNS)].to_numpy()
    scores = {**revenue.metrics(test.y, mean, test.w),
              **revenue.coverage(test.y, bounds[:, 0], bounds[:, 2], test.w)}
    return scores, revenue.coverage_by_decile(test.y, mean, bounds, test.w), mean


def _lineage(spark: SparkSession, settings: Settings, model: str, silver: DataFrame, silver_version: int,
             personas_version: int | None) -> list:
    """The input tables at their versions, as MLflow datasets with the role each played."""
    inputs = [(mlflow.data.from_spark(silver, path=lake.path_of(settings, EVENTS), version=str(silver_version),
                                      name=f"{EVENTS.qualified}@v{silver_version}"), "training")]
    if model == "user_revenue" and personas_version is not None:
        inputs.append((mlflow.data.from_spark(
            lake.read(spark, settings, USER_PERSONAS, as_of_version=personas_version),
            path=lake.path_of(settings, USER_PERSONAS), version=str(personas_version),
            name=f"{USER_PERSONAS.qualified}@v{personas_version}"), "sampling"))
    return inputs


# -- one training run: fit -> evaluate -> validate -> register -> promote -------------------

def fit(settings: Settings, spec: training.ModelSpec, net: NetSettings, train: Split, log_mask: np.ndarray) -> revenue.CrossFit:
    """Cross-fit the network (a progress bar per fold in a terminal) and log every fold's loss
    curve to the active run."""
    bars: dict[int, tqdm] = {}

    def progress(fold: int, epoch: int, train_loss: float, val_loss: float) -> None:
        # every epoch at DEBUG; a bar per fold in a terminal (early stopping ends it short)
        log.debug("%s fold %d/%d epoch %d/%d: train loss %.4f, held-out loss %.4f", spec.name, fold + 1,
                  settings.train.folds, epoch, net.max_epochs, train_loss, val_loss)
        if fold not in bars:
            for done in bars.values():
                done.close()
            bars[fold] = tqdm(total=net.max_epochs, desc=f"{spec.name} fold {fold + 1}/{settings.train.folds}",
                              unit="epoch", leave=False, disable=not sys.stderr.isatty())
        bars[fold].update(1)
        bars[fold].set_postfix(held_out_loss=f"{val_loss:.4f}", refresh=False)

    # The total is calibrated on the latest training date: its labels end where the test
    # split's features begin, the most recent fully observed horizon (never the test labels).
    latest = (train.frame["as_of_date"] == train.frame["as_of_date"].max()).to_numpy()
    started = time.monotonic()
    fitted = revenue.cross_fit(train.x, train.y, train.w, train.fold, log_mask, net, settings.train.seed, progress,
                         calibrate=latest)
    for bar in bars.values():
        bar.close()
    for k, f in enumerate(fitted.folds):
        log.info("%s fold %d/%d: %d epochs, best held-out loss %.4f", spec.name, k + 1, settings.train.folds,
                 len(f.history), min(h[2] for h in f.history))
    now = int(time.time() * 1000)
    history = [Metric(f"{key}_fold{k}", v, now, e) for k, f in enumerate(fitted.folds) for e, tl, vl in f.history
               for key, v in (("train_loss", tl), ("val_loss", vl))]
    for i in range(0, len(history), 900):
        MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=history[i:i + 900])
    mlflow.log_metrics({**{f"epochs_fold{k}": len(f.history) for k, f in enumerate(fitted.folds)},
                        **{f"best_epoch_fold{k}": f.best_epoch for k, f in enumerate(fitted.folds)},
                        "calibration_scale": float(fitted.model.scale), "calibration_rows": int(latest.sum()),
                        "fit_seconds": time.monotonic() - started})
    return fitted


def network_model(fitted: revenue.CrossFit, train: Split) -> revenue.RevenueModel:
    """The network as it is logged. A ZILN network gives its intervals from its own
    distribution; a Tweedie one (a mean only) from the errors of its calibrated out-of-fold
    predictions, like a baseline."""
    if fitted.model.has_distribution:
        return revenue.RevenueModel(fitted.model)
    return revenue.RevenueModel(fitted.model, revenue.ResidualQuantiles.fit(fitted.out_of_fold, train.y, train.w))


def evaluate(network: revenue.RevenueModel, fitted: revenue.CrossFit,
             prepared: Prepared) -> tuple[dict[str, float], pd.DataFrame]:
    """The network's held-out metrics and interval coverage beside the baselines', logged with
    the decile table, the coverage per decile of every candidate, the backtest (user model)
    and the plots. Returns the network's metrics and the coverage table."""
    spec, test, baselines = prepared.spec, prepared.test, prepared.baselines
    scores, table, predicted = held_out(network, test)
    mlflow.log_metrics({f"test_{k}": v for k, v in scores.items()})
    if network.residuals is None:  # what a calibrated ZILN would cover here (the atom at 0: not 80 %)
        mlflow.log_metrics({f"test_expected_{k}": v
                            for k, v in revenue.expected_coverage(fitted.model, test.x, test.w).items()})
    mlflow.log_metrics({f"baseline_{b}_test_{k}": v for b, m in prepared.base.items() for k, v in m.items()})
    coverage = pd.concat([table.assign(candidate="torch"), prepared.coverage], ignore_index=True)
    mlflow.log_table(coverage[["candidate", *[c for c in coverage.columns if c != "candidate"]]], "interval_coverage.json")
    mlflow.log_dict({"torch": "ziln mixture" if network.residuals is None else "out-of-fold errors",
                     **{b: "out-of-fold errors" if b in revenue.LEARNS_FROM_LABELS else "errors on the training rows"
                        for b in baselines}}, "interval_sources.json")
    deciles = revenue.deciles(test.y, predicted, test.w)
    mlflow.log_table(deciles, "decile_calibration.json")
    if "tenure_days" in test.frame:  # the user model: by acquisition cohort too, BTYD alongside
        shown = {"torch": predicted, **({"btyd": baselines["btyd"].predict(test.x)} if "btyd" in baselines else {})}
        table = revenue.backtest(test.y, shown, test.w, cohorts(test.frame))
        mlflow.log_table(table, "backtest.json")
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(report.backtest_figure(table, spec.name, Path(tmp))), "plots")
    if prepared.fits:
        mlflow.log_dict({str(t): f.as_dict() if f else None for t, f in prepared.fits.items()}, "btyd_fits.json")
    with tempfile.TemporaryDirectory() as tmp:
        for path in report.training_plots(test.y, predicted, fitted.folds, deciles, spec.name, Path(tmp)):
            mlflow.log_artifact(str(path), "plots")
    return scores, coverage


def validate(scores: dict[str, float], prepared: Prepared) -> revenue.Decision:
    """The run's winner among the network and the baselines, and whether it beats the
    champion re-scored on the same split (revenue.choose). A champion that cannot score today's
    data (it reads a feature that is gone) ranks below any candidate."""
    champion = prepared.champion
    champion_scores = None
    if champion is not None:
        champion_scores = champion[1] if champion[1] is not None else {"gini": float("nan"),
                                                                       "total_error_pct": float("nan")}
    decision = revenue.choose({"torch": scores, **prepared.base}, champion_scores)
    if champion is not None and champion[1] is None:
        decision.reasons.append(f"champion v{champion[0]} {champion[2]}")
    return decision


def register(name: str, uri: str, decision: revenue.Decision) -> str:
    """Register the run's winner as a new version of ``name``, tagged with the gate's reasons."""
    version = str(mlflow.register_model(uri, name).version)
    client = MlflowClient()
    client.set_model_version_tag(name, version, "gate", "; ".join(decision.reasons))
    client.set_model_version_tag(name, version, "candidate", decision.winner)
    return version


def promote(name: str, version: str, decision: revenue.Decision) -> None:
    """Move the ``champion`` alias to ``version`` if the gate says so; tag the run either way."""
    if decision.promote:
        MlflowClient().set_registered_model_alias(name, "champion", version)
    mlflow.set_tags({"promoted": str(decision.promote).lower(), "winner": decision.winner,
                     "gate": "; ".join(decision.reasons)})


def train_one(settings: Settings, prepared: Prepared, net: NetSettings, params: dict,
              run_name: str) -> tuple[dict[str, float], revenue.Decision, str, str, pd.DataFrame]:
    """One MLflow run of the steps above. Returns (the network's metrics, decision,
    registered version, run id, every candidate's interval coverage per decile)."""
    spec = prepared.spec
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({**params, **{f"net_{k}": v for k, v in net.model_dump().items()}})
        for dataset, context in prepared.inputs:
            mlflow.log_input(dataset, context=context)
        fitted = fit(settings, spec, net, prepared.train, prepared.log_mask)
        network = network_model(fitted, prepared.train)
        scores, coverage = evaluate(network, fitted, prepared)
        candidates = {"torch": network, **{b: revenue.RevenueModel(m, prepared.residuals[b])
                                           for b, m in prepared.baselines.items()}}
        uris = log_candidates(candidates, prepared.test.frame[list(spec.features)])
        decision = validate(scores, prepared)
        name = tracking.model_name(settings, spec.name)
        version = register(name, uris[decision.winner], decision)
        promote(name, version, decision)
        return scores, decision, version, run.info.run_id, coverage


def execute(spark: SparkSession, settings: Settings, summary: Summary, models: tuple[str, ...] = MODELS,
            sweep: bool = False) -> Summary:
    if not lake.exists(spark, settings, EVENTS):
        raise MissingInput(f"silver.events not found under {settings.lake_root}: run jobs.refine first")
    silver_version = lake.version(spark, settings, EVENTS)
    silver = lake.read(spark, settings, EVENTS, as_of_version=silver_version)
    personas_version = lake.version(spark, settings, USER_PERSONAS) if lake.exists(spark, settings, USER_PERSONAS) else None
    nets = settings.train.sweep_nets() if sweep else [settings.train.net]
    tracking.experiment(settings, "revenue")
    has_creators = "creator_platform_revenue" in models and \
        silver.where(F.col("creator_id").isNotNull()).limit(1).count() > 0
    for model in models:
        if model == "creator_platform_revenue" and not has_creators:
            summary.skip(f"{model} skipped: the events name no creator (no creator_id in the mappings), so there "
                         "is no creator x platform revenue to learn; synergy and expansion are skipped too")
            continue
        prepared = prepare(spark, settings, summary, model, silver, silver_version, personas_version)
        if prepared is None:
            continue
        summary.note("  baselines: " + "; ".join(f"{b} Gini {m['gini']:.3f} Spearman {m['spearman']:.3f} "
                                                  f"total error {m['total_error_pct']:+.1f}%, "
                                                  f"P10-P90 covers {report.coverage_text(m)}"
                                                  for b, m in prepared.base.items()))
        if prepared.champion:
            version, scores, what = prepared.champion
            shown = f"Gini {scores['gini']:.3f}, total error {scores['total_error_pct']:+.1f}%" if scores else what
            summary.note(f"  champion v{version} ({shown})")
        for i, net in enumerate(nets):
            run_name = f"{model}-{settings.as_of}" + (f"-sweep{i}" if sweep else "")
            scores, decision, version, run_id, coverage = train_one(
                settings, prepared, net, {**prepared.params, "sweep": sweep}, run_name)
            verdict = "promoted to @champion" if decision.promote else "registered, not promoted"
            summary.note(f"  torch (hidden {list(net.hidden)}): Gini {scores['gini']:.3f}, Spearman "
                         f"{scores['spearman']:.3f}, RMSE {scores['rmse']:.2f}, total error "
                         f"{scores['total_error_pct']:+.1f}%, P10-P90 covers {report.coverage_text(scores)}; "
                         f"run {run_id}")
            for line in report.coverage_lines(coverage, ("torch", decision.winner)):
                summary.note(line)
            summary.note(f"  winner {decision.winner} -> {tracking.model_name(settings, model)} v{version}, {verdict}")
            summary.note("    gate: " + "; ".join(decision.reasons))
            summary.result(model, {"run_id": run_id, "version": version, "winner": decision.winner,
                                   "promoted": decision.promote, "test": scores})
            if decision.promote:  # the next sweep entry must beat this one
                won = scores if decision.winner == "torch" else prepared.base[decision.winner]
                prepared.champion = (version, won, "promoted in this sweep")
    return summary


def training_data(spark: SparkSession, settings: Settings, model: str, silver: DataFrame,
                  personas_version: int | None) -> tuple[training.ModelSpec, Split, Split, list, object]:
    """(spec, train split, test split, training dates, test date): the stratified samples of
    the point-in-time rows, in pandas. Raises NotEnoughData when they cannot train a model."""
    cfg = settings.train
    spec, rows, train_dates, test_date = training_rows(spark, settings, model, silver, personas_version)
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # counted per stratum, then sampled
    keys = list(spec.keys)
    is_test = F.col("as_of_date") == F.lit(test_date)
    sampled = (training.stratified_sample(rows.where(~is_test), ["stratum"], cfg.sample_cap, cfg.seed, [*keys, "as_of_date"])
               .unionByName(training.stratified_sample(rows.where(is_test), ["stratum"], cfg.sample_cap, cfg.seed, keys)))
    # Folds hold out whole users (pairs): each network is early-stopped on unseen ones.
    fold = F.abs(F.xxhash64(F.lit(cfg.seed + 1), *[F.col(k) for k in keys])) % cfg.folds
    sampled = (sampled.withColumn("split", F.when(is_test, "test").otherwise("train"))
                      .withColumn("fold", F.when(is_test, F.lit(-1)).otherwise(fold)))
    carried = training.CARRIED if model == "user_revenue" else ()
    own = [c for c in spec.features if c not in training.BTYD_OUTPUTS]
    pdf = (sampled.select(*keys, "as_of_date", *own, *carried, "label", "weight", "split", "fold")
           .toPandas().sort_values([*keys, "as_of_date"], kind="mergesort"))  # same order on any cluster
    fits = {}
    if model == "user_revenue":
        pdf, fits = _with_btyd(rows, pdf, [*train_dates, test_date], cfg)
    rows.unpersist()
    train, test = (_split(pdf[pdf["split"] == s].reset_index(drop=True), spec) for s in ("train", "test"))
    if len(np.unique(train.fold)) < cfg.folds or len(test.y) == 0 or (test.y > 0).sum() == 0:
        raise NotEnoughData(f"{model}: too little data to train (train {len(train.y)} rows in "
                            f"{len(np.unique(train.fold))} of {cfg.folds} folds, test {len(test.y)} rows, "
                            f"{(test.y > 0).sum()} with revenue in the test window); ingest more history before "
                            f"--as-of {settings.as_of}, or lower train.folds")
    return spec, train, test, train_dates, test_date, fits


def _with_btyd(rows: DataFrame, pdf: pd.DataFrame, dates: list, cfg) -> tuple[pd.DataFrame, dict]:
    """``pdf`` with the BTYD outputs: for each feature date, BG/NBD x Gamma-Gamma fitted on the
    RFM summary of that date's customers (all rows, not the sample; above
    train.btyd_sample_cap a sample), then applied to the date's sampled rows. A fit uses
    nothing after its date, so the features stay point in time. Returns the fits by date."""
    pdf = pdf.reset_index(drop=True)
    outputs, fits = [], {}
    for t in dates:
        started = time.monotonic()
        on = rows.where(F.col("as_of_date") == F.lit(t))
        fits[t] = btyd.fit(btyd.rfm_sample(on, cfg.btyd_sample_cap, cfg.seed))
        at = pdf.index[pdf["as_of_date"] == t]
        outputs.append(btyd.predict(fits[t], pdf.loc[at], cfg.horizon_days))
        log.info("BTYD fit as of %s in %.1f s: %s", t, time.monotonic() - started, fits[t])
    added = pd.concat(outputs).reindex(pdf.index)
    if any(f is None for f in fits.values()):  # features must mean the same on every date: all or none
        added[:] = np.nan
    return pd.concat([pdf, added], axis=1), fits


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all",
                        help="which model to train (default: all)")
    parser.add_argument("--sweep", action="store_true",
                        help="train one run per train.sweep configuration, to compare in the MLflow UI")


def _options(args: argparse.Namespace) -> dict:
    return {"models": MODELS if args.model == "all" else (args.model,), "sweep": args.sweep}


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs.train", __doc__, argv, execute, add_arguments=_arguments, options=_options)


if __name__ == "__main__":
    sys.exit(main())
