"""Likelihood terms of the variational bound, elementwise (reduce with :func:`mean_flat`).

References:
    Ho, Jain & Abbeel 2020 (DDPM) §3.3 (discretized decoder, eq. 13).
    Nichol & Dhariwal 2021 (iDDPM) eqs. 4–6 (the L_0, L_{t−1}, L_T terms).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
]


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: [N, ...] -> [N] (a [N] tensor is returned as is)."""
    if tensor.ndim <= 1:
        return tensor
    return tensor.mean(dim=tuple(range(1, tensor.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats.

    KL = ½ (−1 + logvar2 − logvar1 + e^(logvar1 − logvar2) + (mean1 − mean2)² e^(−logvar2)).
    This is the L_{t−1} and L_T term of Nichol & Dhariwal 2021 eqs. 5–6. Scalars broadcast.
    """
    ref = next((x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (
        x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=ref.dtype, device=ref.device)
        for x in (logvar1, logvar2)
    )
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the tanh approximation used by DDPM."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x | means, e^log_scales) for 8-bit data rescaled to [−1, 1]; Ho et al. 2020 eq. 13.

    Each of the 256 values x_k = −1 + 2k/255 owns the bin [x_k − 1/255, x_k + 1/255]; the two
    edge bins extend to ±∞, so the probabilities of all 256 bins sum to one. This is the
    decoder term L_0 = −log p(x_0 | x_1) of Nichol & Dhariwal 2021 eq. 4. Returns log-probs in
    nats with the shape of ``x``.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(
            f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )
