"""The one training loop: pretraining and finetuning.

Pretraining is this loop with one stream of real images, each weighted 1. Finetuning is the same
loop with two streams that share timesteps — real images weighted beta and scored synthetic
images weighted by their reward — so that resume, EMA, checkpoints, DDP, AMP and metrics behave
identically in both. What is minimised is an objective object (:mod:`.objectives`); the loop
only assembles batches, steps the optimizer, averages, logs and saves.

Read it top-down: :meth:`TrainLoop.run` calls :meth:`run_step` (:meth:`next_batch`,
:meth:`forward_backward`, :meth:`optimize`) until the step budget is spent, with :meth:`log` and
:meth:`save` on their intervals. Ctrl-C saves a checkpoint before it stops.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion import DiffusionConfig, create_named_schedule_sampler, diffusion_from_config
from ..errors import ClinalignError, ConfigError
from ..models.unet import CLASS_EMBEDDING_KEY, ModelConfig, build_denoiser
from ..utils.config import mismatches
from ..utils.distributed import DistInfo, barrier, init_distributed, resolve_device
from . import checkpoint as ckpt
from .config import TrainConfig
from .ema import EMA
from .objectives import Chunk, DiffusionObjective

log = logging.getLogger(__name__)

# Consecutive steps with a non-finite loss or gradient after which a run has diverged: the weights
# no longer change, so going on only burns time (a PBC run once skipped 10,000 steps in silence).
MAX_CONSECUTIVE_SKIPS = 100

# A stream yields (x, y, w): images in [-1, 1], class indices, per-sample loss weights.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
StreamFactory = Callable[[DistInfo, int], list[Iterator[Batch]]]  # (dist, start_step) -> streams


class TrainingDiverged(ClinalignError):
    """Every recent step was non-finite: the run cannot make progress from here."""


@dataclass
class TrainSpec:
    """Everything the loop needs; built by ``pretrain``/``finetune`` from their configs."""

    run_dir: Path
    model: ModelConfig
    diffusion: DiffusionConfig
    train: TrainConfig
    channels: int
    class_map: Any  # data.classmap.ClassMap
    streams: StreamFactory
    objective: DiffusionObjective = field(default_factory=DiffusionObjective)
    init_weights: dict[str, torch.Tensor] | None = None  # start from these (finetuning), fresh optimizer
    resume: ckpt.Checkpoint | None = None  # full resume: weights, EMA, optimizer, step
    # Continue this checkpoint's training (raw weights, EMA and its age, optimizer moments) with this
    # run's own step count, lr and data: a finetune that differs from training on only by its data.
    carry: ckpt.Checkpoint | None = None
    extra_meta: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    # Class-embedding rows this run adds (new concepts): trained at lr x new_class_lr_scale while the
    # other rows stay frozen. At the base lr a copied row moves ~lr per step, far too little to
    # leave its parent (measured: 0.12 in 200 steps, against ~15 between two classes' rows).
    new_class_rows: list[int] = field(default_factory=list)
    new_class_lr_scale: float = 1.0
    save_steps: frozenset[int] = frozenset()  # checkpoints at these steps too (a control's comparison points)
    # Per stream, the share of the schedule it trains above (kept_timesteps); missing streams: 0, all of it.
    stream_min_t: tuple[float, ...] = ()


def kept_timesteps(
    t: torch.Tensor, importance: torch.Tensor, share: float, num_timesteps: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps and weights of a stream trained only at t >= share * T.

    Its own uniform draws from [share * T, T), each weighing 1, have the expectation of the shared
    draws weighted 1 / (1 - share) above the cut and 0 below it, under any timestep sampler, and
    spend no forward pass on a row that weighs nothing. share 0: the shared draws, unchanged.
    """
    if share <= 0:
        return t, importance
    lo = min(math.ceil(share * num_timesteps), num_timesteps - 1)
    return torch.randint(lo, num_timesteps, t.shape, generator=gen), torch.ones_like(importance)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Randomness of one step depends only on (seed, step, rank): a resumed run replays it exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def autocast_context(device: torch.device, enabled: bool) -> tuple[Callable[[], Any], Any]:
    """(factory of the autocast context, loss scaler or None): bf16 where supported, else fp16 + scaling."""
    if not enabled:
        return nullcontext, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None


def param_groups(model: nn.Module, spec: TrainSpec) -> list[dict[str, Any]]:
    """All parameters in one group, or, when the run adds concept rows, the class embedding apart."""
    if not spec.new_class_rows:
        return [{"params": list(model.parameters())}]
    emb = model.get_parameter(CLASS_EMBEDDING_KEY)
    trained = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
    trained[torch.as_tensor(spec.new_class_rows)] = 1.0
    emb.register_hook(lambda grad: grad * trained)  # zero gradient: AdamW leaves the old rows as they are
    rest = [p for p in model.parameters() if p is not emb]
    return [{"params": rest}, {"params": [emb], "lr_scale": spec.new_class_lr_scale, "weight_decay": 0.0}]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    try:  # the fused kernel is measurably faster where it exists (CUDA, recent CPU builds)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def carried_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``saved``'s moments under ``optimizer``'s own hyperparameters (this run's lr, weight decay)."""
    groups = optimizer.state_dict()["param_groups"]
    return {
        "state": saved["state"],
        "param_groups": [{**g, "params": s["params"]} for g, s in zip(groups, saved["param_groups"], strict=True)],
    }


class Meter:
    """Accumulates per-interval statistics for metrics.jsonl."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.images = 0
        self.start = time.perf_counter()

    def add(self, key: str, value: float, n: int = 1) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value * n
        self.counts[key] = self.counts.get(key, 0) + n

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}


@dataclass
class StepResult:
    loss: float
    per_sample: torch.Tensor  # the diffusion loss of every row (for the timestep sampler)
    terms: dict[str, list[torch.Tensor]]
    t: torch.Tensor


class TrainLoop:
    """Builds the model, optimizer and EMA from a :class:`TrainSpec` (resuming if asked) and trains."""

    def __init__(self, spec: TrainSpec):
        self.spec, self.cfg, self.run_dir = spec, spec.train, Path(spec.run_dir)
        self.device = resolve_device(self.cfg.device)
        self.dist = init_distributed(self.device)
        self.seed = int(self.cfg.seed)
        self.class_cond = bool(spec.model.class_cond)
        torch.manual_seed(self.seed)  # identical initial weights on every rank
        self.model = self.new_model()
        self.diffusion = diffusion_from_config(
            spec.diffusion,
            learn_sigma=spec.model.learn_sigma,
            sigma_small=spec.model.sigma_small,
            timestep_respacing="",
        )
        self.schedule_sampler = create_named_schedule_sampler(self.cfg.schedule_sampler, self.diffusion)
        self.optimizer = make_optimizer(param_groups(self.model, spec), self.cfg.lr, self.cfg.weight_decay)
        self.step, self.skipped, self.skipped_in_a_row = 0, 0, 0
        self.ema_age = 0  # steps the EMA averaged before this run's step 0 (its warm-up counts them)
        state = self._load_start()
        self.ema = EMA(self.model, self.cfg.ema_rates, self._saved_ema())
        set_lr(self.optimizer, self.cfg.lr)  # a resumed optimizer keeps the flag's lr; annealing recomputes it
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.cfg.compile:  # only the training forward: checkpoints keep the plain module's keys
            self.ddp_model = torch.compile(self.ddp_model)
        self.autocast, self.scaler = autocast_context(self.device, self.cfg.use_fp16)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.objective = spec.objective
        self.objective.setup(self)
        self.params = list(self.model.parameters())
        self.meter = Meter()

    def new_model(self) -> nn.Module:
        return build_denoiser(self.spec.model, self.spec.channels, len(self.spec.class_map)).to(self.device)

    def _load_start(self) -> dict[str, Any]:
        """Weights (and optimizer, sampler, counters) from the resume or carried checkpoint, or the init weights."""
        resume = self.spec.resume or self.spec.carry
        if resume is None:
            if self.spec.init_weights is not None:
                ckpt.load_weights(self.model, self.spec.init_weights, self.run_dir)
            return {}
        ckpt.load_weights(self.model, resume.weights(ema=False), resume.path)
        state = resume.state()
        self.ema_age = int(state.get("ema_age", 0))
        if self.spec.resume is None:  # carried: this run's own steps, sampler and skip count start at 0
            self.ema_age += resume.step
            if state.get("optimizer"):
                self.optimizer.load_state_dict(carried_optimizer_state(state["optimizer"], self.optimizer))
            else:
                log.warning("%s holds no optimizer state: the optimizer starts fresh", resume.path)
            return {"scaler": state.get("scaler")}
        self.step = resume.step
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("schedule_sampler") and hasattr(self.schedule_sampler, "load_state_dict"):
            self.schedule_sampler.load_state_dict(state["schedule_sampler"])
        self.skipped = int(state.get("skipped_steps", 0))
        return state

    def _saved_ema(self) -> dict[str, dict[str, torch.Tensor]]:
        resume = self.spec.resume or self.spec.carry
        if resume is None:
            return {}
        missing = [rate for rate in self.cfg.ema_rates if rate not in resume.ema_rates]
        if missing and self.spec.resume is None:
            log.warning(
                "%s has no EMA at rate %s (it has %s): that EMA starts at its raw weights",
                resume.path,
                ", ".join(missing),
                ", ".join(resume.ema_rates) or "none",
            )
        return {rate: resume.weights(ema=rate) for rate in self.cfg.ema_rates if rate in resume.ema_rates}

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> Path:
        """Train until the step budget is spent (Ctrl-C saves first); returns the last checkpoint."""
        total = self.cfg.total_steps
        if total and self.step >= total:
            log.info("run %s is already at step %d of %d: nothing to do", self.run_dir, self.step, total)
            return self.spec.resume.path if self.spec.resume else self.run_dir
        self._announce(total)
        lock = self._lock_run_dir()
        try:
            last = self._steps(total)
        finally:
            if lock is not None:
                lock.close()
        if self.skipped:
            log.warning("%d step(s) had a non-finite loss or gradient and were skipped", self.skipped)
        return last or self.run_dir

    def _steps(self, total: int) -> Path | None:
        streams = self.spec.streams(self.dist, self.step)
        bar = self._progress_bar(total)
        last: Path | None = None
        try:
            while not total or self.step < total:
                self.run_step(streams)
                if bar is not None:
                    bar.update(1)
                if self.step % self.cfg.log_interval == 0 or self.step == total:
                    self.log(bar)
                due = self.step % self.cfg.save_interval == 0 or self.step in self.spec.save_steps
                if due and self.step != total:
                    last = self.save_all_ranks() or last
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving a checkpoint to resume from", self.step)
            self.save_all_ranks()
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.save_all_ranks() or last

    def _lock_run_dir(self):
        """An exclusive lock on RUN_DIR/.lock for the main process (released when it ends, even on kill -9):
        two runs writing checkpoints into one directory would interleave them."""
        if not self.dist.is_main:
            return None
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_dir / ".lock", "w")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(
                f"{self.run_dir}: another clinalign process is training in this run directory; wait for it, stop "
                "it, or use a new --run_dir"
            ) from None
        return handle

    def _announce(self, total: int) -> None:
        stop = f"until step {total}" if total else "with no step limit (stop with Ctrl-C)"
        log.info(
            "training %s from step %d: a checkpoint every %d steps, at the end and on Ctrl-C, in %s",
            stop,
            self.step,
            self.cfg.save_interval,
            self.run_dir / "checkpoints",
        )

    def _progress_bar(self, total: int):
        if not (self.spec.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=total or None, initial=self.step, unit="step", dynamic_ncols=True)

    def run_step(self, streams: list[Iterator[Batch]]) -> None:
        gen = step_generator(self.seed, self.step, self.dist.rank)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # dropout
        batch = self.next_batch(streams, gen)
        result = self.forward_backward(batch)
        if hasattr(self.schedule_sampler, "update_with_local_losses"):
            self.schedule_sampler.update_with_local_losses(result.t, result.per_sample)
        grad_norm = self.optimize(result.loss)
        self.step += 1
        self._record(batch, result, grad_norm)

    def next_batch(self, streams: list[Iterator[Batch]], gen: torch.Generator) -> Chunk:
        """One part from every stream; the parts share timesteps (and the timestep sampler's weights),
        a smaller part the first of them, except a stream with a minimum timestep
        (TrainSpec.stream_min_t), which draws its own. Each part's loss is a mean over its own rows."""
        parts = [next(s) for s in streams]
        sizes = [p[0].shape[0] for p in parts]
        t, importance = self.schedule_sampler.sample(max(sizes), torch.device("cpu"), generator=gen)
        x = torch.cat([p[0] for p in parts])
        noise = torch.randn(x.shape, generator=gen)
        shares = list(self.spec.stream_min_t[: len(parts)]) + [0.0] * len(parts)
        drawn = [
            kept_timesteps(t[:n], importance[:n], shares[s], self.diffusion.num_timesteps, gen)
            for s, n in enumerate(sizes)
        ]
        return Chunk(
            x=x.to(self.device, non_blocking=True),
            y=torch.cat([p[1] for p in parts]).to(self.device),
            t=torch.cat([d[0] for d in drawn]).to(self.device),
            noise=noise.to(self.device),
            coef=torch.cat([p[2].float() * w / n for p, (_, w), n in zip(parts, drawn, sizes)]).to(self.device),
            stream=torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(sizes)).to(self.device),
        )

    def forward_backward(self, batch: Chunk) -> StepResult:
        """Gradients of sum_i |coef_i| * loss_i, in microbatches; DDP syncs on the last one only."""
        self.optimizer.zero_grad(set_to_none=True)
        n = batch.x.shape[0]
        mb = self.cfg.microbatch if self.cfg.microbatch > 0 else n
        starts = list(range(0, n, mb))
        total, raw, terms = 0.0, [], {}
        for i, lo in enumerate(starts):
            chunk = batch[lo : lo + mb]
            sync = i == len(starts) - 1 or not self.dist.enabled
            # DDP's no_sync must cover the backward too; the objective autocasts only the forward.
            with nullcontext() if sync else self.ddp_model.no_sync():
                per, chunk_terms = self.objective.per_sample_loss(self, chunk)
                loss = (per * chunk.coef.abs()).sum()
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += float(loss.detach())
            raw.append(chunk_terms["loss"].detach().float())
            for key in ("mse", "vb", "kto"):
                if key in chunk_terms:
                    terms.setdefault(key, []).append(chunk_terms[key].detach().float())
        return StepResult(total, torch.cat(raw), terms, batch.t)

    def optimize(self, loss: float) -> float:
        """Clip, then step (a non-finite step never touches the weights); update the EMA. Returns the grad norm."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = float(self.cfg.grad_clip or 0)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf")))
        if not (math.isfinite(grad_norm) and math.isfinite(loss)):
            self.skipped += 1
            self.skipped_in_a_row += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            log.warning("step %d: non-finite loss or gradient; skipped (%d so far)", self.step, self.skipped)
            if self.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPS and self.scaler is None:
                raise TrainingDiverged(
                    f"{self.run_dir}: the last {self.skipped_in_a_row} steps (to step {self.step}) all had a "
                    "non-finite loss or gradient, so the weights stopped changing: training has diverged. Resume "
                    "from an earlier checkpoint with a lower --lr (or --grad_clip), or without --use_fp16"
                )
            return grad_norm
        self.skipped_in_a_row = 0
        set_lr(self.optimizer, self.cfg.lr_at(self.step))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.model, self.ema_age + self.step)
        return grad_norm

    # -- metrics and checkpoints -----------------------------------------------------------------

    def _record(self, batch: Chunk, result: StepResult, grad_norm: float) -> None:
        meter = self.meter
        meter.images += batch.x.shape[0] * self.dist.world_size
        meter.add("loss", result.loss)
        meter.add("grad_norm", grad_norm if math.isfinite(grad_norm) else float("nan"))
        for key, vals in result.terms.items():
            meter.add(key, float(torch.cat(vals).mean()))
        quart = (result.t.cpu() * 4 // self.diffusion.num_timesteps).clamp(max=3)
        for q in range(4):
            sel = quart == q
            if sel.any():
                meter.add(f"loss_q{q}", float(result.per_sample.cpu()[sel].mean()), int(sel.sum()))
        self._images_per_step = batch.x.shape[0] * self.dist.world_size

    def log(self, bar=None) -> None:
        """One metrics.jsonl line (main process) with the interval's means, then a fresh interval."""
        elapsed = time.perf_counter() - self.meter.start
        record = {
            "step": self.step,
            **self.meter.means(),
            "images_per_s": self.meter.images / max(elapsed, 1e-9),
            "lr": self.optimizer.param_groups[0]["lr"],
            "skipped_steps": self.skipped,
            "images_seen": self.step * self._images_per_step,
        }
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
            log.debug("metrics %s", record)
        self.meter.reset()

    def save_all_ranks(self) -> Path | None:
        path = self.save() if self.dist.is_main else None
        barrier(self.dist)
        return path

    def save(self) -> Path:
        """A checkpoint of the current step: weights, EMAs, optimizer and sampler state, full config."""
        spec = self.spec
        meta = {
            "model": asdict(spec.model),
            "diffusion": asdict(spec.diffusion),
            "channels": spec.channels,
            "class_map": spec.class_map.to_dict(),
            **spec.extra_meta,
            "step": self.step,
        }
        run_state = {
            "optimizer": self.optimizer.state_dict(),
            "skipped_steps": self.skipped,
            "ema_age": self.ema_age,
            "schedule_sampler": self.schedule_sampler.state_dict()
            if hasattr(self.schedule_sampler, "state_dict")
            else {},
        }
        if self.scaler is not None:
            run_state["scaler"] = self.scaler.state_dict()
        path = ckpt.save_checkpoint(
            self.run_dir, meta, self.model.state_dict(), self.ema.state_dicts(self.model), run_state
        )
        ckpt.prune_checkpoints(self.run_dir, int(self.cfg.keep_checkpoints))
        return path


def train(spec: TrainSpec) -> Path:
    """Run (or resume) training until the step budget is spent; returns the final checkpoint path."""
    return TrainLoop(spec).run()


def prepare_resume(
    run_dir: Path, typed_model: dict[str, Any], typed_diffusion: dict[str, Any], resume_checkpoint: str = ""
) -> ckpt.Checkpoint | None:
    """The checkpoint to resume from: the run dir's own latest, else ``--resume_checkpoint``.

    Flags typed on the command line must agree with the checkpoint's config; the rest come from it.
    """
    found = ckpt.latest_checkpoint(run_dir)
    if found is None and resume_checkpoint:
        found = ckpt.find_checkpoint(resume_checkpoint)
    if found is not None:
        check_flags(found, typed_model, typed_diffusion)
    return found


def check_flags(
    found: ckpt.Checkpoint,
    typed_model: dict[str, Any],
    typed_diffusion: dict[str, Any],
    hint: str = "drop those flags (the checkpoint's values are used), or use a new --run_dir",
) -> None:
    """ConfigError naming every typed model/diffusion flag that contradicts the checkpoint's config."""
    problems = mismatches(found.model, typed_model) + mismatches(found.diffusion, typed_diffusion)
    if problems:
        raise ConfigError(f"{found.path}: flags disagree with the checkpoint's config: {', '.join(problems)}; {hint}")
