"""Revenue regressors: a torch MLP with a zero-inflated lognormal head, the baselines it is
measured against, weighted held-out metrics, and the rule that picks the champion.

Revenue is zero for most users and heavy-tailed for the rest, so the network predicts three
things per row: the probability p of any revenue, and the mean mu and spread sigma of log
revenue when there is some (Wang, Liu & Miao 2019, "A deep probabilistic model for customer
lifetime value prediction"). The loss is the negative log-likelihood of that mixture; the
prediction is its mean p * exp(mu + sigma^2 / 2). K networks are cross-fitted on folds of
users and averaged; their out-of-fold predictions calibrate the total. The module
carries its own preprocessing (signed log, median imputation, z-scores) as buffers, so the
logged model takes the raw feature columns.

Every candidate also gives P10 / P50 / P90 of the revenue: the network from its own
distribution (the mixture of its members' zero-inflated lognormals), a baseline from the
empirical quantiles of its out-of-fold errors (:class:`ResidualQuantiles`). :class:`RevenueModel`
is the one MLflow pyfunc form every candidate is logged in: the mean by default, the
quantiles beside it when asked (``params={"intervals": True}``).

Pure functions over pandas / numpy / torch; nothing here touches storage, and MLflow only as
the base class of :class:`RevenueModel`.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from scipy import special
from sklearn.base import BaseEstimator, RegressorMixin, clone
from torch import nn

if TYPE_CHECKING:  # the logged model carries ml/ only: nothing here may need jobs/ at run time
    from core.settings import NetSettings

log = logging.getLogger(__name__)
METRICS = ("rmse", "mae", "gini", "spearman", "total_error_pct")


class RevenueNet(nn.Module):
    """Raw features in (float32, NaN for missing), expected revenue out (1-D)."""

    def __init__(self, n_features: int, hidden: tuple[int, ...], dropout: float, log_mask: np.ndarray,
                 median: np.ndarray, mean: np.ndarray, std: np.ndarray, lo: np.ndarray | None = None,
                 hi: np.ndarray | None = None, loss: str = "ziln"):
        super().__init__()
        self.loss = loss
        # Inputs are clipped to the range seen in training: a network extrapolates linearly
        # (e.g. tenure keeps growing after training), trees and people do not.
        self.register_buffer("lo", torch.as_tensor(np.full(n_features, -np.inf) if lo is None else lo, dtype=torch.float32))
        self.register_buffer("hi", torch.as_tensor(np.full(n_features, np.inf) if hi is None else hi, dtype=torch.float32))
        self.register_buffer("log_mask", torch.as_tensor(log_mask, dtype=torch.bool))
        self.register_buffer("median", torch.as_tensor(median, dtype=torch.float32))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        # ziln: logit p, mu, raw sigma; tweedie: log of the mean
        self.head = nn.Linear(width, 3 if loss == "ziln" else 1)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log_mask, torch.sign(x) * torch.log1p(torch.abs(x)), x)
        x = torch.where(torch.isnan(x), self.median, x)
        return (torch.minimum(torch.maximum(x, self.lo), self.hi) - self.mean) / self.std

    def parameters_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.head(self.body(self.prepare(x)))
        return out[:, 0], out[:, 1], 0.05 + 1.45 * torch.sigmoid(out[:, 2])

    def log_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.prepare(x)))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.loss != "ziln":
            return torch.exp(torch.clamp(self.log_mean(x), max=30.0))
        logit, mu, sigma = self.parameters_of(x)
        return torch.sigmoid(logit) * torch.exp(torch.clamp(mu + 0.5 * sigma * sigma, max=30.0))


class Ensemble(nn.Module):
    """The mean of K networks, each trained with another fold of users held out, times one
    calibration factor. This is what gets logged and scored."""

    def __init__(self, members: list[RevenueNet], scale: float = 1.0):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("scale", torch.tensor(float(scale)))

    @property
    def has_distribution(self) -> bool:
        """Whether the members are zero-inflated lognormals (not Tweedie means only)."""
        return all(m.loss == "ziln" for m in self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.stack([m(x) for m in self.members]).mean(dim=0)


def ziln_loss(logit: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor,
              w: torch.Tensor) -> torch.Tensor:
    """Weighted mean negative log-likelihood of the zero-inflated lognormal (y <= 0 counts as zero)."""
    positive = (y > 0).float()
    bce = nn.functional.binary_cross_entropy_with_logits(logit, positive, reduction="none")
    log_y = torch.log(torch.clamp(y, min=1e-6))
    nll = positive * (torch.log(sigma) + 0.5 * math.log(2 * math.pi) + log_y
                      + (log_y - mu) ** 2 / (2 * sigma * sigma))
    return ((bce + nll) * w).sum() / w.sum()


def tweedie_loss(log_mean: torch.Tensor, y: torch.Tensor, w: torch.Tensor, power: float = 1.5) -> torch.Tensor:
    """Weighted mean Tweedie deviance (up to terms free of the prediction), 1 < power < 2: a
    compound Poisson-gamma, zero with positive probability and skewed above zero."""
    y = torch.clamp(y, min=0)
    lm = torch.clamp(log_mean, max=30.0)
    dev = -y * torch.exp(lm * (1 - power)) / (1 - power) + torch.exp(lm * (2 - power)) / (2 - power)
    return (dev * w).sum() / w.sum()


def batch_loss(model: RevenueNet, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if model.loss == "ziln":
        return ziln_loss(*model.parameters_of(x), y, w)
    return tweedie_loss(model.log_mean(x), y, w)


@dataclass
class Fit:
    model: RevenueNet
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, train, validation)
    best_epoch: int = 0


def signed_log(x: np.ndarray, log_mask: np.ndarray) -> np.ndarray:
    """sign(x) * ln(1 + |x|) in the masked columns (what RevenueNet.prepare does in torch)."""
    return np.where(log_mask, np.sign(x) * np.log1p(np.abs(x)), x)


def _scaling(x: np.ndarray, log_mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Median, mean, std, min and max of the training features after the signed log."""
    z = signed_log(x, log_mask)
    median = np.nan_to_num(np.nanmedian(np.where(np.isnan(z).all(axis=0), 0.0, z), axis=0))
    z = np.where(np.isnan(z), median, z)
    std = z.std(axis=0)
    return median, z.mean(axis=0), np.where(std > 1e-9, std, 1.0), z.min(axis=0), z.max(axis=0)


def fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, w_val: np.ndarray,
        log_mask: np.ndarray, net: NetSettings, seed: int,
        progress: Callable[[int, float, float], None] | None = None) -> Fit:
    """Train with Adam on the configured loss (ZILN or Tweedie); stop when the validation loss has not improved for
    ``net.patience`` epochs and keep the best epoch's weights."""
    torch.manual_seed(seed)
    x, x_val = x.astype(np.float32), x_val.astype(np.float32)
    model = RevenueNet(x.shape[1], tuple(net.hidden), net.dropout, log_mask, *_scaling(x, log_mask), loss=net.loss)
    opt = torch.optim.Adam(model.parameters(), lr=net.learning_rate, weight_decay=net.weight_decay)
    tx, ty, tw = (torch.as_tensor(a, dtype=torch.float32) for a in (x, y, w))
    vx, vy, vw = (torch.as_tensor(a, dtype=torch.float32) for a in (x_val, y_val, w_val))
    gen = torch.Generator().manual_seed(seed)
    result, best, best_state, stale = Fit(model), math.inf, None, 0
    for epoch in range(1, net.max_epochs + 1):
        model.train()
        total, seen = 0.0, 0.0
        for idx in torch.randperm(len(tx), generator=gen).split(net.batch_size):
            opt.zero_grad()
            loss = batch_loss(model, tx[idx], ty[idx], tw[idx])
            loss.backward()
            opt.step()
            total += loss.item() * float(tw[idx].sum())
            seen += float(tw[idx].sum())
        model.eval()
        with torch.no_grad():
            val = batch_loss(model, vx, vy, vw).item()
        result.history.append((epoch, total / seen, val))
        if progress:
            progress(epoch, total / seen, val)
        if val < best - 1e-5:
            best, best_state, stale, result.best_epoch = val, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            stale += 1
            if stale >= net.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


@dataclass
class CrossFit:
    model: Ensemble
    folds: list[Fit]
    out_of_fold: np.ndarray  # each training row predicted by the member that did not see it


def cross_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, fold: np.ndarray, log_mask: np.ndarray,
              net: NetSettings, seed: int,
              progress: Callable[[int, int, float, float], None] | None = None,
              calibrate: np.ndarray | None = None) -> CrossFit:
    """K-fold cross-fitting: for each fold, a network trained on the other folds and early-
    stopped on this one. The ensemble averages them (less variance than one network), and
    the out-of-fold predictions fix one calibration factor: the lognormal mean
    exp(mu + sigma^2 / 2) is sensitive to sigma in the tail, and an estimate on many rows is
    far steadier than one on a single validation fold. ``calibrate`` (a row mask) picks the
    rows it is fitted on: the latest training date's, whose labels are the most recent ones
    fully observed, so the total follows the customer base as it is now (acquisition and
    dropout shift it between dates); all rows when None."""
    fits, oof = [], np.zeros(len(y))
    for i, k in enumerate(np.unique(fold)):
        held = fold == k
        report = (lambda e, t, v, k=int(k): progress(k, e, t, v)) if progress else None
        f = fit(x[~held], y[~held], w[~held], x[held], y[held], w[held], log_mask, net, seed + i, report)
        oof[held] = predict(f.model, x[held])
        fits.append(f)
    on = np.ones(len(y), dtype=bool) if calibrate is None else calibrate
    predicted, actual = float(np.sum((w * oof)[on])), float(np.sum((w * np.clip(y, 0, None))[on]))
    scale = actual / predicted if predicted > 0 and actual > 0 else 1.0
    return CrossFit(Ensemble([f.model for f in fits], scale), fits, oof * scale)


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x.astype(np.float32))).numpy().astype(np.float64)


# -- metrics ------------------------------------------------------------------------------
def _weighted_ranks(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mid-ranks in cumulative weight (ties share one), so that weighted rows count as copies."""
    order = np.argsort(v, kind="mergesort")
    sv, sw = v[order], w[order]
    cum = np.cumsum(sw)
    _, start, counts = np.unique(sv, return_index=True, return_counts=True)
    mids = np.empty_like(cum)
    for s, c in zip(start, counts):
        lo = cum[s - 1] if s else 0.0
        mids[s:s + c] = (lo + cum[s + c - 1]) / 2
    ranks = np.empty_like(mids)
    ranks[order] = mids
    return ranks


def _weighted_corr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    ma, mb = np.average(a, weights=w), np.average(b, weights=w)
    cov = np.average((a - ma) * (b - mb), weights=w)
    den = math.sqrt(np.average((a - ma) ** 2, weights=w) * np.average((b - mb) ** 2, weights=w))
    return float(cov / den) if den > 0 else float("nan")


def _gini(actual: np.ndarray, score: np.ndarray, w: np.ndarray) -> float:
    """Weighted Gini of ``actual`` ordered by ``score`` (highest first): twice the area between
    the cumulative share of actual revenue and the cumulative share of rows, both piecewise
    linear. Rows with the same score form one segment, so ties do not depend on row order,
    and a row of weight 3 counts exactly as three copies."""
    groups, inverse = np.unique(-score, return_inverse=True)
    a = np.bincount(inverse, weights=actual * w, minlength=len(groups))
    ww = np.bincount(inverse, weights=w, minlength=len(groups))
    total = a.sum()
    if total == 0:
        return float("nan")
    rows = np.concatenate([[0.0], np.cumsum(ww) / ww.sum()])
    captured = np.concatenate([[0.0], np.cumsum(a) / total])
    gap = (captured[1:] + captured[:-1] - rows[1:] - rows[:-1]) / 2
    return float(2 * np.sum(gap * ww) / ww.sum())


def metrics(actual: np.ndarray, predicted: np.ndarray, weight: np.ndarray | None = None) -> dict[str, float]:
    """Held-out metrics, weighted by the sampling weights: RMSE, MAE, normalised Gini (the
    model's Gini over the Gini of a perfect ordering; 1 is perfect, 0 random), Spearman, and
    the total-revenue error in percent (signed: negative means under-predicted)."""
    w = np.ones_like(actual) if weight is None else weight
    err = predicted - actual
    total = float(np.sum(w * actual))
    best = _gini(actual, actual, w)
    return {
        "rmse": float(math.sqrt(np.average(err ** 2, weights=w))),
        "mae": float(np.average(np.abs(err), weights=w)),
        "gini": _gini(actual, predicted, w) / best if best else float("nan"),
        "spearman": _weighted_corr(_weighted_ranks(actual, w), _weighted_ranks(predicted, w), w),
        "total_error_pct": float(100 * np.sum(w * err) / total) if total else float("nan"),
    }


def decile_of(predicted: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each row's decile of the prediction (1 = lowest); the deciles cut the cumulative
    weight, so each holds a tenth of the population."""
    order = np.argsort(predicted, kind="mergesort")
    cum = np.cumsum(weight[order]) / weight.sum()
    decile = np.empty(len(order), dtype=int)
    decile[order] = np.clip(np.ceil(cum * 10 - 1e-9), 1, 10).astype(int)
    return decile


def deciles(actual: np.ndarray, predicted: np.ndarray, weight: np.ndarray) -> pd.DataFrame:
    """Weighted mean predicted and actual revenue per decile of the prediction (:func:`decile_of`)."""
    decile = decile_of(predicted, weight)
    df = pd.DataFrame({"decile": decile, "w": weight, "wa": actual * weight, "wp": predicted * weight})
    g = df.groupby("decile")
    return pd.DataFrame({"population": g.w.sum(), "mean_predicted": g.wp.sum() / g.w.sum(),
                         "mean_actual": g.wa.sum() / g.w.sum()}).reset_index()


def backtest(actual: np.ndarray, predicted: dict[str, np.ndarray], weight: np.ndarray,
             cohort: np.ndarray) -> pd.DataFrame:
    """Predicted against realised revenue on the held-out horizon, as weighted totals: per
    decile of the first model's prediction, per acquisition ``cohort`` (a label per row), and
    over everyone. One row per (segment, group) with the population, the actual total and
    one ``predicted_<model>`` total per model."""
    decile = decile_of(next(iter(predicted.values())), weight)
    df = pd.DataFrame({"decile": [f"{d:02d}" for d in decile], "cohort": cohort, "all": "all users",
                       "population": weight, "actual": actual * weight,
                       **{f"predicted_{k}": v * weight for k, v in predicted.items()}})
    values = ["population", "actual", *[f"predicted_{k}" for k in predicted]]
    parts = [df.groupby(seg)[values].sum().reset_index().rename(columns={seg: "group"}).assign(segment=seg)
             for seg in ("decile", "cohort", "all")]
    return pd.concat(parts, ignore_index=True)[["segment", "group", *values]]


# -- baselines ----------------------------------------------------------------------------
# Candidates in order of preference when their held-out Gini ties: the network first.
CANDIDATES = ("torch", "hgb", "linear", "btyd", "naive")


class NaiveRevenue(BaseEstimator, RegressorMixin):
    """The naive baseline as a model: the revenue of the last period (feature ``column``),
    scaled to the horizon by ``factor``. An estimator, so it is logged, registered and scored
    like the others."""

    def __init__(self, column: int = 0, factor: float = 1.0):
        self.column = column
        self.factor = factor

    def fit(self, x, y=None, sample_weight=None) -> "NaiveRevenue":
        return self

    def predict(self, x) -> np.ndarray:
        return np.nan_to_num(np.asarray(x, dtype=np.float64)[:, self.column]) * self.factor


class BTYDRevenue(BaseEstimator, RegressorMixin):
    """The BTYD baseline as a model: expected paid days in the horizon (feature ``purchases``)
    times expected spend per paid day (feature ``spend``), both computed by ml.btyd from its
    BG/NBD x Gamma-Gamma fit as of the row's date. Nothing is learnt from the labels."""

    def __init__(self, purchases: int = 0, spend: int = 1):
        self.purchases = purchases
        self.spend = spend

    def fit(self, x, y=None, sample_weight=None) -> "BTYDRevenue":
        return self

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.nan_to_num(x[:, self.purchases]) * np.nan_to_num(x[:, self.spend])


def fit_baselines(x: np.ndarray, y: np.ndarray, w: np.ndarray, log_mask: np.ndarray, seed: int,
                  naive_column: int, naive_factor: float,
                  btyd_columns: tuple[int, int] | None = None) -> dict[str, BaseEstimator]:
    """The baselines, fitted on the same training rows and weights: naive (revenue of the
    previous period, scaled), linear (ridge on the same signed-log, imputed, standardised
    features), scikit-learn's HistGradientBoosting with a Poisson loss, and BTYD where
    ``btyd_columns`` (expected purchases, spend per purchase) are given. Each takes the raw
    feature columns, as the network does."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    linear = make_pipeline(FunctionTransformer(signed_log, kw_args={"log_mask": log_mask}), SimpleImputer(strategy="median"),
                           StandardScaler(), Ridge(alpha=1.0))
    hgb = HistGradientBoostingRegressor(loss="poisson", random_state=seed)
    out = {"naive": NaiveRevenue(naive_column, naive_factor), "linear": _fit_baseline(linear, x, y, w),
           "hgb": _fit_baseline(hgb, x, y, w)}
    if btyd_columns is not None:
        out["btyd"] = BTYDRevenue(*btyd_columns)
    return out


def _fit_baseline(model: BaseEstimator, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> BaseEstimator:
    """Fit one learning baseline as fit_baselines does: ridge on the net revenue, gradient
    boosting (a Poisson loss, which needs y >= 0) on the revenue floored at zero."""
    if hasattr(model, "steps"):
        return model.fit(x, y, ridge__sample_weight=w)
    return model.fit(x, np.clip(y, 0, None), sample_weight=w)


# The baselines that learn from the labels: their predictions of their own training rows are
# too good, so their errors are measured out of fold. naive and btyd learn nothing from the
# labels: their predictions of the training rows are already out of sample.
LEARNS_FROM_LABELS = ("linear", "hgb")


def baseline_out_of_fold(baselines: dict[str, BaseEstimator], x: np.ndarray, y: np.ndarray, w: np.ndarray,
                         fold: np.ndarray) -> dict[str, np.ndarray]:
    """Each baseline's prediction of every training row by a model that did not see the row:
    for linear and hgb, a copy fitted on the other folds (the network's folds of users); for
    naive and btyd the fitted model itself."""
    out = {}
    for name, model in baselines.items():
        if name not in LEARNS_FROM_LABELS:
            out[name] = np.asarray(model.predict(x), dtype=np.float64)
            continue
        oof = np.zeros(len(y))
        for k in np.unique(fold):
            held = fold == k
            oof[held] = _fit_baseline(clone(model), x[~held], y[~held], w[~held]).predict(x[held])
        out[name] = oof
    return out


def informative(x: np.ndarray) -> np.ndarray:
    """Which columns hold at least two distinct values (NaN aside): an all-missing or constant
    column teaches a model nothing, and an all-missing one breaks gradient boosting's binning."""
    keep = np.zeros(x.shape[1], dtype=bool)
    for j in range(x.shape[1]):
        col = x[:, j][~np.isnan(x[:, j])]
        keep[j] = col.size > 0 and np.nanmax(col) > np.nanmin(col)
    return keep


# -- prediction intervals -----------------------------------------------------------------
QUANTILES = (0.1, 0.5, 0.9)
INTERVAL_COLUMNS = ("p10", "p50", "p90")
OUTPUT_COLUMNS = ("prediction", *INTERVAL_COLUMNS)  # what RevenueModel returns when asked for intervals
INTERVALS = "intervals"  # RevenueModel's parameter: true returns OUTPUT_COLUMNS, not the mean alone
# Bisection steps on log revenue: the bracket is at most ~80 wide (mu and 12 sigma either
# side), and 2^-48 of it is a relative error of 3e-13 in the quantile.
_BISECTIONS = 48
# exp() of more than this overflows nothing but means nothing either (RevenueNet clamps the same)
_MAX_LOG = 30.0


def ziln_quantile(p: np.ndarray, mu: np.ndarray, sigma: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of one zero-inflated lognormal (revenue 0 with probability 1 - p, else
    log revenue ~ N(mu, sigma)): 0 where q <= 1 - p (the atom at zero holds it), else
    exp(mu + sigma * Phi^-1((q - (1 - p)) / p))."""
    p, mu, sigma = (np.asarray(a, dtype=np.float64) for a in (p, mu, sigma))
    zero = 1.0 - p
    level = np.clip((q - zero) / np.where(p > 0, p, 1.0), 1e-300, 1.0)
    positive = np.exp(np.minimum(mu + sigma * special.ndtri(level), _MAX_LOG))
    return np.where(q > zero, positive, 0.0)


def mixture_quantiles(p: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                      levels: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """Quantiles of the equal-weight mixture of K zero-inflated lognormals per row.

    ``p``, ``mu``, ``sigma``: (K, rows). Returns (rows, len(levels)). The mixture holds
    revenue 0 with probability mean(1 - p_k); a level at or below that is 0. Above it the
    CDF, mean over k of (1 - p_k) + p_k * Phi((log y - mu_k) / sigma_k), is solved for log y by
    bisection, all rows at once."""
    p, mu, sigma = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (p, mu, sigma))
    zero = (1.0 - p).mean(axis=0)
    # Every member's CDF is below Phi(-12) at the low end and above Phi(12) at the high end.
    low, high = (mu - 12 * sigma).min(axis=0), (mu + 12 * sigma).max(axis=0)
    out = np.zeros((p.shape[1], len(levels)))
    for j, q in enumerate(levels):
        lo, hi = low.copy(), high.copy()
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            below = ((1.0 - p) + p * special.ndtr((mid - mu) / sigma)).mean(axis=0) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out[:, j] = np.where(q > zero, np.exp(np.minimum((lo + hi) / 2, _MAX_LOG)), 0.0)
    # Each level is solved on its own: keep them ordered even where two agree to rounding.
    return np.maximum.accumulate(out, axis=1)


def member_distributions(model: Ensemble, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, mu, sigma), each (K, rows): every member's chance of revenue and its lognormal."""
    with torch.no_grad():
        tx = torch.as_tensor(x.astype(np.float32))
        params = [m.parameters_of(tx) for m in model.members]
    logit, mu, sigma = (np.stack([np.asarray(t[i], dtype=np.float64) for t in params]) for i in range(3))
    return special.expit(logit), mu, sigma


def ensemble_quantiles(model: Ensemble, x: np.ndarray, levels: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """The network's quantiles of each row's revenue, from its own distribution.

    The ensemble predicts the mean of its K members' means, which is the mean of the
    equal-weight mixture of their distributions: so its quantiles are the mixture's (averaging
    the members' quantiles instead would describe no distribution whose mean is the
    prediction, and would be too narrow where the members disagree). The calibration factor
    scales the mean; the quantiles are scaled by the same factor, i.e. they are those of
    scale x revenue, the one distribution consistent with the calibrated mean."""
    if not model.has_distribution:
        raise ValueError("the network was trained on the Tweedie loss: it has no distribution to give quantiles")
    return float(model.scale) * mixture_quantiles(*member_distributions(model, x), levels)


def expected_coverage(model: Ensemble, x: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """The coverage of [P10, P90] that the network's own distribution expects, over everyone and
    over the payers: what a perfectly calibrated model would measure on these rows.

    Not 80 %: the atom at zero. A row whose mixture spends nothing with probability a has
    P10 = 0 when a >= 0.1 and P90 = 0 when a >= 0.9, so [P10, P90] holds 0.9 - 0.1 = 0.8 only
    for a < 0.1; 0.9 for 0.1 <= a < 0.9; and a (>= 0.9) above. Of its payers it holds
    (0.9 - a) / (1 - a) in the middle case and none when P90 = 0. Where most users rarely pay,
    a calibrated model covers about 90 % of users and far fewer of the payers."""
    atom = (1 - member_distributions(model, x)[0]).mean(axis=0)
    lower, upper = QUANTILES[0], QUANTILES[-1]
    below = np.where(atom >= lower, 0.0, lower)  # F just below P10
    top = np.where(atom >= upper, atom, upper)  # F at P90
    pay = 1 - atom
    payers = np.clip(top - np.maximum(below, atom), 0, None) / np.where(pay > 0, pay, 1.0)
    return {"coverage_p10_p90": float(np.average(top - below, weights=weight)),
            "coverage_p10_p90_payers": float(np.average(payers, weights=weight * pay))}


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total (a row of weight 3
    counts as three copies): numpy's inverted CDF, the one quantile method it weights."""
    return float(np.quantile(values, q, weights=weights, method="inverted_cdf"))


@dataclass(frozen=True)
class ResidualQuantiles:
    """Prediction intervals of a model with no distribution of its own, from the empirical
    quantiles of its errors (actual - predicted) on rows it did not learn from.

    The errors are taken per bin of the prediction (deciles of it on those rows, merged where
    fewer than ``min_rows`` rows fall in one): revenue is zero for most users and heavy-tailed
    for the rest, so both the share of zeros and the spread change with the predicted level,
    and one set of quantiles for everyone would be too wide at the bottom and too narrow at
    the top. Additive, not a ratio to the prediction: the naive baseline predicts 0 for
    everyone who did not pay last period, and a ratio to 0 says nothing. An interval is
    prediction + error quantile, floored at 0 (revenue predicted below zero means none)."""
    edges: np.ndarray  # bin b holds predictions in (edges[b - 1], edges[b]]
    errors: np.ndarray  # (bins, levels): the error quantiles of each bin
    levels: tuple[float, ...] = QUANTILES

    @classmethod
    def fit(cls, predicted: np.ndarray, actual: np.ndarray, weight: np.ndarray,
            levels: tuple[float, ...] = QUANTILES, bins: int = 10, min_rows: int = 50) -> "ResidualQuantiles":
        edges = np.unique([weighted_quantile(predicted, weight, b / bins) for b in range(1, bins)])
        while len(edges):  # ties (many predictions of exactly 0) and small samples leave thin bins
            counts = np.bincount(np.searchsorted(edges, predicted, side="left"), minlength=len(edges) + 1)
            if counts.min() >= min_rows:
                break
            b = int(np.argmin(counts))
            # drop the edge between the thinnest bin and its thinner neighbour
            drop = 0 if b == 0 else len(edges) - 1 if b == len(edges) else b - 1 if counts[b - 1] <= counts[b + 1] else b
            edges = np.delete(edges, drop)
        which = np.searchsorted(edges, predicted, side="left")
        error = actual - predicted
        table = np.array([[weighted_quantile(error[which == b], weight[which == b], q) for q in levels]
                          for b in range(len(edges) + 1)])
        return cls(edges, table, tuple(levels))

    def __call__(self, predicted: np.ndarray) -> np.ndarray:
        """(rows, levels): each prediction plus its bin's error quantiles, floored at 0."""
        predicted = np.asarray(predicted, dtype=np.float64)
        return np.clip(predicted[:, None] + self.errors[np.searchsorted(self.edges, predicted, side="left")], 0, None)


def mean_prediction(model, x: np.ndarray) -> np.ndarray:
    """The expected revenue of each row from the network or a fitted baseline."""
    if isinstance(model, nn.Module):
        return predict(model, x)
    return np.asarray(model.predict(x), dtype=np.float64)


def intervals(model, x: np.ndarray, residuals: ResidualQuantiles | None = None,
              mean: np.ndarray | None = None) -> np.ndarray:
    """(rows, 3): P10, P50, P90 of each row's revenue. The ZILN network from its own
    distribution; any other model (a baseline, a Tweedie network) from ``residuals``."""
    if isinstance(model, Ensemble) and model.has_distribution:
        return ensemble_quantiles(model, x)
    if residuals is None:
        raise ValueError(f"{type(model).__name__} has no distribution of its own: give its residual quantiles")
    return residuals(mean_prediction(model, x) if mean is None else mean)


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """The weighted share of rows whose revenue lies in [lower, upper] (ends included: a
    user who spends nothing is covered by an interval starting at 0), over everyone and over
    the payers (actual > 0). Most users spend nothing, so the payers' figure is the telling one."""
    inside = ((actual >= lower) & (actual <= upper)).astype(np.float64)
    payers = actual > 0
    return {"coverage_p10_p90": float(np.average(inside, weights=weight)),
            "coverage_p10_p90_payers": float(np.average(inside[payers], weights=weight[payers]))
            if payers.any() else float("nan")}


def coverage_by_decile(actual: np.ndarray, predicted: np.ndarray, bounds: np.ndarray,
                       weight: np.ndarray) -> pd.DataFrame:
    """Coverage of [P10, P90] (``bounds``: rows x (P10, P50, P90)) per decile of the mean
    prediction (:func:`decile_of`), with the weighted population, payers and mean bounds."""
    decile = decile_of(predicted, weight)
    rows = []
    for d in range(1, 11):
        at = decile == d
        if not at.any():
            continue
        got = coverage(actual[at], bounds[at, 0], bounds[at, 2], weight[at])
        w = weight[at]
        rows.append({"decile": d, "population": float(w.sum()), "payers": float(w[actual[at] > 0].sum()),
                     "coverage": got["coverage_p10_p90"], "coverage_payers": got["coverage_p10_p90_payers"],
                     "mean_predicted": float(np.average(predicted[at], weights=w)),
                     "mean_actual": float(np.average(actual[at], weights=w)),
                     **{f"mean_{c}": float(np.average(bounds[at, i], weights=w)) for i, c in enumerate(INTERVAL_COLUMNS)}})
    return pd.DataFrame(rows)


class RevenueModel(PythonModel):
    """What every candidate is logged as: the network or a baseline with, for a model without
    a distribution of its own, its :class:`ResidualQuantiles`. ``predict`` returns the mean
    (one value per row, as models logged before intervals did, so every reader of a champion
    keeps working); with ``params={INTERVALS: True}`` a DataFrame of OUTPUT_COLUMNS."""

    def __init__(self, model, residuals: ResidualQuantiles | None = None):
        self.model = model  # an Ensemble or a fitted scikit-learn style estimator
        self.residuals = residuals

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        x = np.asarray(model_input, dtype=np.float64)  # the columns in signature order
        mean = mean_prediction(self.model, x)
        if not (params or {}).get(INTERVALS):
            return mean
        bounds = intervals(self.model, x, self.residuals, mean)
        return pd.DataFrame({"prediction": mean, **{c: bounds[:, i] for i, c in enumerate(INTERVAL_COLUMNS)}})


# -- choosing the champion ------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    winner: str
    promote: bool
    reasons: list[str]


def choose(candidates: dict[str, dict[str, float]], champion: dict[str, float] | None) -> Decision:
    """The run's winner and whether it replaces the champion.

    Eligible are the candidates whose |total error| on the held-out split is no worse than
    the naive baseline's (naive itself always is, so there is always a winner); the highest
    held-out Gini among them wins. The winner replaces the current champion (its metrics on
    the same split) unless the champion is eligible too and its Gini is at least as high."""
    naive_err = abs(candidates["naive"]["total_error_pct"])
    reasons, eligible = [], []
    for name in [c for c in CANDIDATES if c in candidates]:
        m = candidates[name]
        err = abs(m["total_error_pct"])
        if name == "naive" or (math.isfinite(m["gini"]) and math.isfinite(err) and err <= naive_err):
            eligible.append(name)
        else:
            reasons.append(f"{name} not eligible: |total error| {err:.2f}% > naive {naive_err:.2f}%")

    def rank(name: str) -> tuple[float, int]:
        gini = candidates[name]["gini"]
        return (gini if math.isfinite(gini) else -math.inf, -CANDIDATES.index(name))

    winner = max(eligible, key=rank)
    gini = candidates[winner]["gini"]
    reasons.insert(0, f"winner {winner}: Gini {gini:.4f}, highest of eligible {', '.join(eligible)}")
    if champion is None:
        return Decision(winner, True, [*reasons, "no champion to beat"])
    c_gini, c_err = champion.get("gini", float("nan")), abs(champion.get("total_error_pct", float("nan")))
    if not (math.isfinite(c_gini) and math.isfinite(c_err)) or c_err > naive_err:
        return Decision(winner, True, [*reasons, f"champion not eligible on this split (|total error| {c_err:.2f}% "
                                                 f"vs naive {naive_err:.2f}%, Gini {c_gini:.4f})"])
    if gini > c_gini:
        return Decision(winner, True, [*reasons, f"Gini {gini:.4f} > champion {c_gini:.4f}"])
    return Decision(winner, False, [*reasons, f"Gini {gini:.4f} <= champion {c_gini:.4f}: the champion stays"])
