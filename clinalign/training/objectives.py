"""What the training loop minimises, one object per objective; the loop calls ``per_sample_loss``.

Every objective sees a chunk of the step's batch (rows from every stream, sharing timesteps and
noise) and returns one loss per image, which the loop weights by the stream's per-image weight
and the timestep sampler's importance weight and sums:

    L = sum over streams s of  mean_i [ w_i * k_i * loss_i ]

- :class:`DiffusionObjective`: loss_i is the diffusion loss L_diff(x_i, t_i). Pretraining is one
  stream weighted 1; the paper's reward-weighted finetuning is a real stream weighted beta and a
  synthetic stream weighted by reward (Sun et al. 2023, after Lee et al. 2023).
- :class:`KTOObjective` (Diffusion-KTO, Li et al. 2024): on one stream, an image the expert liked
  (w > 0) costs sigmoid(b * (L_theta - L_ref)) and one it disliked (w < 0) sigmoid(-b * (L_theta -
  L_ref)), with L_ref the frozen starting model's diffusion loss on the same noise and timestep.
  The reference point is taken as 0 (a simplification: KTO proper estimates it from the policy /
  reference KL); the other streams keep the plain diffusion loss as the anchor.

Adding an objective is a new class here; the loop does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import checkpoint as ckpt


@dataclass
class Chunk:
    """Rows of one step's batch: images, classes, timesteps, noise, loss weights and source stream."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    coef: torch.Tensor
    stream: torch.Tensor

    def __getitem__(self, index) -> Chunk:
        return Chunk(
            self.x[index], self.y[index], self.t[index], self.noise[index], self.coef[index], self.stream[index]
        )


class DiffusionObjective:
    """The diffusion loss of every image (improved-diffusion's ``training_losses``)."""

    name = "diffusion"

    def setup(self, loop: Any) -> None:
        """Called once the loop has built its model and device."""

    def diffusion_terms(self, loop: Any, model: torch.nn.Module, chunk: Chunk) -> dict[str, torch.Tensor]:
        kwargs = {"y": chunk.y} if loop.class_cond else None
        return loop.diffusion.training_losses(model, chunk.x, chunk.t, model_kwargs=kwargs, noise=chunk.noise)

    def per_sample_loss(self, loop: Any, chunk: Chunk) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss to weight and sum, per image; the diffusion terms, for the timestep sampler and logs)."""
        with loop.autocast():
            terms = self.diffusion_terms(loop, loop.ddp_model, chunk)
        return terms["loss"].float(), terms


def kto_loss(loss: torch.Tensor, ref_loss: torch.Tensor, sign: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-image KTO loss from the model's and the reference's diffusion losses (see the module doc)."""
    return torch.sigmoid(sign * beta * (loss - ref_loss))


class KTOObjective(DiffusionObjective):
    """Diffusion-KTO on stream ``stream`` (its weights are +|w| liked, -|w| disliked)."""

    name = "kto"

    def __init__(self, reference_weights: dict[str, torch.Tensor], beta: float = 5000.0, stream: int = 1):
        self.reference_weights = reference_weights
        self.beta = beta
        self.stream = stream
        self.reference: torch.nn.Module | None = None

    def setup(self, loop: Any) -> None:
        self.reference = loop.new_model()
        ckpt.load_weights(self.reference, self.reference_weights, loop.run_dir)
        self.reference.eval().requires_grad_(False)

    def per_sample_loss(self, loop: Any, chunk: Chunk) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per, terms = super().per_sample_loss(loop, chunk)
        rows = (chunk.stream == self.stream).nonzero().squeeze(1)
        if len(rows):
            with torch.no_grad(), loop.autocast():
                ref = self.diffusion_terms(loop, self.reference, chunk[rows])["loss"].float()
            kto = kto_loss(per[rows], ref, torch.sign(chunk.coef[rows]), self.beta)
            per = per.index_put((rows,), kto)
            terms = {**terms, "kto": kto.detach()}
        return per, terms
