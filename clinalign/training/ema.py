"""Exponential moving averages of the weights, one per rate (sampling uses the first)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(rate: float, step: int) -> float:
    """EMA decay with warm-up: min(rate, (1 + step) / (10 + step)).

    Without warm-up a 0.9999 EMA of a short run (a CPU demo, a test, a brief finetune) is still
    mostly the random initialisation; with it, long runs are unchanged (the cap binds after
    ~10/(1 - rate) steps) and short runs get a usable average.
    """
    return min(rate, (1.0 + step) / (10.0 + step))


class EMA:
    """fp32 shadow copies of a model's parameters, updated after every optimizer step."""

    def __init__(self, model: nn.Module, rates: list[str], saved: dict[str, dict[str, torch.Tensor]] | None = None):
        self.names = [n for n, _ in model.named_parameters()]
        device = next(model.parameters()).device
        self.params: dict[str, list[torch.Tensor]] = {}
        for rate in rates:
            if saved and rate in saved:
                self.params[rate] = [saved[rate][n].to(device).float() for n in self.names]
            else:
                self.params[rate] = [p.detach().clone().float() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        live = [p.detach().float() for p in model.parameters()]
        for rate, shadow in self.params.items():
            torch._foreach_lerp_(shadow, live, 1.0 - ema_decay(float(rate), step))

    def state_dicts(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """A full state dict per rate: the model's buffers with the averaged parameters."""
        full = model.state_dict()
        return {rate: {**full, **dict(zip(self.names, shadow))} for rate, shadow in self.params.items()}
