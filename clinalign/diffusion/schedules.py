"""Noise schedules β_1..β_T of the forward process.

References:
    Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM), §4.
    Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (iDDPM), §3.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "BETA_SCHEDULES",
    "betas_for_alpha_bar",
    "cosine_alpha_bar",
    "get_named_beta_schedule",
    "linear_beta_schedule",
]


def linear_beta_schedule(num_diffusion_timesteps: int) -> np.ndarray:
    """Linear schedule of Ho et al. 2020 §4 (β from 1e-4 to 0.02 at T = 1000).

    Scaled by 1000 / T so that the schedule stays similar for other T, as improved-diffusion
    does: β_t ∈ [scale·1e-4, scale·0.02] with scale = 1000 / T.
    """
    scale = 1000.0 / num_diffusion_timesteps
    if scale * 0.02 >= 1.0:
        raise ValueError(
            f"the linear schedule needs more than 20 steps (got {num_diffusion_timesteps}: its last "
            "beta would be >= 1); use more steps or the cosine schedule"
        )
    return np.linspace(scale * 1e-4, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """f(t) = cos²(((t + s) / (1 + s)) · π/2) for t ∈ [0, 1]; Nichol & Dhariwal 2021 eq. 17.

    ᾱ_t = f(t) / f(0); the f(0) cancels in the ratios used by :func:`betas_for_alpha_bar`.
    """
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def betas_for_alpha_bar(
    num_diffusion_timesteps: int,
    alpha_bar: Callable[[float], float],
    max_beta: float = 0.999,
) -> np.ndarray:
    """β_t = min(1 − ᾱ(t/T) / ᾱ((t−1)/T), max_beta); Nichol & Dhariwal 2021 §3.2.

    ``alpha_bar`` maps continuous time in [0, 1] to the cumulative product of (1 − β). Clipping
    at ``max_beta`` < 1 avoids the singularity at the end of the chain (t → T).
    """
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1.0 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


BETA_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_beta_schedule,
    "cosine": lambda n: betas_for_alpha_bar(n, cosine_alpha_bar),
}


def get_named_beta_schedule(name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """The float64 array of β_t for a named schedule ("linear" or "cosine")."""
    if name not in BETA_SCHEDULES:
        valid = ", ".join(sorted(BETA_SCHEDULES))
        raise ValueError(f"unknown noise schedule {name!r}; valid names are: {valid}")
    if int(num_diffusion_timesteps) < 1:
        raise ValueError(f"num_diffusion_timesteps must be >= 1, got {num_diffusion_timesteps}")
    return BETA_SCHEDULES[name](int(num_diffusion_timesteps))
