"""Distributions over training timesteps, with importance weights that keep the loss unbiased.

Sampling t ~ p_t and weighting the loss by 1 / (T p_t) gives the same expected loss as uniform
t. LossSecondMomentResampler uses p_t ∝ √E[L_t²] to reduce the variance of L_vlb
(Nichol & Dhariwal 2021 eq. 18).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..errors import CheckpointError

__all__ = [
    "LossAwareSampler",
    "LossSecondMomentResampler",
    "ScheduleSampler",
    "UniformSampler",
    "create_named_schedule_sampler",
]


class ScheduleSampler(ABC):
    """A distribution over the timesteps 0 .. T−1 of a diffusion."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Positive, unnormalised float64 weights, one per timestep."""

    def sample(
        self,
        batch_size: int,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance-sample ``batch_size`` timesteps.

        Returns (t, w): t a LongTensor of indices drawn with p_t = weights / Σ weights, and
        w = 1 / (T p_t) as a FloatTensor, both on ``device``. The draw happens on the
        generator's device (CPU when none), so a seeded CPU generator is reproducible anywhere.
        """
        w = torch.as_tensor(self.weights(), dtype=torch.float64)
        p = w / w.sum()
        draw_device = generator.device if generator is not None else torch.device("cpu")
        p = p.to(draw_device)
        indices = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        importance = 1.0 / (len(p) * p[indices])
        return indices.to(device=device, dtype=torch.long), importance.to(device=device, dtype=torch.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors needed to resume sampling exactly (none for a stateless sampler)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027 - optional: stateless by default
        """Restore what :meth:`state_dict` returned."""


class UniformSampler(ScheduleSampler):
    """p_t = 1/T: plain uniform timesteps, importance weights all one."""

    def __init__(self, diffusion) -> None:
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps], dtype=np.float64)

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that adapts to the losses it is told about."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this rank's (t, loss) pairs; with torch.distributed, all ranks' pairs.

        Every rank must call this with its own batch (sizes may differ): the batches are padded
        to the largest size, all-gathered, and trimmed, so all ranks apply the same update in
        the same order and keep identical weights.
        """
        local_ts = local_ts.detach().reshape(-1).long()
        local_losses = local_losses.detach().reshape(-1)
        if local_ts.numel() != local_losses.numel():
            raise ValueError(f"{local_ts.numel()} timesteps but {local_losses.numel()} losses")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ts, losses = _all_gather_padded(local_ts, local_losses.to(local_ts.device, torch.float64))
        else:
            ts, losses = local_ts.tolist(), local_losses.cpu().double().tolist()
        self.update_with_all_losses(ts, losses)

    @abstractmethod
    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        """Update from every rank's pairs; must be deterministic (all ranks call it alike)."""


def _all_gather_padded(local_ts: torch.Tensor, local_losses: torch.Tensor) -> tuple[list[int], list[float]]:
    world = dist.get_world_size()
    device = local_ts.device
    size = torch.tensor([local_ts.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    max_bs = max(sizes_int)
    ts_pad = torch.zeros(max_bs, dtype=torch.long, device=device)
    ts_pad[: local_ts.numel()] = local_ts
    loss_pad = torch.zeros(max_bs, dtype=torch.float64, device=device)
    loss_pad[: local_losses.numel()] = local_losses
    ts_all = [torch.zeros_like(ts_pad) for _ in range(world)]
    losses_all = [torch.zeros_like(loss_pad) for _ in range(world)]
    dist.all_gather(ts_all, ts_pad)
    dist.all_gather(losses_all, loss_pad)
    ts = [t for chunk, n in zip(ts_all, sizes_int) for t in chunk[:n].tolist()]
    losses = [x for chunk, n in zip(losses_all, sizes_int) for x in chunk[:n].tolist()]
    return ts, losses


class LossSecondMomentResampler(LossAwareSampler):
    """p_t ∝ √E[L_t²] over the last ``history_per_term`` losses per t; Nichol & Dhariwal 2021 eq. 18.

    Uniform until every timestep has a full history; afterwards mixed with the uniform
    distribution with probability ``uniform_prob`` so no step is ever starved.
    """

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        self.diffusion = diffusion
        self.history_per_term = int(history_per_term)
        self.uniform_prob = float(uniform_prob)
        self._loss_history = np.zeros([diffusion.num_timesteps, self.history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1.0 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        for t, loss in zip(ts, losses):
            t = int(t)
            if self._loss_counts[t] == self.history_per_term:
                # Shift out the oldest loss.
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "loss_history": torch.from_numpy(self._loss_history.copy()),
            "loss_counts": torch.from_numpy(self._loss_counts.copy()),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        try:
            history = np.asarray(torch.as_tensor(state["loss_history"]).cpu().numpy(), dtype=np.float64)
            counts = np.asarray(torch.as_tensor(state["loss_counts"]).cpu().numpy(), dtype=np.int64)
        except KeyError as exc:
            raise CheckpointError(
                f"schedule sampler state lacks {exc.args[0]!r}; it was not saved by "
                "LossSecondMomentResampler — resume with the schedule sampler the run was started with"
            ) from None
        if history.shape != self._loss_history.shape or counts.shape != self._loss_counts.shape:
            raise CheckpointError(
                f"schedule sampler state has loss history of shape {history.shape}, but this "
                f"diffusion needs {self._loss_history.shape} (timesteps, history_per_term); "
                "resume with the same diffusion steps as the checkpoint"
            )
        self._loss_history = history.copy()
        self._loss_counts = counts.copy()


SCHEDULE_SAMPLERS = {
    "uniform": UniformSampler,
    "loss-second-moment": LossSecondMomentResampler,
}


def create_named_schedule_sampler(name: str, diffusion) -> ScheduleSampler:
    """ "uniform" or "loss-second-moment"."""
    if name not in SCHEDULE_SAMPLERS:
        raise ValueError(f"unknown schedule sampler {name!r}; valid names are: {', '.join(SCHEDULE_SAMPLERS)}")
    return SCHEDULE_SAMPLERS[name](diffusion)
