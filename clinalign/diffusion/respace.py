"""Timestep respacing: a diffusion that uses a subset of a base process's steps.

Keeping steps S = {s_1 < … < s_K} of a base process with cumulative products ᾱ gives a new
process with β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}} (ᾱ_{s_0} := 1), so that its ᾱ'_k = ᾱ_{s_k}
(Nichol & Dhariwal 2021 §4, "Improving sampling speed"). The model keeps seeing the base
process's timestep indices.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .gaussian import GaussianDiffusion

__all__ = ["SpacedDiffusion", "base_betas", "respace", "space_timesteps"]


def space_timesteps(num_timesteps: int, section_counts: str | Iterable[int]) -> set[int]:
    """The base timesteps to keep, exactly as improved-diffusion's ``space_timesteps``.

    ``section_counts`` is a list of counts or a comma-separated string ("10,15,20"): the T steps
    are cut into len(counts) nearly equal sections (the first T mod len sections one longer), and
    section i keeps counts[i] steps evenly strided from its first to its last step (rounded).
    "ddimN" instead keeps range(0, T, stride) with the smallest integer stride that gives exactly
    N steps, the striding of the DDIM paper.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            # Strides up to T inclusive, so that "ddim1" gives {0} (improved-diffusion stops at
            # T − 1 and cannot make one step); every other result is the same.
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps out of {num_timesteps} with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    section_counts = list(section_counts)
    if not section_counts:
        raise ValueError("section_counts must not be empty")
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start = 0
    steps: list[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


class SpacedDiffusion(GaussianDiffusion):
    """A :class:`GaussianDiffusion` that keeps only ``use_timesteps`` of the base process.

    :param use_timesteps: base timestep indices to keep.
    :param kwargs: the base process's GaussianDiffusion kwargs (``betas`` are the base betas).

    The model is always called with the *original* index ``timestep_map[t]`` (times 1000/T_base
    when ``rescale_timesteps``), so a model trained on the base process works unchanged.
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs) -> None:
        self.base_betas = np.array(kwargs["betas"], dtype=np.float64)
        self.original_num_steps = len(self.base_betas)
        self.use_timesteps = set(int(t) for t in use_timesteps)
        if not self.use_timesteps or not all(0 <= t < self.original_num_steps for t in self.use_timesteps):
            raise ValueError(f"use_timesteps must be a non-empty subset of 0..{self.original_num_steps - 1}")
        base_alphas_cumprod = np.cumprod(1.0 - self.base_betas)
        self.timestep_map = sorted(self.use_timesteps)
        kept = base_alphas_cumprod[self.timestep_map]
        new_betas = 1.0 - kept / np.append(1.0, kept[:-1])
        super().__init__(**{**kwargs, "betas": new_betas})

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original base index of each respaced index, rescaled to [0, 1000) if asked."""
        mapped = torch.as_tensor(self.timestep_map, device=t.device, dtype=torch.long)[t.long()]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped


def base_betas(diffusion: GaussianDiffusion) -> np.ndarray:
    """The betas of the un-respaced process a diffusion was built from."""
    return diffusion.base_betas if isinstance(diffusion, SpacedDiffusion) else diffusion.betas


def respace(diffusion: GaussianDiffusion, section_counts: str | Iterable[int]) -> SpacedDiffusion:
    """A SpacedDiffusion over ``diffusion``'s base process (not over its respaced steps).

    The result is cached on ``diffusion``, keyed by the spacing, so sampling loops that ask
    repeatedly for e.g. "ddim50" build it once.
    """
    key = section_counts if isinstance(section_counts, str) else ",".join(str(int(c)) for c in section_counts)
    cache = diffusion.__dict__.setdefault("_respaced_cache", {})
    if key not in cache:
        betas = base_betas(diffusion)
        cache[key] = SpacedDiffusion(
            use_timesteps=space_timesteps(len(betas), key),
            betas=betas,
            model_mean_type=diffusion.model_mean_type,
            model_var_type=diffusion.model_var_type,
            loss_type=diffusion.loss_type,
            rescale_timesteps=diffusion.rescale_timesteps,
            snr_gamma=diffusion.snr_gamma,
        )
    return cache[key]
