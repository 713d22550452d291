"""Train the reward model: binary cross-entropy on (image, declared class) -> plausible?

One screen of loop (``_train_epoch``) and one of validation. Each epoch is *balanced by sampling*:
half of the (image, class) pairs come from real images (their own class: plausible; a freshly
drawn wrong class: implausible) and half from judged synthetic images, and within those half
plausible, half implausible (``--real_weight`` moves the first split). Sampling rather than loss
weights because a few dozen judged images among thousands of real ones would otherwise carry
per-item loss weights in the hundreds, and those spikes destabilise Adam.

Early stopping watches the validation AUROC on the synthetic feedback (the images the reward is
for); when the validation set has no feedback of both verdicts it falls back to the overall
validation AUROC. Ties are broken by validation NLL. The best epoch's weights are restored and a
temperature is fitted on validation so the reward is a calibrated probability.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.folder import images_to_tensor
from ..errors import ConfigError
from ..models.classifier import augment
from ..review.db import redact_url
from ..utils.config import option
from .calibrate import fit_temperature
from .calibrate import nll as logit_nll
from .data import RewardData, load_reward_data, temporary_export, wrong_classes
from .files import write_json, write_jsonl
from .metrics import auroc, grouped_metrics
from .model import DEFAULT_STEM_STRIDE, DEFAULT_WIDTH, HISTORY_FILE, REPORT_FILE, RewardModel, RewardNet

log = logging.getLogger(__name__)

_EVAL_BATCH = 512
MIN_CALIBRATION_PER_VERDICT = 5


def whole(text: str) -> int:
    """An epoch count typed as a whole number or a float (the seed's scripts pass 30.0)."""
    return int(round(float(text)))


@dataclass
class TrainConfig:
    """The reward model's training; flags keep the seed's names (``train_scoring_function.py``)."""

    train_dir: Path | None = option(None, "real images, CLASS/img.png (ImageNet layout)", kind=Path)
    train_anno_dir: Path | None = option(
        None, "judged synthetic images: CLASS/align/*.png, CLASS/notalign/*.png", kind=Path
    )
    val_dir: Path | None = option(None, "validation real images, CLASS/img.png", kind=Path)
    val_anno_dir: Path | None = option(None, "validation judged images, CLASS/align|notalign/*.png", kind=Path)
    save_dir: Path = option(
        Path("."),
        "where reward.safetensors, report.json and history.jsonl go (what `reward score --checkpoint` takes)",
        name="save_checkpoints_dir",
        kind=Path,
    )
    train_anno_db: str | None = option(
        None, "review database URL (e.g. sqlite:///feedback.db) instead of --train_anno_dir", kind=str
    )
    anno_rule: str = option(
        "majority", "how reviewers' votes become a verdict: majority, unanimous, reviewer:NAME (as review export)"
    )
    epochs: int = option(30, "maximum epochs (early stopping may end sooner)", kind=whole)
    batch_size: int = option(64, "images per step")
    lr: float = option(
        2e-3,
        "peak learning rate (the seed's 1e-4 suits a pretrained trunk; this one trains from scratch)",
        aliases=("--init_lr",),
    )
    weight_decay: float = option(5e-4, "AdamW weight decay")
    lr_schedule: str = option(
        "cosine",
        "one-cycle cosine, or the seed's step decay (--gamma every --lr_decay_every_x_epochs)",
        choices=("cosine", "step"),
    )
    lr_decay_every_x_epochs: int = option(5, "step decay period (with --lr_schedule step)")
    gamma: float = option(0.1, "step decay factor (with --lr_schedule step)")
    image_size: int | None = option(None, "input size (default: the size of the first real image)", kind=int)
    arch: str | None = option(None, "trunk (default resnet, or --init_trunk's)", choices=("resnet", "vgg"))
    width: int | None = option(None, "trunk width (default 16, or --init_trunk's)", kind=int)
    stem_stride: int | None = option(
        None,
        "stride of the trunk's first conv (default 2 from scratch, 1 with --init_trunk)",
        choices=(1, 2),
        kind=int,
    )
    init_trunk: Path | None = option(None, "start the trunk from a classifier saved by clinalign", kind=Path)
    patience: int = option(8, "epochs without validation improvement before stopping")
    real_weight: float = option(0.5, "share of each epoch's (image, class) pairs that come from real images")
    colour_jitter: float = option(0.05, "mild per-channel gain/shift augmentation")
    require_both: bool = option(False, "error (rather than warn) when the feedback holds only one verdict")
    feedback_fraction: float = option(1.0, "fraction of the judged training images used, per class", name="ratio")
    seed: int = option(0, "seeds data order, augmentation and initialisation")
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")
    skip_bad_images: bool = option(False, "leave undecodable image files out instead of stopping")

    def to_json(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        if self.train_anno_db:
            out["train_anno_db"] = redact_url(self.train_anno_db)  # report.json must not keep a password
        return out


@dataclass
class TrainResult:
    model: RewardModel
    report: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    save_dir: Path | None = None


# ---------------------------------------------------------------------------------------------
# Epoch plan: which items, balanced by sampling


def _draw(idx: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` items of ``idx``: whole shuffled passes first, so oversampling repeats evenly."""
    if k <= 0 or len(idx) == 0:
        return np.zeros(0, dtype=np.int64)
    reps = math.ceil(k / len(idx))
    return np.concatenate([rng.permutation(idx) for _ in range(reps)])[:k]


def epoch_plan(
    n_real: int, plausible: np.ndarray | None, real_weight: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Real-image indices and synthetic indices of one epoch.

    The epoch has as many (image, class) pairs as the data has (2 per real image, 1 per judged
    image); ``real_weight`` of them are real pairs, the rest judged pairs split evenly between
    plausible and implausible (all to one side when the feedback is one-sided).
    """
    n_syn = 0 if plausible is None else len(plausible)
    pairs = 2 * n_real + n_syn
    share = 1.0 if n_syn == 0 else 0.0 if n_real == 0 else real_weight
    real_idx = _draw(np.arange(n_real), round(share * pairs / 2), rng)
    syn_idx = np.zeros(0, dtype=np.int64)
    if n_syn:
        assert plausible is not None
        groups = [np.flatnonzero(plausible == v) for v in (1, 0)]
        groups = [g for g in groups if len(g)]
        k = round((1.0 - share) * pairs / len(groups))
        syn_idx = np.concatenate([_draw(g, k, rng) for g in groups])
    return real_idx, syn_idx


# ---------------------------------------------------------------------------------------------
# Training


def _batch_tensor(images: np.ndarray, device: torch.device, gen: torch.Generator | None, colour: float) -> torch.Tensor:
    x = images_to_tensor(images)
    if gen is not None:
        x = augment(x, gen, colour)
    return x.to(device).contiguous(memory_format=torch.channels_last)


def _train_epoch(
    net: RewardNet,
    data: RewardData,
    opt: torch.optim.Optimizer,
    sched,
    cfg: TrainConfig,
    epoch: int,
    gen: torch.Generator,
    device: torch.device,
    candidates: np.ndarray,
) -> float:
    rng = np.random.default_rng([cfg.seed, epoch])
    real, syn = data.train_real, data.train_feedback
    real_idx, syn_idx = epoch_plan(len(real) if real else 0, syn.plausible if syn else None, cfg.real_weight, rng)
    wrong = wrong_classes(real.classes, candidates, rng) if real else None  # afresh every epoch
    # One shuffled stream of items; source 0 = real, 1 = synthetic.
    source = np.r_[np.zeros(len(real_idx), np.int64), np.ones(len(syn_idx), np.int64)]
    index = np.r_[real_idx, syn_idx]
    order = rng.permutation(len(index))
    net.train()
    total, n_pairs = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        sel = order[start : start + cfg.batch_size]
        if len(sel) < 2:  # BatchNorm needs two samples
            continue
        r = index[sel[source[sel] == 0]]
        s = index[sel[source[sel] == 1]]
        images = np.concatenate([src.images[i] for src, i in ((real, r), (syn, s)) if src is not None])
        h = net.features(_batch_tensor(images, device, gen, cfg.colour_jitter))
        logits, targets = [], []
        if len(r):
            hr = h[: len(r)]
            logits.append(net.head(hr, torch.as_tensor(real.classes[r], device=device)))
            targets.append(torch.ones(len(r)))
            w = wrong[r]
            if (w >= 0).any():
                keep = torch.as_tensor(w >= 0, device=device)
                logits.append(net.head(hr[keep], torch.as_tensor(w[w >= 0], device=device)))
                targets.append(torch.zeros(int((w >= 0).sum())))
        if len(s):
            logits.append(net.head(h[len(r) :], torch.as_tensor(syn.classes[s], device=device)))
            targets.append(torch.as_tensor(syn.plausible[s], dtype=torch.float32))
        z = torch.cat(logits)
        y = torch.cat(targets).to(device)
        loss = F.binary_cross_entropy_with_logits(z, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.lr_schedule == "cosine":
            sched.step()
        total += loss.item() * len(y)
        n_pairs += len(y)
    if cfg.lr_schedule == "step":
        sched.step()
    return total / max(n_pairs, 1)


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass
class ValSet:
    """Every validation (image, class, verdict) pair, with the fixed wrong classes of real images."""

    split_images: list[np.ndarray]
    rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]  # (split, image idx, class idx, label)
    synthetic: np.ndarray  # per pair, in row order
    labels: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def build_val_set(data: RewardData, seed: int) -> ValSet | None:
    images, rows, synthetic = [], [], []
    candidates = np.asarray(data.class_map.indices(data.real_classes), dtype=np.int64)
    if data.val_real is not None and len(data.val_real):
        vr = data.val_real
        images.append(vr.images)
        n = len(vr)
        rows.append((len(images) - 1, np.arange(n), vr.classes, np.ones(n, np.int64)))
        wrong = wrong_classes(vr.classes, candidates, np.random.default_rng([seed, 99]))  # fixed: comparable epochs
        ok = np.flatnonzero(wrong >= 0)
        rows.append((len(images) - 1, ok, wrong[ok], np.zeros(len(ok), np.int64)))
        synthetic += [np.zeros(n, bool), np.zeros(len(ok), bool)]
    if data.val_feedback is not None and len(data.val_feedback):
        vf = data.val_feedback
        images.append(vf.images)
        rows.append((len(images) - 1, np.arange(len(vf)), vf.classes, vf.plausible))
        synthetic.append(np.ones(len(vf), bool))
    if not rows:
        return None
    return ValSet(
        images,
        rows,
        np.concatenate(synthetic),
        np.concatenate([r[3] for r in rows]),
        np.concatenate([r[2] for r in rows]),
    )


@torch.inference_mode()
def val_logits(net: RewardNet, vs: ValSet, device: torch.device) -> np.ndarray:
    """Logits of every validation pair; one trunk pass per image, all classes from ``head_all``."""
    net.eval()
    out = []
    for split, img_idx, cls_idx, _ in vs.rows:
        imgs = vs.split_images[split]
        for i in range(0, len(img_idx), _EVAL_BATCH):
            j = img_idx[i : i + _EVAL_BATCH]
            all_logits = net.head_all(net.features(_batch_tensor(imgs[j], device, None, 0.0)))
            c = torch.as_tensor(cls_idx[i : i + _EVAL_BATCH], device=device)
            out.append(all_logits.gather(1, c[:, None]).squeeze(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def selection_metric(logits: np.ndarray, vs: ValSet) -> tuple[str, float, float]:
    """(name, AUROC used for early stopping, validation NLL for tie-breaks)."""
    syn = vs.synthetic
    if syn.any() and len(set(vs.labels[syn].tolist())) == 2:
        name, value = "val_auroc_synthetic", auroc(logits[syn], vs.labels[syn])
    else:
        name, value = "val_auroc_overall", auroc(logits, vs.labels)
    return name, value, logit_nll(torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(vs.labels))


# ---------------------------------------------------------------------------------------------
# Orchestration


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: {exc}") from None


def _check_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs {cfg.epochs}: must be at least 1")
    if cfg.batch_size < 2:
        raise ConfigError(f"--batch_size {cfg.batch_size}: must be at least 2 (BatchNorm)")
    if not cfg.lr > 0:
        raise ConfigError(f"--lr {cfg.lr}: must be positive")
    if not 0.0 <= cfg.real_weight <= 1.0:
        raise ConfigError(f"--real_weight {cfg.real_weight}: must be in [0, 1]")
    if cfg.lr_schedule not in ("cosine", "step"):
        raise ConfigError(f"--lr_schedule {cfg.lr_schedule!r}: use cosine or step")
    if cfg.train_anno_dir is not None and cfg.train_anno_db is not None:
        raise ConfigError("give --train_anno_dir or --train_anno_db, not both")


def build_net(cfg: TrainConfig, data: RewardData) -> tuple[RewardNet, dict[str, Any]]:
    trunk_meta: dict[str, Any] = {}
    if cfg.init_trunk is not None:
        from ..models.classifier import load_classifier

        _, trunk_meta = load_classifier(cfg.init_trunk)
        if int(trunk_meta.get("channels", data.channels)) != data.channels:
            raise ConfigError(
                f"--init_trunk {cfg.init_trunk}: a {trunk_meta['channels']}-channel classifier, "
                f"but the images have {data.channels} channel(s)"
            )
    arch = cfg.arch or trunk_meta.get("arch", "resnet")
    width = cfg.width or int(trunk_meta.get("width", 32) if cfg.init_trunk else DEFAULT_WIDTH)
    # A given trunk learned its filters at full resolution; keep it there unless told otherwise.
    stem_stride = cfg.stem_stride or (1 if cfg.init_trunk or arch != "resnet" else DEFAULT_STEM_STRIDE)
    net = RewardNet(len(data.class_map), data.channels, width, arch, stem_stride)
    if cfg.init_trunk is not None:
        net.load_trunk(cfg.init_trunk)
        log.info("trunk initialised from %s", cfg.init_trunk)
    meta = {
        "arch": arch,
        "width": width,
        "stem_stride": stem_stride,
        "hidden": net.proj.out_features,
        "dropout": net.dropout.p,
        "real_classes": data.real_classes,
        "init_trunk": str(cfg.init_trunk) if cfg.init_trunk else None,
    }
    return net, meta


def train_reward(
    cfg: TrainConfig, data: RewardData | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Train, calibrate and save a reward model into ``cfg.save_dir``; returns it with its report."""
    _check_config(cfg)
    tmp = None
    try:
        if data is None:
            anno = cfg.train_anno_dir
            if cfg.train_anno_db is not None:
                tmp, anno = temporary_export(cfg.train_anno_db, cfg.anno_rule)
            data = load_reward_data(
                cfg.train_dir,
                anno,
                cfg.val_dir,
                cfg.val_anno_dir,
                image_size=cfg.image_size,
                require_both=cfg.require_both,
                feedback_fraction=cfg.feedback_fraction,
                seed=cfg.seed,
                skip_bad_images=cfg.skip_bad_images,
            )
        return _train(cfg, data, on_epoch)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch + 1, pct_start=0.15
        )
    return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.lr_decay_every_x_epochs), gamma=cfg.gamma)


@dataclass
class _Fit:
    """The epochs' outcome: the best weights, when they were reached and by which metric."""

    state: dict[str, torch.Tensor]
    epoch: int
    metric: str
    history: list[dict[str, Any]]


def _fit_epochs(
    net: RewardNet, data: RewardData, vs, cfg: TrainConfig, device: torch.device, save_dir: Path, on_epoch
) -> _Fit:
    """Train epoch by epoch, keeping the best validation epoch (early stopping after ``patience``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = epoch_plan(
        len(data.train_real) if data.train_real else 0,
        data.train_feedback.plausible if data.train_feedback else None,
        cfg.real_weight,
        np.random.default_rng(0),
    )
    sched = _schedule(cfg, opt, max(1, math.ceil(sum(len(p) for p in plan) / cfg.batch_size)))
    candidates = np.asarray(data.class_map.indices(data.real_classes), dtype=np.int64)
    history: list[dict[str, Any]] = []
    best_key: tuple[float, float] | None = None
    best = _Fit({}, -1, "train_loss", history)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        train_loss = _train_epoch(net, data, opt, sched, cfg, epoch, gen, device, candidates)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": round(train_loss, 6), "lr": lr}
        key = (-train_loss, 0.0)
        if vs is not None:
            best.metric, value, val_nll = selection_metric(val_logits(net, vs, device), vs)
            record.update({best.metric: value, "val_nll": val_nll})
            key = (value if not math.isnan(value) else -math.inf, -val_nll)
        record["best"] = best_key is None or key > best_key
        if record["best"]:
            best_key, best.epoch, best.state = key, epoch, copy.deepcopy(net.state_dict())
        record["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(record)
        write_jsonl(save_dir / HISTORY_FILE, history)
        log.debug("epoch %d: %s", epoch, {k: v for k, v in record.items() if k != "epoch"})
        if on_epoch is not None:
            on_epoch(record)
        if vs is not None and epoch - best.epoch >= cfg.patience:
            log.info("early stop: %s has not improved for %d epochs", best.metric, cfg.patience)
            break
    return best


def _calibrate(net: RewardNet, vs, data: RewardData, device: torch.device) -> dict[str, Any]:
    """Temperature scaling on the validation pairs, and the calibrated and raw validation metrics.

    The reward is for synthetic images, so it is calibrated on them when there are enough of both
    verdicts for one scalar to be estimated; else on every validation pair.
    """
    if vs is None:
        return {"temperature": 1.0, "calibrated_on": None, "validation": None, "validation_uncalibrated": None}
    logits = val_logits(net, vs, device)
    syn = vs.synthetic
    counts = np.bincount(vs.labels[syn], minlength=2) if syn.any() else np.zeros(2, int)
    use = syn if counts.min() >= MIN_CALIBRATION_PER_VERDICT else np.ones(len(vs), bool)
    temperature = fit_temperature(torch.from_numpy(logits[use]), torch.from_numpy(vs.labels[use]))
    names = [data.class_map.name(int(c)) for c in vs.classes]
    raw = grouped_metrics(1 / (1 + np.exp(-logits)), vs.labels, names, syn)
    return {
        "temperature": temperature,
        "calibrated_on": "validation synthetic feedback" if use is syn else "all validation pairs",
        "validation": grouped_metrics(1 / (1 + np.exp(-logits / temperature)), vs.labels, names, syn),
        "validation_uncalibrated": {k: raw[k] for k in ("overall", "real", "synthetic")},
    }


def _train(cfg: TrainConfig, data: RewardData, on_epoch) -> TrainResult:
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    net, meta = build_net(cfg, data)
    net.to(device).to(memory_format=torch.channels_last)
    vs = build_val_set(data, cfg.seed)
    if vs is None:
        log.warning(
            "no validation data: no early stopping, and the reward is not calibrated (T = 1); "
            "pass --val_dir and --val_anno_dir"
        )
    save_dir = Path(cfg.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    fit = _fit_epochs(net, data, vs, cfg, device, save_dir, on_epoch)
    net.load_state_dict(fit.state)
    net.eval()
    calibration = _calibrate(net, vs, data, device)
    meta.update(temperature=calibration["temperature"], calibrated_on=calibration["calibrated_on"])
    model = RewardModel(net.cpu(), data.class_map, calibration["temperature"], data.image_size, data.channels, meta)
    model.save(save_dir)
    report = {
        "format": "clinalign_reward_report",
        "selection_metric": fit.metric,
        "best_epoch": fit.epoch,
        "epochs_run": len(fit.history),
        **calibration,
        "data": data.summary(),
        "config": cfg.to_json(),
        "model": dict(meta),
    }
    write_json(save_dir / REPORT_FILE, report)
    log.info("saved reward model to %s (best epoch %d, T = %.3f)", save_dir, fit.epoch, calibration["temperature"])
    return TrainResult(model.to(device), report, fit.history, save_dir)
