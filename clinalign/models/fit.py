"""Training and inference for the small classifiers (expert simulator, oracle, feature extractor).

One routine, so that every classifier in the tool is trained the same way: AdamW with a cosine
learning rate, the clinically-safe augmentations of ``classifier.augment``, class-balanced
cross-entropy, early stopping on validation accuracy, and the best epoch's weights restored.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import augment

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(y, minlength=num_classes).float()
    return torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))


def fit_classifier(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    *,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    colour_jitter: float = 0.05,
    patience: int = 6,
    balanced: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` (logits over ``num_classes``) on images in [-1, 1]; keeps the best validation epoch."""
    device = torch.device(device)
    model.to(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_x) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    weights = class_weights(train_y, num_classes).to(device) if balanced else None
    best = FitResult(best_epoch=-1, best_val_accuracy=-1.0)
    best_state = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, unit="epoch", dynamic_ncols=True, leave=False)
    for epoch in range(epochs):
        loss = _epoch(model, train_x, train_y, opt, sched, gen, batch_size, colour_jitter, weights, device)
        record = {"epoch": epoch, "train_loss": loss, **_validate(model, val_x, val_y, num_classes, device)}
        score = record.get("val_accuracy", -loss)
        best.history.append(record)
        if on_epoch:
            on_epoch(record)
        log.debug("epoch %d %s", epoch, record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
        if score > best.best_val_accuracy or best_state is None:
            best.best_val_accuracy, best.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best.best_epoch >= patience:
            break
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return best


def _validate(model: nn.Module, val_x, val_y, num_classes: int, device) -> dict[str, float]:
    if val_x is None or val_y is None or not len(val_x):
        return {}
    pred = predict_proba(model, val_x, device=device).argmax(1)
    return {
        "val_accuracy": float((pred == val_y).float().mean()),
        "val_balanced_accuracy": balanced_accuracy(pred, val_y, num_classes),
    }


def _epoch(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    opt,
    sched,
    gen: torch.Generator,
    batch_size: int,
    colour_jitter: float,
    weights: torch.Tensor | None,
    device: torch.device,
) -> float:
    """One pass over the shuffled training set with augmentation; returns the mean loss."""
    model.train()
    order = torch.randperm(len(train_x), generator=gen)
    total, seen = 0.0, 0
    for i in range(max(1, math.ceil(len(train_x) / batch_size))):
        idx = order[i * batch_size : (i + 1) * batch_size]
        if len(idx) < 2:  # BatchNorm needs two samples
            continue
        x = augment(train_x[idx], gen, colour_jitter).to(device)
        loss = F.cross_entropy(model(x), train_y[idx].to(device), weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str | torch.device | None = None, **kwargs
) -> torch.Tensor:
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    outs = []
    for i in range(0, len(x), batch_size):
        extra = {k: v[i : i + batch_size].to(device) for k, v in kwargs.items()}
        outs.append(model(x[i : i + batch_size].to(device), **extra).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def predict_proba(
    model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str | torch.device | None = None
) -> torch.Tensor:
    return predict_logits(model, x, batch_size, device).softmax(dim=1)


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    outs = [model.features(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    recalls = [float((pred[y == c] == c).float().mean()) for c in range(num_classes) if (y == c).any()]
    return sum(recalls) / len(recalls) if recalls else float("nan")
