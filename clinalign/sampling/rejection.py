"""Rejection sampling: keep a sample only when the reward model scores it high enough.

The cheapest use of a reward model — no finetuning, paid for in extra draws — and the column a
user should compare any finetune against.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError
from ..training.checkpoint import find_checkpoint


def reward_acceptor(reward_dir: str, min_reward: float | Mapping[str, float], checkpoint: str):
    """Accept a sample when the reward model scores it at least ``min_reward`` for its declared class
    (one bar, or a bar per class name)."""
    from ..reward import RewardModel

    reward = RewardModel.load(reward_dir)
    ck = find_checkpoint(checkpoint)
    names = ck.class_map.names
    if isinstance(min_reward, Mapping):
        missing = [n for n in ck.sample_classes if n not in min_reward]
        if missing:
            raise ConfigError(f"no reward bar for class(es) {', '.join(missing)} of {checkpoint}: give one per class")
        bars = torch.tensor([float(min_reward.get(n, float("inf"))) for n in names])
    else:
        bars = torch.full((len(names),), float(min_reward))

    def accept(images, labels):
        scores = reward.score_names(images, [names[int(i)] for i in labels])
        scores = torch.as_tensor(scores, dtype=torch.float32)
        return scores >= bars[torch.as_tensor(labels).long().cpu()], scores

    return accept
