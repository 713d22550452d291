"""Sampling away from what the experts rejected (the model of a ``--objective guidance`` finetune).

Such a model knows, for each class c, a class ``c-rejected`` trained on the samples of c the experts
rejected. Like classifier-free guidance (Ho & Salimans 2022), with the rejected class in place of
the unconditional model, each step uses

    out = out(x, c) + w * (out(x, c) - out(x, c-rejected))

on the prediction channels (a learned variance comes from out(x, c)). w = 0 is the model alone;
each step costs two forward passes (one batch of twice the size).

An interval (LO, HI) guides only the steps whose noise level t/T lies in it (0 clean, 1 pure noise)
and runs the model alone elsewhere, at one pass. Guidance at the highest noise levels decides the
image's coarse layout and costs the most diversity; at the lowest it barely changes the image
(Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves sample and
distribution quality in diffusion models").
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class RejectionGuidance(nn.Module):
    """Wraps a denoiser ``model(x, t, y=...)``; ``negative[y]`` is the rejected class of class ``y``."""

    def __init__(
        self,
        model: nn.Module,
        negative: torch.Tensor,
        scale: float,
        channels: int,
        interval: tuple[float, float] | None = None,
        t_max: float = 1000.0,
    ):
        """``interval`` (None: every step) is in noise levels t / ``t_max``; ``t_max`` is the timestep
        the model would be called with at pure noise."""
        super().__init__()
        self.model, self.scale, self.channels = model, float(scale), int(channels)
        self.interval, self.t_max = interval, float(t_max)
        self.register_buffer("negative", negative.long(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError("rejection guidance needs class labels (the model is class-conditional)")
        inside = None
        if self.interval is not None:
            level = t.float() / self.t_max
            inside = (level >= self.interval[0]) & (level <= self.interval[1])
            if not bool(inside.any()):
                return self.model(x, t, y=y, **kwargs)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, self.negative[y]]), **kwargs)
        out, rejected = both.chunk(2)
        c = self.channels
        w = self.scale if inside is None else (self.scale * inside.to(out.dtype)).view(-1, *([1] * (out.dim() - 1)))
        guided = out[:, :c] + w * (out[:, :c] - rejected[:, :c])
        return torch.cat([guided, out[:, c:]], dim=1)


def parse_interval(text: str) -> tuple[float, float] | None:
    """``"LO,HI"`` (noise levels, 0 clean .. 1 pure noise) as a pair; ``""`` (every step) as None."""
    if not text.strip():
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = float("nan")
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError(
            f"--guidance_interval {text!r}: give two noise levels LO,HI with 0 <= LO < HI <= 1 "
            "(0 clean, 1 pure noise), e.g. 0.1,0.6, or leave it empty to guide every step"
        )
    return (lo, hi)


def guidance_scale(ck, scale: float) -> float:
    """The strength sampling uses: ``scale``, or the checkpoint's own when < 0; 0 without rejected classes."""
    if not ck.guidance:
        return 0.0
    return float(ck.meta.get("guidance_scale", 0.0)) if scale < 0 else float(scale)


def guided(model: nn.Module, ck, scale: float, interval: str = "") -> nn.Module:
    """``model`` steered away from the checkpoint's rejected classes at ``scale`` (< 0: the checkpoint's
    own strength) while the noise level lies in ``interval`` (:func:`parse_interval`); the model
    itself when the checkpoint has none or the scale is 0."""
    pairs = ck.guidance
    scale = guidance_scale(ck, scale)
    lo_hi = parse_interval(interval)
    if scale == 0:
        return model
    class_map = ck.class_map
    negative = torch.arange(len(class_map))
    for name, rejected in pairs.items():
        negative[class_map.index(name)] = class_map.index(rejected)
    device = next(model.parameters()).device
    # the model sees t scaled to [0, 1000) or the integer t of the un-respaced process
    t_max = 1000.0 if ck.diffusion.rescale_timesteps else float(ck.diffusion.diffusion_steps)
    return RejectionGuidance(model, negative, scale, ck.channels, lo_hi, t_max).to(device).eval()
