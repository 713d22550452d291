"""Binary metrics of a reward model: AUROC, accuracy, balanced accuracy, ECE, NLL.

Written out (no scikit-learn) so the definitions are visible and tested:

- AUROC is the Mann-Whitney U statistic normalised by the number of (positive, negative) pairs,
  from average ranks, so a tie between a positive and a negative counts one half.
- ECE (Naeini et al. 2015; Guo et al. 2017) here bins the reward itself, P(plausible), into 15
  equal-width bins over [0, 1] and averages |observed plausible rate - mean reward| weighted by
  bin size. That is the reliability of the number the finetuning loop consumes, rather than the
  "confidence of the predicted class" variant; for a binary model the two differ only in how the
  bins fold around 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values all get the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Boundaries of runs of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted 1/2.

    NaN when ``labels`` holds only one class (the quantity is undefined, not 0.5).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(s)[y].sum()
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_calibration_error(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Sum over equal-width bins of P(plausible) of (bin share) x |plausible rate - mean prob|."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} probabilities but {len(y)} labels")
    if len(p) == 0:
        return float("nan")
    # Bin b holds (b/n, (b+1)/n]; p == 0 goes to the first bin.
    bins = np.clip(np.ceil(p * n_bins).astype(int) - 1, 0, n_bins - 1)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / len(p))


def binary_nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()) if len(p) else float("nan")


def accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    if len(probs) == 0:
        return float("nan")
    return float(((np.asarray(probs) >= threshold) == np.asarray(labels).astype(bool)).mean())


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of the recall on plausible and on implausible items (those present)."""
    pred = np.asarray(probs) >= threshold
    y = np.asarray(labels).astype(bool)
    recalls = [float((pred[y == v] == v).mean()) for v in (True, False) if (y == v).any()]
    return sum(recalls) / len(recalls) if recalls else float("nan")


@dataclass
class BinaryMetrics:
    n: int
    n_plausible: int
    auroc: float
    accuracy: float
    balanced_accuracy: float
    ece: float
    nll: float

    def to_json(self) -> dict:
        # JSON has no NaN: an undefined metric (e.g. AUROC with one verdict) becomes null.
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def binary_metrics(probs: np.ndarray, labels: np.ndarray) -> BinaryMetrics:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    return BinaryMetrics(
        n=int(len(labels)),
        n_plausible=int(labels.sum()),
        auroc=auroc(probs, labels),
        accuracy=accuracy(probs, labels),
        balanced_accuracy=balanced_accuracy(probs, labels),
        ece=expected_calibration_error(probs, labels),
        nll=binary_nll(probs, labels),
    )


def grouped_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], synthetic: np.ndarray) -> dict:
    """Overall, real-only, synthetic-only, and per declared class (all items and synthetic only)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    synthetic = np.asarray(synthetic, dtype=bool)
    classes_arr = np.asarray(list(classes), dtype=object)
    report: dict = {"overall": binary_metrics(probs, labels).to_json()}
    for name, mask in (("real", ~synthetic), ("synthetic", synthetic)):
        report[name] = binary_metrics(probs[mask], labels[mask]).to_json() if mask.any() else None
    report["per_class"] = {
        c: binary_metrics(probs[classes_arr == c], labels[classes_arr == c]).to_json()
        for c in sorted(set(classes_arr.tolist()))
    }
    report["synthetic_per_class"] = {
        c: binary_metrics(probs[m], labels[m]).to_json()
        for c in sorted(set(classes_arr[synthetic].tolist()))
        for m in [(classes_arr == c) & synthetic]
    }
    return report


def format_table(report: dict) -> str:
    """A fixed-width table of a :func:`grouped_metrics` report (for the terminal)."""

    def fmt(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.3f}"

    rows = [
        ("overall", report["overall"]),
        ("real (pseudo-labels)", report.get("real")),
        ("SYNTHETIC FEEDBACK", report.get("synthetic")),
    ]
    rows += [(f"  class {c}", m) for c, m in report.get("per_class", {}).items()]
    rows += [(f"  synthetic {c}", m) for c, m in report.get("synthetic_per_class", {}).items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'n':>6}  {'AUROC':>6}  {'acc':>6}  {'balacc':>6}  {'ECE':>6}"]
    for name, m in rows:
        if m is None:
            continue
        lines.append(
            f"{name:{width}}  {m['n']:6d}  {fmt(m['auroc'])}  {fmt(m['accuracy'])}  "
            f"{fmt(m['balanced_accuracy'])}  {fmt(m['ece'])}"
        )
    return "\n".join(lines)
