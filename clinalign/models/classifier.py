"""Small image classifiers trained from scratch on the user's data (nothing is downloaded).

They serve as the simulated expert, the evaluation oracle, the domain feature extractor for FID
and the trunk of the reward model. Two architectures exist on purpose: the evaluation oracle must
differ from the expert simulator in architecture (and seed, and data split) so that a generator
tuned against one does not simply fool the other.

- ``resnet``: a narrow pre-activation-free ResNet (3 stages, stride 2 between them).
- ``vgg``: plain conv-BN-ReLU pairs with max pooling.

Both take images in [-1, 1] of any size >= 8 px and expose ``features(x) -> (N, D)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("resnet", "vgg")


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNetSmall(nn.Module):
    def __init__(self, in_channels: int, num_outputs: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            _Block(width, width, 1), _Block(width, 2 * width, 2), _Block(2 * width, 4 * width, 2)
        )
        self.feature_dim = 4 * width
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class VGGSmall(nn.Module):
    def __init__(self, in_channels: int, num_outputs: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for mult in (1, 2, 4):
            cout = width * mult
            layers += [
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).amax(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def build_classifier(arch: str, in_channels: int, num_outputs: int, width: int = 32, dropout: float = 0.0) -> nn.Module:
    if arch == "resnet":
        return ResNetSmall(in_channels, num_outputs, width, dropout)
    if arch == "vgg":
        return VGGSmall(in_channels, num_outputs, width, dropout)
    raise ValueError(f"unknown classifier architecture {arch!r}; choose one of {ARCHS}")


def augment(x: torch.Tensor, generator: torch.Generator, colour: float = 0.05) -> torch.Tensor:
    """Augmentations that keep clinical meaning: flips, 90-degree rotations, mild colour jitter.

    Cells have no canonical orientation, so the dihedral group is safe; colour moves stay small
    because stain colour carries diagnostic information (eosinophil granules are orange-red).
    """
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    k = torch.randint(0, 4, (n,), generator=generator)
    x = (
        torch.stack([torch.rot90(img, int(r), dims=(-2, -1)) for img, r in zip(x, k)])
        if x.shape[-1] == x.shape[-2]
        else x
    )
    if colour > 0:
        gain = 1 + colour * (2 * torch.rand(n, x.shape[1], 1, 1, generator=generator) - 1)
        shift = colour * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
        x = (x * gain.to(x.device) + shift.to(x.device)).clamp(-1, 1)
    return x


def save_classifier(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Weights as safetensors with the metadata (arch, channels, classes, ...) in the header."""
    import os
    import tempfile

    from safetensors.torch import save_file

    from ..utils.fileio import default_file_mode

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            tmp,
            metadata={"clinalign_classifier": json.dumps(meta)},
        )
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_classifier(path: str | Path, build=None) -> tuple[nn.Module, dict[str, Any]]:
    """Inverse of ``save_classifier``; ``build(meta) -> nn.Module`` overrides the default builder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file; train it first or pass the right path")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["clinalign_classifier"])
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a clinalign classifier file ({exc}); pass a file written by clinalign"
        ) from exc
    model = (
        build(meta)
        if build
        else build_classifier(meta["arch"], meta["channels"], meta["num_outputs"], meta.get("width", 32))
    )
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta
