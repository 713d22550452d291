"""The reward model Γ(image, declared class) -> P(plausible), and its checkpoint.

Network: a small ResNet trunk (``models.classifier.ResNetSmall``) maps the image to a feature
vector; the declared class enters late, by FiLM on a hidden layer of the head:

    h = trunk(x)                     # (N, D), class-agnostic
    z = W h                          # (N, H)
    u = relu((1 + gamma_c) * z + beta_c)
    logit = w . u + b

Late fusion on purpose: the trunk runs once per image and the head scores *every* class in one
cheap matrix product (``logits_all``), so a real image and its wrong-class twin share one trunk
pass in training, and the class can be ablated at evaluation time. The FiLM hidden layer (rather
than a dot product) lets each class weigh the visual features non-linearly: "granules" make an
eosinophil plausible and a lymphocyte implausible.

The trunk's stem has stride 2 by default: it quarters the work of every later layer, which is
what makes scoring reach thousands of images per second on a laptop CPU, and blood-cell evidence
at 32-64 px (nucleus shape, granules, colour) survives one downsampling (see docs/reward.md).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.classmap import ClassMap
from ..data.folder import images_to_tensor
from ..errors import CheckpointError, ConfigError, DataError
from ..models.classifier import ARCHS, build_classifier, load_classifier, save_classifier
from .files import fix_mode

log = logging.getLogger(__name__)

REWARD_FILE = "reward.safetensors"
REPORT_FILE = "report.json"
HISTORY_FILE = "history.jsonl"
FORMAT = "clinalign_reward"
FORMAT_VERSION = 1

DEFAULT_WIDTH = 16
DEFAULT_STEM_STRIDE = 2


class RewardNet(nn.Module):
    """Image trunk + class-FiLM head; ``forward(x, c)`` gives one plausibility logit per item."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = DEFAULT_WIDTH,
        arch: str = "resnet",
        stem_stride: int = DEFAULT_STEM_STRIDE,
        hidden: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError("the reward model needs at least one class")
        if arch not in ARCHS:
            raise ConfigError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")
        self.trunk = build_classifier(arch, in_channels, 1, width)
        self.trunk.head = nn.Identity()  # only .features() is used; no dead weights in the file
        if stem_stride != 1:
            if arch != "resnet":
                raise ConfigError(
                    f"--stem_stride {stem_stride} applies to the resnet trunk only; use 1 with --arch {arch}"
                )
            self.trunk.stem[0].stride = (stem_stride, stem_stride)
        dim = self.trunk.feature_dim
        hidden = hidden or dim
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, hidden)
        self.film = nn.Embedding(num_classes, 2 * hidden)
        nn.init.zeros_(self.film.weight)  # start as an unconditioned head; classes pull away from it
        self.out = nn.Linear(hidden, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.features(x)

    def head(self, h: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` of features ``h`` ``(N, D)`` declared as ``class_idx`` ``(N,)``."""
        z = self.proj(self.dropout(h))
        gamma, beta = self.film(class_idx).chunk(2, dim=-1)
        return self.out(F.relu(z * (1 + gamma) + beta)).squeeze(-1)

    def head_all(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)``: each image declared as each of the K classes."""
        z = self.proj(self.dropout(h)).unsqueeze(1)  # (N, 1, H)
        gamma, beta = self.film.weight.chunk(2, dim=-1)  # (K, H) each
        return self.out(F.relu(z * (1 + gamma) + beta)).squeeze(-1)

    def forward(self, x: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), class_idx)

    def load_trunk(self, path: str | Path) -> dict[str, Any]:
        """Initialise the trunk from a classifier saved by ``models.classifier.save_classifier``."""
        model, meta = load_classifier(path)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
        try:
            self.trunk.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: its trunk does not fit this reward model ({str(exc).splitlines()[0]}); "
                f"pass --arch {meta.get('arch')} --width {meta.get('width', 32)} to match it"
            ) from None
        return meta


@dataclass
class RewardModel:
    """A trained, calibrated reward model ready to score images in memory.

    ``score_tensors(x, class_indices)`` and ``score_names(x, class_names)`` take images as float
    NCHW in [-1, 1] (the diffusion model's output space) and return calibrated P(plausible).
    """

    net: RewardNet
    class_map: ClassMap
    temperature: float
    image_size: int
    channels: int
    meta: dict[str, Any] = field(default_factory=dict)
    _warned_resize: bool = field(default=False, repr=False)
    _inference_net: RewardNet | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> RewardModel:
        self.net.to(device)
        self._inference_net = None
        return self

    def inference_net(self) -> RewardNet:
        """A frozen copy of ``net`` for scoring: BatchNorm folded into the convolutions, NHWC weights.

        Both are exact rewrites of the same function (up to float rounding) and together roughly
        triple CPU throughput (bench/reward_speed.py --variants). Built on first use; call
        ``refresh()`` if ``net``'s weights change afterwards.
        """
        if self._inference_net is None:
            self._inference_net = fold_batchnorm(self.net).to(memory_format=torch.channels_last)
        return self._inference_net

    def refresh(self) -> None:
        self._inference_net = None

    # -- checkpoint ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/reward.safetensors`` atomically (weights + meta in the header)."""
        meta = {
            **self.meta,
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "classes": list(self.class_map.names),
            "parents": dict(self.class_map.parents),
            "temperature": float(self.temperature),
            "image_size": int(self.image_size),
            "channels": int(self.channels),
            "num_outputs": 1,
        }
        path = save_classifier(Path(directory) / REWARD_FILE, self.net, meta)
        fix_mode(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
        """Load from a checkpoint directory (``--save_checkpoints_dir``) or its ``reward.safetensors``."""
        path = Path(path)
        file = path / REWARD_FILE if path.is_dir() else path
        if not file.is_file():
            raise CheckpointError(
                f"{file}: no reward model here; pass the --save_checkpoints_dir of `clinalign reward train`"
            )
        built: dict[str, Any] = {}

        def build(meta: dict[str, Any]) -> RewardNet:
            if meta.get("format") != FORMAT:
                raise CheckpointError(
                    f"{file}: a classifier, not a reward model; train one with `clinalign reward train`"
                )
            if int(meta.get("version", 0)) > FORMAT_VERSION:
                raise CheckpointError(
                    f"{file}: written by a newer clinalign (format {meta['version']}); upgrade clinalign"
                )
            built["meta"] = meta
            return RewardNet(
                len(meta["classes"]),
                meta["channels"],
                meta["width"],
                meta["arch"],
                meta.get("stem_stride", 1),
                meta.get("hidden"),
                meta.get("dropout", 0.1),
            )

        try:
            net, meta = load_classifier(file, build=build)
        except (CheckpointError, ConfigError):
            raise
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{file}: damaged or incompatible reward model ({exc}); retrain it") from None
        class_map = ClassMap(meta["classes"], {k: v for k, v in (meta.get("parents") or {}).items()})
        model = cls(
            net.eval(), class_map, float(meta["temperature"]), int(meta["image_size"]), int(meta["channels"]), meta
        )
        return model.to(device)

    # -- scoring -------------------------------------------------------------------------------

    def class_indices(self, names: list[str]) -> torch.Tensor:
        return torch.as_tensor(self.class_map.indices(names), dtype=torch.int64)

    def _conform(self, x: torch.Tensor) -> torch.Tensor:
        """Match the model's channels and size (a sampler may run at another resolution)."""
        if x.ndim != 4:
            raise ValueError(f"expected images as float NCHW, got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            if x.shape[1] == 1 and self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise DataError(f"images have {x.shape[1]} channels; this reward model expects {self.channels}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            if x.shape[-1] != x.shape[-2]:
                raise DataError(f"images are {x.shape[-1]}x{x.shape[-2]}; the reward model needs square images")
            if not self._warned_resize:
                log.warning("scoring %dpx images with a %dpx reward model: resizing them", x.shape[-1], self.image_size)
                self._warned_resize = True
            x = F.interpolate(
                x.float(), size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        return x

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, class_indices: torch.Tensor | list[int], batch_size: int = 512) -> torch.Tensor:
        """Uncalibrated logits ``(N,)`` on x's device; ``x`` float NCHW in [-1, 1]."""
        c = torch.as_tensor(class_indices, dtype=torch.int64).flatten()
        if len(c) != len(x):
            raise ValueError(f"{len(x)} images but {len(c)} class indices")
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= len(self.class_map)):
            raise DataError(f"class index out of range: this reward model has {len(self.class_map)} classes")
        net = self.inference_net()
        device = self.device
        out = []
        for i in range(0, len(x), batch_size):
            xb = self._conform(x[i : i + batch_size].to(device, torch.float32))
            # NHWC memory suits oneDNN's CPU convolutions (measured in bench/reward_speed.py).
            xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(net(xb, c[i : i + batch_size].to(device)).float())
        result = torch.cat(out) if out else torch.zeros(0, device=device)
        return result.to(x.device)

    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        return torch.sigmoid(logits / (self.temperature if calibrated else 1.0))

    def score_tensors(
        self, x: torch.Tensor, class_indices: torch.Tensor | list[int], calibrated: bool = True, batch_size: int = 512
    ) -> torch.Tensor:
        """Calibrated P(plausible) ``(N,)`` for images ``x`` (float NCHW in [-1, 1]) of the given classes."""
        return self.probabilities(self.logits(x, class_indices, batch_size), calibrated)

    def score_names(
        self, x: torch.Tensor, class_names: list[str], calibrated: bool = True, batch_size: int = 512
    ) -> torch.Tensor:
        """As :meth:`score_tensors`, with class names (an unknown name raises DataError)."""
        return self.score_tensors(x, self.class_indices(list(class_names)), calibrated, batch_size)

    def score_uint8(
        self, images: np.ndarray, class_indices: torch.Tensor | list[int], batch_size: int = 512
    ) -> torch.Tensor:
        """Logits for decoded pixels, uint8 NHWC (the layout files decode to)."""
        return self.logits(images_to_tensor(images), class_indices, batch_size)


def fold_batchnorm(net: RewardNet) -> RewardNet:
    """An eval-mode copy of ``net`` with every Conv-BatchNorm pair merged into one convolution."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()

    def fold(mod: nn.Module) -> None:
        if isinstance(mod, nn.Sequential):  # conv then BN in execution order
            children = list(mod.named_children())
            pairs = [
                (a, b)
                for (a, ma), (b, mb) in zip(children, children[1:])
                if isinstance(ma, nn.Conv2d) and isinstance(mb, nn.BatchNorm2d)
            ]
        else:  # a residual block names its pairs (models.classifier._Block)
            pairs = [
                (a, b)
                for a, b in (("conv1", "bn1"), ("conv2", "bn2"))
                if isinstance(getattr(mod, a, None), nn.Conv2d) and isinstance(getattr(mod, b, None), nn.BatchNorm2d)
            ]
        for a, b in pairs:
            setattr(mod, a, fuse_conv_bn_eval(getattr(mod, a), getattr(mod, b)))
            setattr(mod, b, nn.Identity())
        for child in mod.children():
            fold(child)

    fold(net.trunk)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def describe(meta: dict[str, Any]) -> str:
    return json.dumps(
        {
            k: meta[k]
            for k in ("arch", "width", "stem_stride", "image_size", "channels", "classes", "temperature")
            if k in meta
        }
    )
