"""Draw samples from a checkpoint into an image folder in the seed's naming.

Output: ``LABEL_000123.png`` files (so they feed straight into feedback, scoring and finetuning),
``manifest.csv`` (ID, class, seed, batch, checkpoint, sampler, steps[, reward]) and ``samples.npz``
(improved-diffusion's ``arr_0`` images NHWC uint8, ``arr_1`` class indices). Each batch's noise
depends only on (seed, batch index), so an interrupted run continues where it stopped and the
same command gives the same images.
"""

from __future__ import annotations

import csv
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..training.checkpoint import Checkpoint, find_checkpoint
from ..data.classmap import ClassMap
from ..data.naming import MANIFEST_NAME, list_images
from ..utils.distributed import resolve_device
from ..errors import ConfigError
from ..utils.fileio import atomic_writer

log = logging.getLogger(__name__)

SAMPLERS = ("ancestral", "ddim", "dpm++")
UNCONDITIONAL = "sample"  # file-name prefix of an unconditional model's samples
MANIFEST_FIELDS = ["ID", "class", "seed", "batch", "checkpoint", "sampler", "steps", "reward"]

# Given a batch (N,C,H,W in [-1,1]) and its class indices, return (accepted mask, scores or None).
AcceptFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class SampleResult:
    out: Path
    written: int
    drawn: int
    per_class: dict[str, int] = field(default_factory=dict)
    drawn_per_class: dict[str, int] = field(default_factory=dict)  # this call's draws
    short: dict[str, int] = field(default_factory=dict)  # classes given up on: how many they lack

    @property
    def acceptance_rate(self) -> float:
        return self.written / self.drawn if self.drawn else 1.0


def class_quotas(names: list[str], num_samples: int) -> dict[str, int]:
    k = len(names)
    return {name: num_samples // k + (i < num_samples % k) for i, name in enumerate(names)}


def _batch_labels(remaining: dict[str, int], batch_size: int) -> list[str]:
    """Round-robin over classes that still need samples, so every batch mixes classes."""
    labels, left = [], dict(remaining)
    while len(labels) < batch_size and any(left.values()):
        for name in list(left):
            if left[name] > 0 and len(labels) < batch_size:
                labels.append(name)
                left[name] -= 1
    return labels


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + batch_index * 7919 + 17)


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows_atomic(path: Path, rows: list[dict[str, str]]) -> None:
    with atomic_writer(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def generate(model, diffusion, labels: torch.Tensor, shape: tuple[int, ...], *, sampler: str, steps: int | None,
             generator: torch.Generator, class_cond: bool, eta: float = 0.0, clip_denoised: bool = True,
             use_fp16: bool = False) -> torch.Tensor:
    """One batch of images in [-1, 1] (N, C, H, W) on the CPU."""
    from ..diffusion import sample_images

    device = next(model.parameters()).device
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_fp16 else nullcontext()
    with torch.inference_mode(), amp:
        x = sample_images(model, diffusion, shape, sampler=sampler, steps=steps,
                          model_kwargs={"y": labels.to(device)} if class_cond else None,
                          eta=eta, clip_denoised=clip_denoised, generator=generator)
    return x.float().clamp(-1, 1).cpu()


def sample_folder(checkpoint: str | Path | Checkpoint, out: str | Path, *, num_samples: int,
                  classes: list[str] | None = None, sampler: str = "ancestral", steps: int | None = None,
                  batch_size: int = 16, seed: int = 0, ema: bool = True, clip_denoised: bool = True,
                  eta: float = 0.0, device: str = "auto", use_fp16: bool = False, progress: bool = False,
                  accept: AcceptFn | None = None, max_draw_factor: int = 50) -> SampleResult:
    from ..data.transforms import save_png, to_uint8

    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else find_checkpoint(checkpoint)
    class_map = ck.class_map
    class_cond = bool(ck.model_config["class_cond"])
    if not class_cond:
        if classes:
            raise ConfigError(f"{ck.path}: the model is unconditional (class_cond False); drop --classes")
        class_map = ClassMap([UNCONDITIONAL])
    names = list(classes) if classes else list(class_map.names)
    for name in names:
        class_map.index(name)  # unknown class -> DataError naming the known ones
    quotas = class_quotas(names, num_samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_NAME
    settings = {"checkpoint": str(ck.path), "sampler": sampler, "steps": str(steps or ""), "seed": str(seed)}
    rows = _resume_rows(out, manifest, settings)
    done = {n: 0 for n in names}
    for row in rows:
        done[row["class"]] = done.get(row["class"], 0) + 1
    next_batch = max((int(r["batch"]) for r in rows), default=-1) + 1
    remaining = {n: max(0, quotas[n] - done.get(n, 0)) for n in names}
    if rows:
        log.info("%s: resuming, %d of %d samples already there", out, len(rows), num_samples)

    dev = resolve_device(device)
    model = ck.build_model(ema=ema, device=dev).eval()
    diffusion = ck.build_diffusion(timestep_respacing="")
    size = int(ck.model_config["image_size"])
    shape_tail = (ck.channels, size, size)
    written = 0
    # Per class, so one class the reward model (almost) never accepts is given up on without using
    # up the draws of the others.
    budget = {n: max_draw_factor * max(1, remaining[n]) for n in names}
    drawn_by = dict.fromkeys(names, 0)
    short: dict[str, int] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_samples, initial=len(rows), unit="img", dynamic_ncols=True)
    counter = len(rows)
    while any(remaining.values()):
        batch_names = _batch_labels(remaining, batch_size)
        if accept is not None:  # draw a full batch even near the end: rejects are expected
            batch_names = (batch_names * batch_size)[:batch_size]
        labels = torch.tensor([class_map.index(n) for n in batch_names])
        images = generate(model, diffusion, labels, (len(batch_names), *shape_tail), sampler=sampler, steps=steps,
                          generator=batch_generator(seed, next_batch), class_cond=class_cond, eta=eta,
                          clip_denoised=clip_denoised, use_fp16=use_fp16)
        keep = torch.ones(len(batch_names), dtype=torch.bool)
        scores = None
        if accept is not None:
            keep, scores = accept(images, labels)
        pixels = to_uint8(images)
        for j, name in enumerate(batch_names):
            drawn_by[name] += 1
            if not keep[j] or remaining[name] == 0:
                continue
            file_id = f"{name}_{counter:06d}.png"
            save_png(pixels[j], out / file_id)
            rows.append({"ID": file_id, "class": name, "batch": str(next_batch),
                         "reward": f"{float(scores[j]):.6f}" if scores is not None else "", **settings})
            remaining[name] -= 1
            counter += 1
            written += 1
            if bar is not None:
                bar.update(1)
        _write_rows_atomic(manifest, rows)
        next_batch += 1
        for name in names:
            if remaining[name] and drawn_by[name] >= budget[name]:
                log.warning("%s: gave up after drawing %d images, %d short of the quota: too few pass the reward "
                            "bar (raise --max_draw_factor or lower --min_reward)", name, drawn_by[name],
                            remaining[name])
                short[name], remaining[name] = remaining[name], 0
    if bar is not None:
        bar.close()
    write_npz(out, rows, class_map)
    concepts = {n: class_map.parents[n] for n in {r["class"] for r in rows} if class_map.parents.get(n)}
    if concepts:  # evaluation judges a concept's samples as its parent class
        from ..data.concepts import write_concepts_file

        write_concepts_file(out, concepts)
    per_class = {n: sum(1 for r in rows if r["class"] == n) for n in names}
    return SampleResult(out=out, written=written, drawn=sum(drawn_by.values()), per_class=per_class,
                        drawn_per_class=drawn_by,
                        short=short)


def _resume_rows(out: Path, manifest: Path, settings: dict[str, str]) -> list[dict[str, str]]:
    if manifest.exists():
        rows = _read_rows(manifest)
        if rows:
            theirs = {k: rows[0].get(k, "") for k in settings}
            if theirs != settings:
                raise ConfigError(
                    f"{out}: already holds samples from another setting ({theirs}); "
                    "pass a new --out, or delete that folder to start over")
        return [r for r in rows if (out / r["ID"]).exists()]
    try:
        existing = list_images(out)
    except Exception:
        existing = []
    if existing:
        raise ConfigError(f"{out}: already holds {len(existing)} images that this command did not write; "
                          "pass an empty --out so nothing is overwritten")
    return []


def write_npz(out: Path, rows: list[dict[str, str]], class_map) -> Path:
    from PIL import Image

    arrays = []
    for row in rows:
        with Image.open(out / row["ID"]) as im:
            a = np.asarray(im)
        arrays.append(a if a.ndim == 3 else a[..., None])
    images = np.stack(arrays) if arrays else np.zeros((0, 0, 0, 0), np.uint8)
    labels = np.array([class_map.index(r["class"]) for r in rows], dtype=np.int64)
    path = out / "samples.npz"
    with atomic_writer(path, "wb") as f:
        np.savez(f, arr_0=images, arr_1=labels)
    return path
