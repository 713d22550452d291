"""Reward metrics against independent references and hand-computed values; temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu, rankdata

from clinalign.reward.calibrate import fit_temperature, nll
from clinalign.reward.metrics import (
    auroc,
    average_ranks,
    balanced_accuracy,
    binary_metrics,
    expected_calibration_error,
    format_table,
    grouped_metrics,
)


def brute_force_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# Few distinct score values, so ties between positives and negatives are frequent.
scored = st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=60).filter(
    lambda xs: 0 < sum(y for _, y in xs) < len(xs)
)


@settings(max_examples=150, deadline=None)
@given(scored)
def test_auroc_equals_pair_count_with_ties(items):
    scores = [s / 5 for s, _ in items]
    labels = [int(y) for _, y in items]
    assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels), abs=1e-12)


def test_auroc_matches_mann_whitney():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # rounding creates ties
    labels = (rng.random(300) < 0.4 + 0.2 * (scores > 0)).astype(int)
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    assert auroc(scores, labels) == pytest.approx(u / (labels.sum() * (1 - labels).sum()), abs=1e-12)


def test_average_ranks_match_scipy():
    values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0, 7.0])
    np.testing.assert_allclose(average_ranks(values), rankdata(values))


def test_auroc_known_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # one of four pairs misordered
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))  # undefined with one verdict, not 0.5


def test_ece_known_values():
    # All predictions 0.9 but only half plausible: one bin, |0.5 - 0.9| = 0.4.
    assert expected_calibration_error([0.9] * 10, [1] * 5 + [0] * 5) == pytest.approx(0.4)
    # Perfectly calibrated bins: 0.2 with 1 of 5 plausible, 0.8 with 4 of 5.
    assert expected_calibration_error([0.2] * 5 + [0.8] * 5, [1, 0, 0, 0, 0, 1, 1, 1, 1, 0]) == pytest.approx(0.0)
    # Two bins, weighted by size: 8 items at 0.1 (none plausible: gap 0.1), 2 at 1.0 (both: gap 0).
    assert expected_calibration_error([0.1] * 8 + [1.0] * 2, [0] * 8 + [1] * 2) == pytest.approx(0.08)
    # 15 bins: 0.30 and 0.32 share bin (0.2667, 0.3333]; mean 0.31 vs rate 0.5.
    assert expected_calibration_error([0.30, 0.32], [1, 0]) == pytest.approx(0.19)
    # ...while 15 bins split 0.30 and 0.34: each bin's own gap counts.
    assert expected_calibration_error([0.30, 0.34], [1, 0]) == pytest.approx((0.7 + 0.34) / 2)


def test_accuracy_metrics():
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6])
    y = np.array([1, 1, 1, 0, 0])
    m = binary_metrics(p, y)
    assert m.accuracy == pytest.approx(0.8)
    assert balanced_accuracy(p, y) == pytest.approx((1.0 + 0.5) / 2)
    assert m.n == 5 and m.n_plausible == 3


def test_grouped_report_and_table():
    p = np.array([0.9, 0.1, 0.8, 0.3, 0.6, 0.4])
    y = np.array([1, 0, 1, 0, 1, 1])
    classes = ["a", "a", "b", "b", "a", "b"]
    syn = np.array([False, False, False, False, True, True])
    r = grouped_metrics(p, y, classes, syn)
    assert r["overall"]["n"] == 6 and r["real"]["n"] == 4 and r["synthetic"]["n"] == 2
    assert r["synthetic"]["auroc"] is None  # one verdict: JSON null, not NaN
    assert set(r["per_class"]) == {"a", "b"} and set(r["synthetic_per_class"]) == {"a", "b"}
    table = format_table(r)
    assert "SYNTHETIC FEEDBACK" in table and "class a" in table


# ---------------------------------------------------------------------------- calibration


def _bernoulli(z: torch.Tensor, seed: int) -> torch.Tensor:
    return (torch.rand(len(z), generator=torch.Generator().manual_seed(seed)) < torch.sigmoid(z)).double()


def test_temperature_fixes_overconfidence():
    z = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    y = _bernoulli(z, 1)  # z are the true logits
    overconfident = 4.0 * z
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(4.0, rel=0.15)
    assert nll(overconfident, y, t) < nll(overconfident, y, 1.0) - 0.1
    # Scaling is monotone: the ranking (AUROC) is untouched.
    assert auroc((overconfident / t).numpy(), y.numpy()) == pytest.approx(auroc(overconfident.numpy(), y.numpy()))


def test_temperature_fixes_underconfidence():
    z = torch.randn(4000, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    y = _bernoulli(z, 3)
    assert fit_temperature(z / 3.0, y) == pytest.approx(1 / 3.0, rel=0.15)


def test_temperature_needs_both_verdicts():
    assert fit_temperature(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])) == 1.0


def test_temperature_is_not_fitted_on_separable_data():
    # Any T < 1 lowers the NLL here, without limit: no evidence for sharper rewards.
    assert fit_temperature(torch.tensor([-2.0, -1.0, 1.0, 3.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])) == 1.0
