"""The reward model: Γ(image, declared class) -> calibrated P(plausible), learned from expert feedback.

Library entry points (imported lazily, so ``clinalign --help`` does not load torch)::

    RewardModel.load(dir).score_tensors(x, class_indices)   # x float NCHW in [-1, 1]
    RewardModel.load(dir).score_names(x, class_names)
    train_reward(TrainConfig(...))                           # clinalign reward train
    score_folder(checkpoint, images, out_csv)                # clinalign reward score
    select_for_review(checkpoint, images, n, out_dir)        # clinalign reward select
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RewardModel": "model",
    "RewardNet": "model",
    "TrainConfig": "train",
    "TrainResult": "train",
    "train_reward": "train",
    "score_folder": "score",
    "score_paths": "score",
    "select_for_review": "select",
    "pick_uncertain": "select",
    "fit_temperature": "calibrate",
    "auroc": "metrics",
    "expected_calibration_error": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
