"""Reward bars matched to the expert: per class, the score above which the reward model keeps the
share of images the expert accepted.

A reward model trained on little feedback is rarely calibrated at 0.5 (on toy cells it passed
13 % of what the expert passed 53 % of); ranking by its score and keeping the expert's share
uses the filter, not the calibration. Per class, because its scale differs by class: one bar for
all starved the class it scores lowest (demo, seed 0, round 2: monocytes scored 0.05 on average,
the other classes 0.55-0.64), so a rejection-sampling column held no monocytes at all.

The bar is a quantile of scores of images drawn from the model the bar is used on: a bar set on
a finetuned model's samples and used on the base's draws starved the class the base draws worse
(PBC, round 2: no monocytes in 50 times the quota, though the expert had accepted 12 of 96).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..data.naming import label_of


def expert_shares(feedback: Path) -> dict[str, float]:
    """Per declared class, the share of the judged images the expert accepted."""
    from .rounds import _verdicts

    judged: dict[str, list[int]] = {}
    for name, ok in _verdicts(feedback).items():
        judged.setdefault(label_of(name), []).append(ok)
    return {label: sum(marks) / len(marks) for label, marks in judged.items()}


def share_bars(scores: Mapping[str, float], shares: Mapping[str, float]) -> dict[str, float]:
    """Per class of ``scores`` (``{image ID: reward}``), the bar that keeps ``shares[class]`` of them.

    A class the expert rejected whole keeps its best-scored image's share, so it is still drawn,
    at a cost the draws show; a class the expert never judged keeps all.
    """
    by_class: dict[str, list[float]] = {}
    for name, score in scores.items():
        by_class.setdefault(label_of(name), []).append(score)
    bars = {}
    for label, values in by_class.items():
        share = max(shares[label], 1 / len(values)) if label in shares else 1.0
        bars[label] = float(np.quantile(np.array(values), 1.0 - share))
    return bars


def matched_bars(scored: Path, feedback: Path) -> dict[str, float]:
    """The expert's per-class shares of ``feedback`` as bars on the scores in ``scored/rewards.csv``."""
    from ..training.finetune import read_rewards_csv

    return share_bars(read_rewards_csv(scored / "rewards.csv"), expert_shares(feedback))
