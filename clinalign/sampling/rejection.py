"""Rejection sampling: keep a sample only when the reward model scores it high enough.

The cheapest use of a reward model — no finetuning, paid for in extra draws — and the column a
user should compare any finetune against.
"""

from __future__ import annotations

import torch

from ..training.checkpoint import find_checkpoint


def reward_acceptor(reward_dir: str, min_reward: float, checkpoint: str):
    """Accept a sample when the reward model scores it at least ``min_reward`` for its declared class."""
    from ..reward import RewardModel

    reward = RewardModel.load(reward_dir)
    names = find_checkpoint(checkpoint).class_map.names

    def accept(images, labels):
        scores = reward.score_names(images, [names[int(i)] for i in labels])
        scores = torch.as_tensor(scores, dtype=torch.float32)
        return scores >= min_reward, scores

    return accept
