"""Draw samples from a checkpoint into an image folder in the seed's naming.

Output: ``LABEL_000123.png`` files (so they feed straight into feedback, scoring and finetuning),
``manifest.csv`` (ID, class, seed, batch, checkpoint, sampler, steps[, guidance, guidance_interval][, reward])
and ``samples.npz`` (improved-diffusion's ``arr_0`` images NHWC uint8, ``arr_1`` class indices). Each batch's noise
depends only on (seed, batch index), so an interrupted run continues where it stopped and the
same command gives the same images.

Under ``torchrun --nproc_per_node N`` the batches are dealt round-robin (batch b to rank
b % N); rank 0 gathers each round's images, writes them, the manifest and ``samples.npz``, so
the folder is the one a single process writes (byte for byte on CPUs; GPU kernels may differ in
the last bit between devices) and resumes the same way. Rejection sampling
decides each batch from the acceptances before it, so it runs in one process.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..data.classmap import ClassMap
from ..data.naming import MANIFEST_NAME, list_images
from ..diffusion.samplers import SAMPLERS
from ..errors import ConfigError
from ..training.checkpoint import Checkpoint, find_checkpoint
from ..utils.config import option
from ..utils.distributed import DistInfo, barrier, init_distributed, resolve_device
from ..utils.fileio import atomic_writer
from .guidance import guidance_scale, guided, parse_interval

log = logging.getLogger(__name__)

# Steps when --steps is 0: every training step for ancestral sampling; the usual counts for the others.
DEFAULT_STEPS = {"ancestral": None, "ddim": 50, "dpm++": 20}


@dataclass
class SampleConfig:
    """How to draw samples (``clinalign sample`` flags; the loop and the demo build one too)."""

    num_samples: int = option(16, "images in total, spread evenly over --classes")
    classes: str = option("", "comma-separated class names (default: every class of the run)")
    # dpm++ 20 steps: the best FID and plausibility of every sampler measured on a PBC model,
    # ancestral with all 1000 steps included (docs/performance.md); the seed's image_sample.py
    # keeps ancestral sampling.
    sampler: str = option(
        "dpm++", "dpm++ (DPM-Solver++(2M), good at 10-25 steps), ddim, or ancestral (DDPM)", choices=SAMPLERS
    )
    steps: int = option(0, "denoising steps (0 = all training steps for ancestral, 50 for ddim, 20 for dpm++)")
    eta: float = option(0.0, "DDIM eta (0 = deterministic)")
    batch_size: int = option(16, "images per forward pass")
    seed: int = option(0, "each batch's noise depends only on (seed, batch index)")
    ema: bool = option(True, "use the EMA weights")
    clip_denoised: bool = option(True, "clip predicted x_0 to [-1, 1] while sampling")
    use_fp16: bool = option(False, "bf16 autocast")
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, mps")
    max_draw_factor: int = option(50, "rejection sampling: give up on a class after drawing this many times its quota")
    guidance: float = option(
        -1.0,
        "steer away from the experts' rejections (models finetuned with --objective guidance): "
        "-1 = the strength the model was finetuned with, 0 = off",
    )
    guidance_interval: str = option(
        "",
        "guide only the steps whose noise level lies in LO,HI (0 clean, 1 pure noise), e.g. 0.1,0.6; "
        "empty = every step",
    )

    @property
    def class_list(self) -> list[str] | None:
        return [c.strip() for c in self.classes.split(",") if c.strip()] or None

    @property
    def resolved_steps(self) -> int | None:
        return self.steps or DEFAULT_STEPS[self.sampler]


UNCONDITIONAL = "sample"  # file-name prefix of an unconditional model's samples
MANIFEST_FIELDS = [
    "ID",
    "class",
    "seed",
    "batch",
    "checkpoint",
    "sampler",
    "steps",
    "guidance",
    "guidance_interval",
    "reward",
]

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


def generate(
    model,
    diffusion,
    labels: torch.Tensor,
    shape: tuple[int, ...],
    *,
    sampler: str,
    steps: int | None,
    generator: torch.Generator,
    class_cond: bool,
    eta: float = 0.0,
    clip_denoised: bool = True,
    use_fp16: bool = False,
) -> torch.Tensor:
    """One batch of images in [-1, 1] (N, C, H, W) on the CPU."""
    from ..diffusion import sample_images

    device = next(model.parameters()).device
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_fp16 else nullcontext()
    with torch.inference_mode(), amp:
        x = sample_images(
            model,
            diffusion,
            shape,
            sampler=sampler,
            steps=steps,
            model_kwargs={"y": labels.to(device)} if class_cond else None,
            eta=eta,
            clip_denoised=clip_denoised,
            generator=generator,
        )
    return x.float().clamp(-1, 1).cpu()


def check_one_process(accept) -> None:
    """Rejection sampling under torchrun: refused before anything is loaded."""
    if accept is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "rejection sampling (--reward_checkpoint) runs in one process: each batch depends on what the "
            "batches before it accepted; run it without torchrun"
        )


def sample_folder(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    cfg: SampleConfig,
    accept: AcceptFn | None = None,
    progress: bool = False,
) -> SampleResult:
    """Draw ``cfg.num_samples`` images (split evenly over the classes) into ``out``; resumable.

    ``accept`` (rejection sampling): keeps only the images it accepts, drawing more until every
    class has its quota or has used ``cfg.max_draw_factor`` times its quota in draws. Under
    torchrun every rank calls this and gets the same result; only rank 0 touches ``out``.
    """
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {cfg.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    check_one_process(accept)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else find_checkpoint(checkpoint)
    class_map, names = _classes_to_draw(ck, cfg.class_list)
    out = Path(out)
    joined = dist.is_available() and dist.is_initialized()
    info = init_distributed(resolve_device(cfg.device))
    try:
        result = _sample(ck, out, cfg, class_map, names, accept, info, progress)
        if not joined:
            # every rank past its last collective before any closes its connections: a rank that
            # tore down while another still read the final broadcast aborted it (seen 2 in ~40 runs
            # on two busy cores: "terminate called without an active exception")
            barrier(info)
        return result
    finally:
        if info.enabled and not joined:  # leave a group we created, as a process that ends must
            dist.destroy_process_group()


def _sample(ck, out: Path, cfg: SampleConfig, class_map, names, accept, info: DistInfo, progress: bool):
    settings = {
        "checkpoint": str(ck.path),
        "sampler": cfg.sampler,
        "steps": str(cfg.resolved_steps or ""),
        "seed": str(cfg.seed),
    }
    if ck.guidance:  # only such models record it, so older folders still resume
        settings["guidance"] = str(guidance_scale(ck, cfg.guidance))
        # empty when every step is guided, as manifests written before the column read
        interval = parse_interval(cfg.guidance_interval)
        settings["guidance_interval"] = ",".join(f"{v:g}" for v in interval) if interval else ""
    rows = _on_main(info, lambda: _resume_rows(out, out / MANIFEST_NAME, settings))
    if rows and info.is_main:
        log.info("%s: resuming, %d of %d samples already there", out, len(rows), cfg.num_samples)
    draw = _Drawer(ck, cfg, class_map, names, rows, settings, accept)
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.num_samples, initial=len(rows), unit="img", dynamic_ncols=True)
    if info.enabled:
        _draw_sharded(draw, out, info, bar)
    else:
        while draw.needs_more():
            written = draw.batch(out)
            if bar is not None:
                bar.update(written)
    if bar is not None:
        bar.close()
    return _on_main(info, lambda: _finish(out, draw, class_map, names))


def _finish(out: Path, draw: _Drawer, class_map: ClassMap, names: list[str]) -> SampleResult:
    write_npz(out, draw.rows, class_map)
    concepts = {n: class_map.parents[n] for n in {r["class"] for r in draw.rows} if class_map.parents.get(n)}
    if concepts:  # evaluation judges a concept's samples as its parent class
        from ..data.concepts import write_concepts_file

        write_concepts_file(out, concepts)
    per_class = {n: sum(1 for r in draw.rows if r["class"] == n) for n in names}
    return SampleResult(
        out=out,
        written=draw.written,
        drawn=sum(draw.drawn_by.values()),
        per_class=per_class,
        drawn_per_class=draw.drawn_by,
        short=draw.short,
    )


def _on_main(info: DistInfo, fn: Callable):
    """``fn()`` on rank 0 and its result, or its error, on every rank: the others never read ``out``."""
    if not info.enabled:
        return fn()
    box: list = [None]
    if info.is_main:
        try:
            box[0] = (True, fn())
        except Exception as exc:
            box[0] = (False, exc)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _draw_sharded(draw: _Drawer, out: Path, info: DistInfo, bar) -> None:
    """Batch b on rank b % world; per round rank 0 writes every rank's batch in batch order, then the manifest."""
    plan = draw.plan()
    first = draw.next_batch
    own = list(range(first + info.rank, first + len(plan), info.world_size))
    log.info("rank %d of %d draws %d of %d batches: %s", info.rank, info.world_size, len(own), len(plan), own)
    for start in range(0, len(plan), info.world_size):
        mine = start + info.rank
        pixels = draw.draw(first + mine, plan[mine])[0] if mine < len(plan) else None
        gathered: list = [None] * info.world_size
        dist.all_gather_object(gathered, pixels)  # all_gather: gather_object is not on every backend
        if not info.is_main:
            continue
        written = sum(
            draw.record(out, first + start + k, plan[start + k], batch)
            for k, batch in enumerate(gathered)
            if batch is not None
        )
        _write_rows_atomic(out / MANIFEST_NAME, draw.rows)  # a prefix of whole batches: resume stays exact
        if bar is not None:
            bar.update(written)
    draw.next_batch = first + len(plan)
    for name in draw.remaining:
        draw.remaining[name] = 0


def _classes_to_draw(ck: Checkpoint, classes: list[str] | None) -> tuple[ClassMap, list[str]]:
    class_map = ck.class_map
    if not ck.model.class_cond:
        if classes:
            raise ConfigError(f"{ck.path}: the model is unconditional (class_cond False); drop --classes")
        class_map = ClassMap([UNCONDITIONAL])
    names = list(classes) if classes else (ck.sample_classes if ck.model.class_cond else list(class_map.names))
    for name in names:
        class_map.index(name)  # unknown class -> DataError naming the known ones
    return class_map, names


class _Drawer:
    """The state of one sampling run: quotas left, rows written, draws per class, the model."""

    def __init__(
        self,
        ck: Checkpoint,
        cfg: SampleConfig,
        class_map: ClassMap,
        names: list[str],
        rows: list[dict[str, str]],
        settings: dict[str, str],
        accept: AcceptFn | None,
    ):
        self.cfg, self.class_map, self.names, self.rows, self.settings, self.accept = (
            cfg,
            class_map,
            names,
            rows,
            settings,
            accept,
        )
        quotas = class_quotas(names, cfg.num_samples)
        done = {n: sum(1 for r in rows if r["class"] == n) for n in names}
        self.remaining = {n: max(0, quotas[n] - done[n]) for n in names}
        self.next_batch = max((int(r["batch"]) for r in rows), default=-1) + 1
        # Per class, so one class the reward model (almost) never accepts is given up on without using
        # up the draws of the others.
        self.budget = {n: cfg.max_draw_factor * max(1, self.remaining[n]) for n in names}
        self.drawn_by = dict.fromkeys(names, 0)
        self.short: dict[str, int] = {}
        self.written, self.counter = 0, len(rows)
        self.class_cond = bool(ck.model.class_cond)
        self.model = guided(
            ck.build_model(ema=cfg.ema, device=resolve_device(cfg.device)).eval(),
            ck,
            cfg.guidance,
            cfg.guidance_interval,
        )
        self.diffusion = ck.build_diffusion(timestep_respacing="")
        size = int(ck.model.image_size)
        self.shape_tail = (ck.channels, size, size)

    def needs_more(self) -> bool:
        return any(self.remaining.values())

    def plan(self) -> list[list[str]]:
        """The labels of every batch still to draw, when every draw is kept (no rejection)."""
        left, batches = dict(self.remaining), []
        while any(left.values()):
            batches.append(_batch_labels(left, self.cfg.batch_size))
            for name in batches[-1]:
                left[name] -= 1
        return batches

    def batch(self, out: Path) -> int:
        """Draw one batch, write what is kept, update the manifest; returns the number written."""
        batch_names = _batch_labels(self.remaining, self.cfg.batch_size)
        if self.accept is not None:  # draw a full batch even near the end: rejects are expected
            batch_names = (batch_names * self.cfg.batch_size)[: self.cfg.batch_size]
        pixels, keep, scores = self.draw(self.next_batch, batch_names)
        written = self.record(out, self.next_batch, batch_names, pixels, keep, scores)
        _write_rows_atomic(out / MANIFEST_NAME, self.rows)
        self.next_batch += 1
        self._give_up_on_hopeless_classes()
        return written

    def draw(self, batch_index: int, batch_names: list[str]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        """uint8 NHWC images of one batch (noise from (seed, batch_index)), the accepted mask and the scores."""
        from ..data.transforms import to_uint8

        cfg = self.cfg
        labels = torch.tensor([self.class_map.index(n) for n in batch_names])
        images = generate(
            self.model,
            self.diffusion,
            labels,
            (len(batch_names), *self.shape_tail),
            sampler=cfg.sampler,
            steps=cfg.resolved_steps,
            generator=batch_generator(cfg.seed, batch_index),
            class_cond=self.class_cond,
            eta=cfg.eta,
            clip_denoised=cfg.clip_denoised,
            use_fp16=cfg.use_fp16,
        )
        keep, scores = (torch.ones(len(batch_names), dtype=torch.bool), None)
        if self.accept is not None:
            keep, scores = self.accept(images, labels)
        return to_uint8(images), keep, scores

    def record(self, out: Path, batch_index: int, batch_names: list[str], pixels: np.ndarray, keep=None, scores=None):
        """Write the kept images of a batch under the next running numbers; returns how many were written."""
        from ..data.transforms import save_png

        written = 0
        for j, name in enumerate(batch_names):
            self.drawn_by[name] += 1
            if (keep is not None and not keep[j]) or self.remaining[name] == 0:
                continue
            file_id = f"{name}_{self.counter:06d}.png"
            save_png(pixels[j], out / file_id)
            self.rows.append(
                {
                    "ID": file_id,
                    "class": name,
                    "batch": str(batch_index),
                    "reward": f"{float(scores[j]):.6f}" if scores is not None else "",
                    **self.settings,
                }
            )
            self.remaining[name] -= 1
            self.counter += 1
            written += 1
        self.written += written
        return written

    def _give_up_on_hopeless_classes(self) -> None:
        for name in self.names:
            if self.remaining[name] and self.drawn_by[name] >= self.budget[name]:
                log.warning(
                    "%s: gave up after drawing %d images, %d short of the quota: too few pass the reward "
                    "bar (raise --max_draw_factor or lower --min_reward)",
                    name,
                    self.drawn_by[name],
                    self.remaining[name],
                )
                self.short[name], self.remaining[name] = self.remaining[name], 0


def _resume_rows(out: Path, manifest: Path, settings: dict[str, str]) -> list[dict[str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    if manifest.exists():
        rows = _read_rows(manifest)
        if rows:
            theirs = {k: rows[0].get(k, "") for k in settings}
            if theirs != settings:
                raise ConfigError(
                    f"{out}: already holds samples from another setting ({theirs}); "
                    "pass a new --out, or delete that folder to start over"
                )
        return [r for r in rows if (out / r["ID"]).exists()]
    try:
        existing = list_images(out)
    except Exception:
        existing = []
    if existing:
        raise ConfigError(
            f"{out}: already holds {len(existing)} images that this command did not write; "
            "pass an empty --out so nothing is overwritten"
        )
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
