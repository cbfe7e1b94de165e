"""The BTYD baseline (ml/btyd.py) on customers drawn from the BG/NBD process itself, by hand here:
it must recover the process and forecast the hold-out period, and score the same in Spark."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import btyd
from transforms import training

TRUE = {"r": 0.8, "alpha": 5.0, "a": 0.6, "b": 2.5}
CALIBRATION, HOLDOUT = 273, 91  # 39 weeks, then 13


def customers(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """gold.user_features' rhythm columns as of day CALIBRATION for ``n`` customers acquired over
    the first 12 weeks, and each one's paid days in the HOLDOUT days after it. Spend per paid
    day: gamma around a customer's own mean."""
    rng = np.random.default_rng(seed)
    rows, future = [], np.zeros(n)
    for i in range(n):
        rate, p = rng.gamma(TRUE["r"], 1 / TRUE["alpha"]), rng.beta(TRUE["a"], TRUE["b"])
        mean_spend = rng.gamma(6.0, 10.0)
        first = float(rng.integers(0, 84))
        days, t, alive = [first], first, True
        while alive:
            t += rng.exponential(1 / rate)
            if t >= CALIBRATION + HOLDOUT:
                break
            if t < CALIBRATION:
                days.append(t)
            else:
                future[i] += 1
            alive = rng.random() >= p  # dropout only after a repeat purchase, as BG/NBD has it
        spend = rng.gamma(20.0, mean_spend / 20.0, len(days))
        rows.append({"purchase_days": len(days), "purchase_recency_days": CALIBRATION - days[-1],
                     "purchase_age_days": CALIBRATION - first,
                     "repeat_spend_mean": spend[1:].mean() if len(days) > 1 else None})
    return pd.DataFrame(rows), future


@pytest.fixture(scope="module")
def drawn():
    rows, future = customers(3000, seed=3)
    return rows, future, btyd.fit(btyd.rfm(rows))


def test_rfm_summary_is_btyd_terms_and_skips_non_customers():
    rows = pd.DataFrame({"purchase_days": [3, 1, 0, None], "purchase_recency_days": [4, 10, None, None],
                         "purchase_age_days": [30, 10, None, None], "repeat_spend_mean": [12.5, None, None, None]})
    out = btyd.rfm(rows)
    assert out.to_dict("list") == {"customer_id": [0, 1], "frequency": [2.0, 0.0], "recency": [26.0, 0.0],
                                   "T": [30.0, 10.0], "monetary_value": [12.5, 0.0]}


def test_fit_recovers_the_process_and_forecasts_the_holdout(drawn):
    rows, future, params = drawn
    # GIVEN 3,000 customers of a known BG/NBD process; WHEN fitted by MAP on 39 weeks
    assert params is not None and params.customers == 3000
    # THEN the parameters come back near the truth (the draws are from days, not exact times)
    for k, v in TRUE.items():
        assert getattr(params, k) == pytest.approx(v, rel=0.35), k
    # AND the forecast of the next 13 weeks holds in total and ranks customers
    out = btyd.predict(params, rows, HOLDOUT)
    assert out["btyd_purchases"].sum() == pytest.approx(future.sum(), rel=0.1)
    assert np.corrcoef(out["btyd_purchases"], future)[0, 1] > 0.5
    # a customer with no repeat purchase yet has not shown any sign of leaving
    assert (out.loc[rows["purchase_days"] == 1, "btyd_p_alive"] == 1.0).all()
    # spend per purchase is shrunk from each customer's own mean toward the population's
    spend = out["btyd_spend"]
    own = rows["repeat_spend_mean"]
    assert spend.between(min(own.min(), spend.min()), own.max()).all()
    assert spend[own.isna()].nunique() == 1


def test_the_fit_does_not_depend_on_row_order_when_customers_spend_alike():
    """tests/data/rfm_spend_alike.csv: the RFM summary (596 customers, 430 repeat) of a lake
    whose customers' mean spend hardly differs. Fitted in currency units with flat priors,
    Gamma-Gamma's MAP stopped at p = 1e-40, q = 1e29 (spend forecasts 10^4 times too high) for
    this row order and at a sound optimum for a shuffled one, so a cluster and a local run of
    the same data scored differently. Every order must give the same, sound fit."""
    summary = pd.read_csv(Path(__file__).parents[1] / "data" / "rfm_spend_alike.csv")
    observed = summary.loc[summary["frequency"] > 0, "monetary_value"].mean()
    orders = [summary, *(summary.sample(frac=1, random_state=k) for k in range(3))]
    fits = [btyd.fit(o.reset_index(drop=True).assign(customer_id=range(len(o)))) for o in orders]
    for f in fits:
        assert f is not None
        for k in ("p", "q", "v"):
            assert getattr(f, k) == pytest.approx(getattr(fits[0], k), rel=1e-6), k
        assert f.p * f.v / (f.q - 1) == pytest.approx(observed, rel=0.25)  # the population's mean spend


def test_too_few_repeat_customers_give_no_fit_and_missing_outputs(drawn):
    rows, _, _ = drawn
    few = rows[rows["purchase_days"] > 1].head(btyd.MIN_REPEAT_CUSTOMERS - 1)
    assert btyd.fit(btyd.rfm(few)) is None
    out = btyd.predict(None, few, HOLDOUT)
    assert out.isna().all().all()


def test_spark_scoring_equals_pandas(spark, drawn):
    rows, _, params = drawn
    sample = rows.head(400).assign(user_id=[f"u{i}" for i in range(400)])
    sample = pd.concat([sample, pd.DataFrame({"user_id": ["never-paid"], "purchase_days": [0]})], ignore_index=True)
    frame = spark.createDataFrame(sample[["user_id", *training.RFM_COLUMNS]].astype(
        {c: "float64" for c in training.RFM_COLUMNS}))
    scored = btyd.with_outputs(frame.repartition(3), params, HOLDOUT).toPandas().set_index("user_id")
    expected = btyd.predict(params, sample, HOLDOUT).set_index(sample["user_id"])
    pd.testing.assert_frame_equal(scored.loc[expected.index, list(training.BTYD_OUTPUTS)], expected, check_names=False)
    assert scored.loc["never-paid", "btyd_purchases"] == 0.0 and np.isnan(scored.loc["never-paid", "btyd_p_alive"])
