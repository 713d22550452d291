"""The one training loop: pretraining and finetuning.

Pretraining is this loop with one stream of real images, each weighted 1. Finetuning is the same
loop with two streams that share timesteps — real images weighted beta and scored synthetic
images weighted by their reward — so that resume, EMA, checkpoints, DDP, AMP and metrics behave
identically in both. The per-step objective is

    L = sum over streams s of  mean_i [ w_i * k_i * L_diffusion(x_i, t_i) ]

with w the per-sample weight and k the importance weight of the timestep sampler.

Diffusion-KTO (Li et al. 2024) replaces L_diffusion on one stream by a per-image utility of the
implicit reward: for an image the expert liked (w > 0) the loss is sigmoid(b * (L_theta - L_ref))
and for one it disliked (w < 0) sigmoid(-b * (L_theta - L_ref)), where L_ref is the frozen
starting model's diffusion loss on the same noise and timestep. The reference point is taken
as 0 (a simplification: KTO proper estimates it from the policy/reference KL); the real-data
stream keeps the plain diffusion loss as the anchor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from ..utils.distributed import DistInfo, barrier, init_distributed, resolve_device
from ..errors import ConfigError

log = logging.getLogger(__name__)

# A stream yields (x, y, w): images in [-1, 1], class indices, per-sample loss weights.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
StreamFactory = Callable[[DistInfo, int], list[Iterator[Batch]]]  # (dist, start_step) -> streams


@dataclass
class TrainSpec:
    """Everything the loop needs; built by ``pretrain``/``finetune`` from flags."""

    run_dir: Path
    model_cfg: dict[str, Any]
    diffusion_cfg: dict[str, Any]
    train_cfg: dict[str, Any]
    channels: int
    class_map: Any  # data.classmap.ClassMap
    streams: StreamFactory
    init_weights: dict[str, torch.Tensor] | None = None  # start from these (finetuning), fresh optimizer
    resume: ckpt.Checkpoint | None = None  # full resume: weights, EMA, optimizer, step
    extra_meta: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    kto: KTOSpec | None = None
    # Class-embedding rows this run adds (new concepts): trained at lr x new_class_lr_scale while the
    # other rows stay frozen. At the base lr a copied row moves ~lr per step, far too little to
    # leave its parent (measured: 0.12 in 200 steps, against ~15 between two classes' rows).
    new_class_rows: list[int] = field(default_factory=list)
    new_class_lr_scale: float = 1.0


@dataclass
class KTOSpec:
    """Diffusion-KTO on stream ``stream`` (its weights are +|w| liked, -|w| disliked)."""

    reference_weights: dict[str, torch.Tensor]
    beta: float = 5000.0
    stream: int = 1


def kto_loss(loss: torch.Tensor, ref_loss: torch.Tensor, sign: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-image KTO loss from the model's and the reference's diffusion losses (see module doc)."""
    return torch.sigmoid(sign * beta * (loss - ref_loss))


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Randomness of one step depends only on (seed, step, rank): a resumed run replays it exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def ema_decay(rate: float, step: int) -> float:
    """EMA decay with warm-up: min(rate, (1 + step) / (10 + step)).

    Without warm-up a 0.9999 EMA of a short run (a CPU demo, a test, a brief finetune) is still
    mostly the random initialisation; with it, long runs are unchanged (the cap binds after
    ~10/(1 - rate) steps) and short runs get a usable average.
    """
    return min(rate, (1.0 + step) / (10.0 + step))


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
    from ..models.unet import CLASS_EMBEDDING_KEY

    emb = model.get_parameter(CLASS_EMBEDDING_KEY)
    trained = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
    trained[torch.as_tensor(spec.new_class_rows)] = 1.0
    emb.register_hook(lambda grad: grad * trained)  # zero gradient: AdamW leaves the old rows as they are
    rest = [p for p in model.parameters() if p is not emb]
    return [{"params": rest}, {"params": [emb], "lr_scale": spec.new_class_lr_scale, "weight_decay": 0.0}]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    try:  # the fused kernel is measurably faster where it exists (CUDA, recent CPU builds)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def config_mismatch(saved: dict[str, Any], typed: dict[str, Any]) -> list[str]:
    return [f"--{k} {typed[k]!r} (checkpoint has {saved[k]!r})" for k in typed if k in saved and saved[k] != typed[k]]


class _Meter:
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


def train(spec: TrainSpec) -> Path:
    """Run (or resume) training until the step budget is spent; returns the final checkpoint path."""
    from ..diffusion import create_diffusion, create_named_schedule_sampler

    cfg = spec.train_cfg
    device = resolve_device(cfg.get("device", "auto"))
    dist_info = init_distributed(device)
    seed = int(cfg["seed"])
    run_dir = Path(spec.run_dir)
    model_cfg, diff_cfg = spec.model_cfg, spec.diffusion_cfg

    torch.manual_seed(seed)  # identical initial weights on every rank
    from ..models.unet import build_denoiser

    model = build_denoiser(model_cfg, spec.channels, len(spec.class_map)).to(device)
    diffusion = create_diffusion(
        steps=diff_cfg["diffusion_steps"], learn_sigma=model_cfg["learn_sigma"], sigma_small=model_cfg["sigma_small"],
        noise_schedule=diff_cfg["noise_schedule"], use_kl=diff_cfg["use_kl"], predict_xstart=diff_cfg["predict_xstart"],
        rescale_timesteps=diff_cfg["rescale_timesteps"], rescale_learned_sigmas=diff_cfg["rescale_learned_sigmas"],
        timestep_respacing="",  # training always uses the full process
    )
    schedule_sampler = create_named_schedule_sampler(cfg["schedule_sampler"], diffusion)
    optimizer = make_optimizer(param_groups(model, spec), cfg["lr"], cfg["weight_decay"], device)
    ema_rates = [r.strip() for r in str(cfg["ema_rate"]).split(",") if r.strip()]

    start_step, skipped = 0, 0
    state: dict[str, Any] = {}
    if spec.resume is not None:
        ckpt.load_weights(model, spec.resume.weights(ema=False), spec.resume.path)
        state = spec.resume.state()
        start_step = spec.resume.step
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        if state.get("schedule_sampler") and hasattr(schedule_sampler, "load_state_dict"):
            schedule_sampler.load_state_dict(state["schedule_sampler"])
        skipped = int(state.get("skipped_steps", 0))
    elif spec.init_weights is not None:
        ckpt.load_weights(model, spec.init_weights, run_dir)
    ema_params = {}
    for rate in ema_rates:
        if spec.resume is not None and rate in spec.resume.ema_rates:
            weights = spec.resume.weights(ema=rate)
            ema_params[rate] = [weights[name].to(device).float() for name, _ in model.named_parameters()]
        else:
            ema_params[rate] = [p.detach().clone().float() for p in model.parameters()]
    set_lr(optimizer, cfg["lr"])  # a resumed optimizer keeps the flag's lr; annealing recomputes it

    total_steps = _total_steps(cfg)
    if total_steps and start_step >= total_steps:
        log.info("run %s is already at step %d of %d: nothing to do", run_dir, start_step, total_steps)
        return spec.resume.path if spec.resume else run_dir

    reference = None
    if spec.kto is not None:
        reference = build_denoiser(model_cfg, spec.channels, len(spec.class_map)).to(device)
        ckpt.load_weights(reference, spec.kto.reference_weights, run_dir)
        reference.eval().requires_grad_(False)

    ddp_model: nn.Module = model
    if dist_info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    amp, scaler = autocast_context(device, cfg["use_fp16"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    streams = spec.streams(dist_info, start_step)
    class_cond = bool(model_cfg["class_cond"])

    meta_base = {
        "model": model_cfg, "diffusion": diff_cfg, "channels": spec.channels,
        "class_map": spec.class_map.to_dict(), **spec.extra_meta,
    }

    def save(step: int) -> Path:
        names = [n for n, _ in model.named_parameters()]
        full_state = model.state_dict()
        emas = {}
        for rate, params in ema_params.items():
            ema_state = dict(full_state)  # buffers (none in this UNet) follow the live model
            ema_state.update({n: p for n, p in zip(names, params)})
            emas[rate] = ema_state
        run_state = {
            "optimizer": optimizer.state_dict(),
            "skipped_steps": skipped,
            "schedule_sampler": schedule_sampler.state_dict() if hasattr(schedule_sampler, "state_dict") else {},
        }
        if scaler is not None:
            run_state["scaler"] = scaler.state_dict()
        path = ckpt.save_checkpoint(run_dir, {**meta_base, "step": step}, full_state, emas, run_state)
        ckpt.prune_checkpoints(run_dir, int(cfg.get("keep_checkpoints", 0)))
        return path

    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = run_dir / "metrics.jsonl"
    meter = _Meter()
    bar = None
    if spec.progress and dist_info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total_steps or None, initial=start_step, unit="step", dynamic_ncols=True)

    params = list(model.parameters())
    last_path: Path | None = None
    step = start_step
    model.train()
    while not total_steps or step < total_steps:
        gen = step_generator(seed, step, dist_info.rank)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # dropout
        parts = [next(s) for s in streams]
        per_part = parts[0][0].shape[0]
        t, importance = schedule_sampler.sample(per_part, torch.device("cpu"), generator=gen)
        x = torch.cat([p[0] for p in parts]).to(device, non_blocking=True)
        y = torch.cat([p[1] for p in parts]).to(device)
        coef = torch.cat([p[2].float() * importance / per_part for p in parts]).to(device)
        kto_rows = torch.zeros(x.shape[0], dtype=torch.bool, device=device)
        if reference is not None:
            kto_rows[spec.kto.stream * per_part:(spec.kto.stream + 1) * per_part] = True
        t_all = t.repeat(len(parts)).to(device)
        noise = torch.randn(x.shape, generator=gen).to(device)

        optimizer.zero_grad(set_to_none=True)
        mb = cfg["microbatch"] if cfg["microbatch"] > 0 else x.shape[0]
        chunks = list(range(0, x.shape[0], mb))
        step_losses, step_terms = [], {}
        loss_total = 0.0
        for i, lo in enumerate(chunks):
            sl = slice(lo, lo + mb)
            sync = i == len(chunks) - 1 or not dist_info.enabled
            # DDP's no_sync must cover the backward too; autocast only the forward, as torch advises.
            with nullcontext() if sync else ddp_model.no_sync():
                with amp():
                    kwargs = {"y": y[sl]} if class_cond else None
                    terms = diffusion.training_losses(ddp_model, x[sl], t_all[sl], model_kwargs=kwargs, noise=noise[sl])
                per = terms["loss"].float()
                # Only KTO runs pay for nonzero(): on a GPU it waits for the device.
                rows = kto_rows[sl].nonzero().squeeze(1) if reference is not None else ()
                if len(rows):
                    with torch.no_grad(), amp():
                        ref = diffusion.training_losses(
                            reference, x[sl][rows], t_all[sl][rows], noise=noise[sl][rows],
                            model_kwargs={"y": y[sl][rows]} if class_cond else None)["loss"].float()
                    kto = kto_loss(per[rows], ref, torch.sign(coef[sl][rows]), spec.kto.beta)
                    per = per.index_put((rows,), kto)
                    step_terms.setdefault("kto", []).append(kto.detach())
                loss = (per * coef[sl].abs()).sum()
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_total += float(loss.detach())
            step_losses.append(terms["loss"].detach().float())
            for key in ("mse", "vb"):
                if key in terms:
                    step_terms.setdefault(key, []).append(terms[key].detach().float())
        per_sample = torch.cat(step_losses)
        if hasattr(schedule_sampler, "update_with_local_losses"):
            schedule_sampler.update_with_local_losses(t_all, per_sample)

        if scaler is not None:
            scaler.unscale_(optimizer)
        clip = float(cfg.get("grad_clip", 0) or 0)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))
        if not (math.isfinite(grad_norm) and math.isfinite(loss_total)):
            skipped += 1  # never let a non-finite step touch the weights
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            log.warning("step %d: non-finite loss or gradient; skipped (%d so far)", step, skipped)
        else:
            set_lr(optimizer, _lr_at(cfg, step))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            with torch.no_grad():
                live = [p.detach().float() for p in params]
                for rate, ema in ema_params.items():
                    torch._foreach_lerp_(ema, live, 1.0 - ema_decay(float(rate), step))
        step += 1

        meter.images += x.shape[0] * dist_info.world_size
        meter.add("loss", loss_total)
        meter.add("grad_norm", grad_norm if math.isfinite(grad_norm) else float("nan"))
        for key, vals in step_terms.items():
            meter.add(key, float(torch.cat(vals).mean()))
        quart = (t_all.cpu() * 4 // diffusion.num_timesteps).clamp(max=3)
        for q in range(4):
            sel = quart == q
            if sel.any():
                meter.add(f"loss_q{q}", float(per_sample[sel].mean()), int(sel.sum()))
        if bar is not None:
            bar.update(1)
        if step % cfg["log_interval"] == 0 or step == total_steps:
            elapsed = time.perf_counter() - meter.start
            record = {"step": step, **meter.means(), "images_per_s": meter.images / max(elapsed, 1e-9),
                      "lr": optimizer.param_groups[0]["lr"], "skipped_steps": skipped,
                      "images_seen": step * per_part * len(parts) * dist_info.world_size}
            if dist_info.is_main:
                with metrics_file.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
                log.debug("metrics %s", record)
            meter.reset()
        if step % cfg["save_interval"] == 0 and step != total_steps:
            if dist_info.is_main:
                last_path = save(step)
            barrier(dist_info)

    if dist_info.is_main:
        last_path = save(step)
    barrier(dist_info)
    if bar is not None:
        bar.close()
    if skipped:
        log.warning("%d step(s) had a non-finite loss or gradient and were skipped", skipped)
    return last_path or run_dir


def _total_steps(cfg: dict[str, Any]) -> int:
    limits = [int(cfg[k]) for k in ("max_steps", "lr_anneal_steps") if int(cfg.get(k, 0) or 0) > 0]
    return min(limits) if limits else 0


def _lr_at(cfg: dict[str, Any], step: int) -> float:
    if not cfg.get("lr_anneal_steps"):
        return cfg["lr"]
    return cfg["lr"] * (1.0 - step / cfg["lr_anneal_steps"])


def default_run_dir(train_cfg: dict[str, Any]) -> Path:
    return Path(train_cfg.get("run_dir") or os.environ.get("OPENAI_LOGDIR") or "runs/default")


def prepare_resume(run_dir: Path, typed_model: dict[str, Any], typed_diffusion: dict[str, Any],
                   resume_checkpoint: str = "") -> ckpt.Checkpoint | None:
    """The checkpoint to resume from: the run dir's own latest, else ``--resume_checkpoint``.

    Flags typed on the command line must agree with the checkpoint's config; the rest come from it.
    """
    found = ckpt.latest_checkpoint(run_dir)
    if found is None and resume_checkpoint:
        found = ckpt.find_checkpoint(resume_checkpoint)
    if found is None:
        return None
    problems = config_mismatch(found.model_config, typed_model) + config_mismatch(found.diffusion_config, typed_diffusion)
    if problems:
        raise ConfigError(
            f"{found.path}: flags disagree with the checkpoint's config: {', '.join(problems)}; "
            "drop those flags (the checkpoint's values are used), or use a new --run_dir")
    return found
