"""The buy-till-you-die baseline: BG/NBD x Gamma-Gamma from pymc-marketing's CLV module.

BG/NBD (Fader, Hardie & Lee 2005) models each customer's repeat purchases as a Poisson process
whose rate is gamma-distributed over customers, ended after any purchase with a probability that
is beta-distributed over customers. Gamma-Gamma (Fader & Hardie 2013) models the spend per
purchase. Both are fitted by MAP on a per-customer RFM summary in days (frequency = repeat paid
days, recency = days from the first to the last paid day, T = days since the first paid day,
monetary value = mean spend of the repeat paid days): the purchase rhythm of
``gold.user_features`` (``purchase_days``, ``purchase_recency_days``, ``purchase_age_days``,
``repeat_spend_mean``). A user who never paid is not a customer yet: the models say nothing of
them (expected purchases 0, P(alive) and spend per purchase missing).

The fit keeps only seven numbers (:class:`Params`); scoring rebuilds the models around them on
each batch of users, so executors never need the training data. Pure functions over pandas and
Spark DataFrames; nothing here reads or writes storage or MLflow.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType

from transforms.training import BTYD_OUTPUTS as OUTPUTS
from transforms.training import RFM_COLUMNS

log = logging.getLogger(__name__)
# Fewer repeat customers than this give no stable fit: no baseline, the outputs stay missing.
MIN_REPEAT_CUSTOMERS = 20


@dataclass(frozen=True)
class Params:
    """MAP estimates: BG/NBD (r, alpha in days, a, b) and Gamma-Gamma (p, q, v), and the
    customers they were fitted on."""
    r: float
    alpha: float
    a: float
    b: float
    p: float
    q: float
    v: float
    customers: int
    repeat_customers: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _quiet() -> None:
    # PyTensor warns about its BLAS on every import from pip; the fit's progress is ours to log.
    warnings.filterwarnings("ignore", module="pytensor")
    warnings.filterwarnings("ignore", message=".*BLAS.*")
    for name in ("pymc", "pytensor", "pymc_marketing"):
        logging.getLogger(name).setLevel(logging.ERROR)


def rfm(rows: pd.DataFrame) -> pd.DataFrame:
    """The RFM summary (customer_id, frequency, recency, T, monetary_value) of the rows that
    are customers (at least one paid day), from the :data:`RFM_COLUMNS`. ``customer_id`` is
    the row position, so any keys may stand behind the rows."""
    days = pd.to_numeric(rows["purchase_days"], errors="coerce").fillna(0).to_numpy()
    paid = days > 0
    age = pd.to_numeric(rows["purchase_age_days"], errors="coerce").to_numpy(np.float64)[paid]
    last = pd.to_numeric(rows["purchase_recency_days"], errors="coerce").to_numpy(np.float64)[paid]
    spend = pd.to_numeric(rows["repeat_spend_mean"], errors="coerce").to_numpy(np.float64)[paid]
    frequency = days[paid] - 1
    return pd.DataFrame({"customer_id": np.flatnonzero(paid), "frequency": frequency.astype(np.float64),
                         "recency": age - last, "T": age,
                         "monetary_value": np.where(frequency > 0, np.nan_to_num(spend), 0.0)})


def _gamma_gamma_priors() -> dict:
    """Weak half-normal priors on p, q and v (spend in units of its mean) instead of
    pymc-marketing's flat ones. With flat priors, customers whose spend varies little between
    them leave the MAP on a ridge towards q -> infinity, where the optimiser stopped at
    p = 1e-40, q = 1e29 (spend forecasts 10^4 times too high) for one order of the same rows
    and at a sound optimum for another. A scale of 100 barely moves a sound optimum."""
    from pymc_extras.prior import Prior

    return {k: Prior("HalfNormal", sigma=100.0) for k in ("p", "q", "v")}


def fit(summary: pd.DataFrame) -> Params | None:
    """MAP fit of BG/NBD on every customer of ``summary`` (:func:`rfm`) and of Gamma-Gamma on
    the repeat customers with a positive mean spend. None when there are fewer than
    :data:`MIN_REPEAT_CUSTOMERS` repeat customers, or the optimiser fails."""
    repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    if len(repeat) < MIN_REPEAT_CUSTOMERS:
        log.info("BTYD: %d repeat customers, fewer than %d: no fit", len(repeat), MIN_REPEAT_CUSTOMERS)
        return None
    _quiet()
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    # Spend in units of its mean: Gamma-Gamma is scale-equivariant (v scales with spend), so the
    # priors below mean the same for any currency, and v is scaled back after the fit.
    scale = float(repeat["monetary_value"].mean())
    try:
        bg = BetaGeoModel(data=summary[["customer_id", "frequency", "recency", "T"]])
        bg.fit(method="map", progressbar=False)
        gg = GammaGammaModel(data=repeat[["customer_id", "frequency"]].assign(
            monetary_value=repeat["monetary_value"] / scale), model_config=_gamma_gamma_priors())
        gg.fit(method="map", progressbar=False)
    except Exception as err:  # an optimiser failure leaves the baseline out; training goes on
        log.warning("BTYD fit failed (%s): no BTYD baseline", err)
        return None
    point = {k: float(m.fit_result[k].mean()) for m, ks in ((bg, "r alpha a b"), (gg, "p q v")) for k in ks.split()}
    point["v"] *= scale
    if not all(np.isfinite(list(point.values()))) or point["q"] <= 1:
        log.warning("BTYD fit gave unusable parameters %s: no BTYD baseline", point)
        return None
    return Params(**point, customers=len(summary), repeat_customers=len(repeat))


def predict(params: Params | None, rows: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """:data:`OUTPUTS` for every row (same index): expected paid days in the next
    ``horizon_days``, P(alive) and expected spend per paid day for customers; 0, NaN, NaN for
    the rest, and NaN everywhere without ``params``."""
    out = pd.DataFrame({c: np.nan for c in OUTPUTS}, index=rows.index)
    if params is None:
        return out
    out["btyd_purchases"] = 0.0
    summary = rfm(rows)
    if summary.empty:
        return out
    _quiet()
    import arviz as az
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    def point(names: str) -> az.InferenceData:
        return az.from_dict(posterior={k: np.array([[getattr(params, k)]]) for k in names.split()})

    bg = BetaGeoModel(data=summary[["customer_id", "frequency", "recency", "T"]])
    bg.build_model()
    bg.idata = point("r alpha a b")
    gg = GammaGammaModel(data=summary[["customer_id", "frequency", "monetary_value"]])
    gg.idata = point("p q v")
    at = summary["customer_id"].to_numpy()
    out.iloc[at, 0] = np.ravel(bg.expected_purchases(summary, future_t=horizon_days).values)
    out.iloc[at, 1] = np.ravel(bg.expected_probability_alive(summary).values)
    out.iloc[at, 2] = np.ravel(gg.expected_customer_spend(summary).values)
    return out


def rfm_sample(frame: DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """The RFM summary (:func:`rfm`) of the customers in ``frame``: all of them up to ``cap``,
    a hash sample of about ``cap`` above it. Only this reaches the driver."""
    customers = frame.where(F.col("purchase_days") > 0).select(*RFM_COLUMNS, "user_id")
    n = customers.count()
    if n > cap:
        u = F.abs(F.xxhash64(F.lit(seed), F.col("user_id"))) % 1_000_000 / 1_000_000.0
        customers = customers.where(u < F.lit(cap / n))
    # in user order, so that the fit sees the same rows in the same order on any partitioning
    return rfm(customers.toPandas().sort_values("user_id", kind="mergesort").drop(columns="user_id")
               .reset_index(drop=True))


def with_outputs(frame: DataFrame, params: Params | None, horizon_days: int) -> DataFrame:
    """``frame`` (with the :data:`RFM_COLUMNS`) with the :data:`OUTPUTS` columns, computed
    on the executors in Arrow batches."""
    columns = frame.columns
    schema = StructType([*frame.schema.fields, *[StructField(c, DoubleType()) for c in OUTPUTS]])

    def score(batches):
        for batch in batches:
            yield pd.concat([batch[columns].reset_index(drop=True),
                             predict(params, batch.reset_index(drop=True), horizon_days)], axis=1)

    return frame.mapInPandas(score, schema)
