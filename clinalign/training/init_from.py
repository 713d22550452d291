"""``--init_from DIR``: start training or finetuning from a diffusers ``UNet2DModel``.

DIR is a UNet folder (``config.json`` + weights, as ``UNet2DModel.save_pretrained`` writes) or a
pipeline folder holding one under ``unet/`` (a ``clinalign export``, or a diffusers pipeline such
as the one diffusers' ``train_unconditional.py`` example saves). It is converted once into
``RUN/init_from/``, a clinalign run at step 0, and the command then starts from that run as it would
from ``--resume_checkpoint``: rerunning the same command resumes.

What carries over: the UNet's architecture (``ModelConfig.diffusers_unet``) and weights; from a
pipeline's ``scheduler/`` the noise schedule, prediction type and variance; from
``model_index.json`` the timestep convention; from ``class_map.json`` the class names. What must
fit the data, or the command stops before writing anything: the image channels, the image size
(``--image_size``, when typed), learned or fixed variance, and the class embedding. The class
embedding grows when the data has classes the model lacks: each new row starts at the mean of the
model's rows (zeros for an unconditional model, which then starts as exactly that model).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classmap import CLASS_MAP_FILE, ClassMap
from ..diffusion import DiffusionConfig
from ..diffusion.schedules import get_named_beta_schedule
from ..errors import ConfigError, DataError
from ..models.unet import CLASS_EMBEDDING_KEY, ModelConfig, build_denoiser
from ..utils.config import from_dict, typed
from ..utils.fileio import write_json_atomic
from . import checkpoint as ckpt
from .config import TrainConfig

log = logging.getLogger(__name__)

INIT_DIR = "init_from"
# Architecture flags: with --init_from the architecture is the UNet's own, so typing one is a mistake.
ARCH_FLAGS = (
    "num_channels",
    "num_res_blocks",
    "num_heads",
    "num_heads_upsample",
    "attention_resolutions",
    "channel_mult",
)
PRIVATE_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


@dataclasses.dataclass
class Source:
    """What DIR holds: the UNet's config and folder, and the pipeline's scheduler, index and class map."""

    path: Path
    unet_dir: Path
    unet: dict[str, Any]
    scheduler: dict[str, Any] | None
    index: dict[str, Any]
    class_map: ClassMap | None


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable as JSON ({exc}); pass a folder written by save_pretrained") from None


def read_source(path: str | Path) -> Source:
    path = Path(path)
    if (path / "unet" / "config.json").is_file():
        root, unet_dir = path, path / "unet"
    elif (path / "config.json").is_file():
        root, unet_dir = None, path
    else:
        raise ConfigError(
            f"{path}: holds no diffusers UNet (no config.json, no unet/config.json); pass the folder "
            "UNet2DModel.save_pretrained wrote, or a pipeline folder with unet/"
        )
    unet = _json(unet_dir / "config.json")
    if unet.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"{unet_dir}: is a {unet['_class_name']}; --init_from takes a UNet2DModel (pixel space)")
    scheduler = None
    if root is not None and (root / "scheduler" / "scheduler_config.json").is_file():
        scheduler = _json(root / "scheduler" / "scheduler_config.json")
    index = _json(root / "model_index.json") if root is not None and (root / "model_index.json").is_file() else {}
    class_map = None
    if root is not None and (root / CLASS_MAP_FILE).is_file():
        class_map = ClassMap.load(root / CLASS_MAP_FILE)
    return Source(path, unet_dir, unet, scheduler, index, class_map)


def schedule_of(scheduler: dict[str, Any], where: Path) -> str:
    """clinalign's name for a diffusers beta schedule, or a ConfigError naming what differs."""
    steps = int(scheduler.get("num_train_timesteps", 1000))
    if scheduler.get("trained_betas") is not None:
        theirs = np.asarray(scheduler["trained_betas"], dtype=np.float64)
        for name in ("linear", "cosine"):
            ours = get_named_beta_schedule(name, steps)
            if len(ours) == len(theirs) and np.allclose(ours, theirs, rtol=1e-6, atol=0):
                return name
    elif scheduler.get("beta_schedule", "linear") == "squaredcos_cap_v2":
        return "cosine"
    elif scheduler.get("beta_schedule", "linear") == "linear":
        scale = 1000.0 / steps
        start, end = float(scheduler.get("beta_start", 1e-4)), float(scheduler.get("beta_end", 0.02))
        if np.isclose(start, scale * 1e-4, rtol=1e-6) and np.isclose(end, scale * 0.02, rtol=1e-6):
            return "linear"
    raise ConfigError(
        f"{where}: its scheduler's beta schedule ({scheduler.get('beta_schedule')}, beta_start "
        f"{scheduler.get('beta_start')}, beta_end {scheduler.get('beta_end')}) is none of clinalign's (linear "
        f"1e-4..0.02 scaled by 1000/T, or cosine); pass {where / 'unet'} to start from the UNet alone under "
        "--noise_schedule"
    )


def diffusion_settings(source: Source) -> dict[str, Any]:
    """DiffusionConfig values (and learn_sigma / sigma_small) that the pipeline's scheduler fixes."""
    out: dict[str, Any] = {"rescale_timesteps": bool(source.index.get("rescale_timesteps", False))}
    s, where = source.scheduler, source.path
    if s is None:
        return out
    if s.get("rescale_betas_zero_snr"):
        raise ConfigError(f"{where}: a zero-terminal-SNR schedule is not one clinalign trains; pass {where / 'unet'}")
    out["diffusion_steps"] = int(s.get("num_train_timesteps", 1000))
    out["noise_schedule"] = schedule_of(s, where)
    prediction = s.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ConfigError(
            f"{where}: predicts {prediction!r}; clinalign trains ε ('epsilon'), x_0 ('sample') or v ('v_prediction')"
        )
    out["predict_xstart"] = prediction == "sample"
    if prediction == "v_prediction":
        out["prediction"] = "v"
    variance = s.get("variance_type")
    if variance in ("learned", "fixed_small_log", "fixed_large_log"):
        raise ConfigError(f"{where}: variance_type {variance!r} is not one of clinalign's; pass {where / 'unet'}")
    if variance is not None:
        out["learn_sigma"] = variance == "learned_range"
        out["sigma_small"] = variance == "fixed_small"
    return out


def _agree(given: dict[str, Any], fixed: dict[str, Any], where: Path) -> None:
    clash = [f"--{k} {v!r} ({where} has {fixed[k]!r})" for k, v in given.items() if k in fixed and fixed[k] != v]
    if clash:
        raise ConfigError(
            f"flags disagree with --init_from: {', '.join(clash)}; drop them (the model's values are used)"
        )


def model_settings(source: Source, given: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig values from the UNet's config (architecture, size, variance output, classes)."""
    u, where = source.unet, source.unet_dir
    size = u.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"{where}: sample_size {size} is not square; clinalign trains square images")
        size = size[0]
    if u.get("class_embed_type") is not None:
        raise ConfigError(f"{where}: class_embed_type {u['class_embed_type']!r}; clinalign embeds classes by id")
    c_in, c_out = int(u.get("in_channels", 3)), int(u.get("out_channels", 3))
    if c_out not in (c_in, 2 * c_in):
        raise ConfigError(f"{where}: {c_out} output channels for {c_in} input channels; expected ε/x_0 (+ variance)")
    widths = list(u.get("block_out_channels", [224, 448, 672, 896]))
    arch = {k: v for k, v in u.items() if k not in PRIVATE_KEYS}
    fixed = {"image_size": int(size or 64), "learn_sigma": c_out == 2 * c_in}
    _agree(given, fixed, where)
    return {
        **fixed,
        "num_channels": widths[0],
        "channel_mult": ",".join(str(w // widths[0]) for w in widths),
        "num_res_blocks": int(u.get("layers_per_block", 2)),
        "dropout": float(given.get("dropout", u.get("dropout", 0.0))),
        "use_scale_shift_norm": u.get("resnet_time_scale_shift") == "scale_shift",
        "class_cond": bool(given.get("class_cond", bool(u.get("num_class_embeds")))),
        "diffusers_unet": json.dumps(arch, sort_keys=True),
    }


def configs_for(source: Source, args) -> tuple[ModelConfig, DiffusionConfig]:
    """The run's ModelConfig and DiffusionConfig: what DIR fixes, then typed flags, then defaults."""
    given_model, given_diffusion = typed(args, ModelConfig), typed(args, DiffusionConfig)
    arch = [f"--{k}" for k in ARCH_FLAGS if k in given_model]
    if arch:
        raise ConfigError(f"--init_from {source.path} brings its own architecture; drop {', '.join(arch)}")
    fixed = diffusion_settings(source)
    variance = {k: fixed.pop(k) for k in ("learn_sigma", "sigma_small") if k in fixed}
    model = model_settings(source, given_model)
    if variance.get("learn_sigma", model["learn_sigma"]) != model["learn_sigma"]:
        raise ConfigError(
            f"{source.path}: the scheduler's variance_type and the UNet's output channels disagree "
            "(learned range needs twice the image channels); fix the scheduler config"
        )
    _agree(given_model, {k: v for k, v in variance.items() if k == "sigma_small"}, source.path)
    _agree(given_diffusion, fixed, source.path)
    model_cfg = from_dict(ModelConfig, {**given_model, **variance, **model})
    return model_cfg, from_dict(DiffusionConfig, {**given_diffusion, **fixed})


def data_classes_and_channels(data_dir: str, train_cfg: TrainConfig) -> tuple[list[str], int]:
    """The data's class names (sorted) and channels (1 when every file is grayscale), from file names and headers."""
    from ..data.folder import image_channels
    from ..data.naming import declared_classes, list_images

    if not data_dir:
        raise ConfigError("--data_dir is required: the folder of training images (searched recursively)")
    paths = list_images(data_dir)
    classes = sorted(set(declared_classes(paths, data_dir)))
    if train_cfg.rgb:
        return classes, 3
    gray = True
    for p in paths:
        try:
            gray = image_channels(p) == 1
        except DataError:
            if not train_cfg.skip_bad_images:
                raise
            continue
        if not gray:
            break
    return classes, 1 if gray else 3


def check_channels_fit(source: Source, channels: int) -> None:
    theirs = int(source.unet.get("in_channels", 3))
    if theirs == channels:
        return
    fix = (
        "pass --rgb True to train on the grayscale images as RGB"
        if theirs == 3
        else "convert the images to grayscale (the model takes one channel)"
    )
    raise ConfigError(f"{source.unet_dir}: the model takes {theirs}-channel images but the data has {channels}; {fix}")


def fit_classes(source: Source, data: list[str], class_cond: bool) -> tuple[ClassMap, list[int | None]]:
    """The run's class map and, per class, the model's embedding row it starts from (None: a new row)."""
    rows = int(source.unet.get("num_class_embeds") or 0)
    where = source.unet_dir
    if not class_cond:
        if rows:
            raise ConfigError(f"{where}: the model embeds {rows} classes; train it with --class_cond True")
        return ClassMap([]), []
    named = source.class_map
    if named is not None and len(named) != rows:
        raise ConfigError(f"{source.path}: class_map.json names {len(named)} classes but the UNet embeds {rows}")
    if named is None and 0 < rows and len(data) < rows:
        raise ConfigError(
            f"{where}: the model embeds {rows} classes and the data has {len(data)} ({', '.join(data)}), and no "
            f"class_map.json says which row is which; add {source.path / CLASS_MAP_FILE} naming the rows"
        )
    if named is None:
        named = ClassMap(data[:rows])
        if rows:
            log.warning("%s: no class map; rows 0..%d taken as %s (sorted names)", where, rows - 1, named.names)
    new = [c for c in data if c not in named]
    grown = ClassMap(named.names + new, named.parents)
    return grown, list(range(rows)) + [None] * len(new)


def fitted_weights(source: Source, model_cfg: ModelConfig, channels: int, class_map, rows) -> dict[str, torch.Tensor]:
    """DIR's weights as the run's Denoiser state dict, the class embedding grown to ``class_map``."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(source.unet_dir)
    weights = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    target = build_denoiser(model_cfg, channels, len(class_map)).state_dict()
    if CLASS_EMBEDDING_KEY in target:
        old = weights.get(CLASS_EMBEDDING_KEY)
        start = torch.zeros(target[CLASS_EMBEDDING_KEY].shape[1]) if old is None else old.mean(dim=0)
        weights[CLASS_EMBEDDING_KEY] = torch.stack([start if r is None else old[r] for r in rows])
    missing = sorted(set(target) ^ set(weights))
    bad = [k for k in target if k in weights and target[k].shape != weights[k].shape]
    if missing or bad:
        raise ConfigError(
            f"{source.unet_dir}: its weights do not fit its config (keys {missing[:3]}, shapes {bad[:3]}); "
            "pass a folder that UNet2DModel.save_pretrained wrote"
        )
    return weights


def import_diffusers(source_dir: str, target: Path, data_dir: str, train_cfg: TrainConfig, args) -> Path:
    """Convert DIR into the clinalign run ``target`` (one checkpoint at step 0); nothing is written on an error."""
    source = read_source(source_dir)
    model_cfg, diffusion_cfg = configs_for(source, args)
    classes, channels = data_classes_and_channels(data_dir, train_cfg)
    check_channels_fit(source, channels)
    class_map, rows = fit_classes(source, classes, model_cfg.class_cond)
    weights = fitted_weights(source, model_cfg, channels, class_map, rows)
    origin = str(Path(source_dir).resolve())
    meta = {
        "model": dataclasses.asdict(model_cfg),
        "diffusion": dataclasses.asdict(diffusion_cfg),
        "channels": channels,
        "class_map": class_map.to_dict(),
        "objective": "imported",
        "init_from": origin,
        "step": 0,
    }
    ckpt.save_checkpoint(target, meta, weights, {rate: weights for rate in train_cfg.ema_rates}, {})
    write_json_atomic(target / "config.json", {k: v for k, v in meta.items() if k != "step"})
    class_map.save(target / CLASS_MAP_FILE)
    grown = [n for n, r in zip(class_map.names, rows) if r is None]
    log.info("%s -> %s%s", origin, target, f" (new class rows: {', '.join(grown)})" if grown else "")
    return target


def start_from_diffusers(train_cfg: TrainConfig, args, data_dir: str) -> TrainConfig:
    """With --init_from: DIR converted into RUN/init_from (first run only) and the config starting from it."""
    if not train_cfg.init_from:
        return train_cfg
    if train_cfg.resume_checkpoint:
        raise ConfigError("--init_from and --resume_checkpoint both name a starting point; give one")
    run_dir = train_cfg.run_path()
    target = run_dir / INIT_DIR
    origin = str(Path(train_cfg.init_from).resolve())
    done = ckpt.latest_checkpoint(target)
    if done is None:
        if ckpt.latest_checkpoint(run_dir) is not None:
            raise ConfigError(
                f"{run_dir}: already trained without --init_from; drop it to resume, or use a new --run_dir"
            )
        import_diffusers(train_cfg.init_from, target, data_dir, train_cfg, args)
    elif done.meta.get("init_from") != origin:
        raise ConfigError(
            f"{run_dir}: was started from {done.meta.get('init_from')}, not {origin}; use a new --run_dir"
        )
    return dataclasses.replace(train_cfg, resume_checkpoint=str(target))
