"""Sampling away from what the experts rejected (the model of a ``--objective guidance`` finetune).

Such a model knows, for each class c, a class ``c-rejected`` trained on the samples of c the experts
rejected. Like classifier-free guidance (Ho & Salimans 2022), with the rejected class in place of
the unconditional model, each step uses

    out = out(x, c) + w * (out(x, c) - out(x, c-rejected))

on the prediction channels (a learned variance comes from out(x, c)). w = 0 is the model alone;
each step costs two forward passes (one batch of twice the size).
"""

from __future__ import annotations

import torch
from torch import nn


class RejectionGuidance(nn.Module):
    """Wraps a denoiser ``model(x, t, y=...)``; ``negative[y]`` is the rejected class of class ``y``."""

    def __init__(self, model: nn.Module, negative: torch.Tensor, scale: float, channels: int):
        super().__init__()
        self.model, self.scale, self.channels = model, float(scale), int(channels)
        self.register_buffer("negative", negative.long(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError("rejection guidance needs class labels (the model is class-conditional)")
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, self.negative[y]]), **kwargs)
        out, rejected = both.chunk(2)
        c = self.channels
        guided = out[:, :c] + self.scale * (out[:, :c] - rejected[:, :c])
        return torch.cat([guided, out[:, c:]], dim=1)


def guidance_scale(ck, scale: float) -> float:
    """The strength sampling uses: ``scale``, or the checkpoint's own when < 0; 0 without rejected classes."""
    if not ck.guidance:
        return 0.0
    return float(ck.meta.get("guidance_scale", 0.0)) if scale < 0 else float(scale)


def guided(model: nn.Module, ck, scale: float) -> nn.Module:
    """``model`` steered away from the checkpoint's rejected classes at ``scale`` (< 0: the checkpoint's
    own strength); the model itself when the checkpoint has none or the scale is 0."""
    pairs = ck.guidance
    scale = guidance_scale(ck, scale)
    if scale == 0:
        return model
    class_map = ck.class_map
    negative = torch.arange(len(class_map))
    for name, rejected in pairs.items():
        negative[class_map.index(name)] = class_map.index(rejected)
    device = next(model.parameters()).device
    return RejectionGuidance(model, negative, scale, ck.channels).to(device).eval()
