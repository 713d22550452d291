"""Feature extractors for FID, the k-NN manifold and memorisation.

No Inception-v3 weights can be downloaded, so the default extractor is a domain classifier trained
on the user's real images (the oracle's penultimate layer, or a classifier file the user gives).
A TorchScript Inception network given by path (the NVlabs ``inception-2015-12-05.pt`` used by
StyleGAN2-ADA's metrics, called as ``net(uint8 NCHW, return_features=True)``) adds the standard
FID beside it. A plain state dict (pytorch-fid's ``pt_inception-2015-12-05-*.pth``) would need
torchvision's Inception3 to rebuild the network, which clinalign does not depend on, so it is
refused with a message saying what to pass instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.folder import images_to_tensor
from ..data.transforms import to_uint8
from ..errors import ConfigError
from ..models.classifier import load_classifier
from ..models.fit import extract_features, predict_proba
from .data import match_channels, resize_images

log = logging.getLogger(__name__)


def as_uint8_images(images: np.ndarray | torch.Tensor, image_size: int, channels: int) -> np.ndarray:
    """uint8 NHWC, or float NCHW in [-1, 1] -> uint8 NHWC at ``image_size`` with ``channels``."""
    if isinstance(images, torch.Tensor) or np.asarray(images).dtype != np.uint8:
        t = torch.as_tensor(images)
        if t.ndim != 4:
            raise ValueError(f"float images must be NCHW in [-1, 1], got shape {tuple(t.shape)}")
        images = to_uint8(t)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return match_channels(resize_images(images, image_size), channels)


@torch.no_grad()
def classifier_proba(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs for uint8 NHWC images (already at the model's size)."""
    if len(images) == 0:
        return np.zeros((0, 0))
    return predict_proba(model, images_to_tensor(images), batch_size=batch_size).double().numpy()


@dataclass
class FeatureExtractor:
    """A named map from uint8 NHWC images to feature vectors (float64 N x D)."""

    source: str  # shown in the report: what the features are
    embed: Callable[[np.ndarray], np.ndarray]
    dim: int

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim))
        return self.embed(images)


def classifier_features(model: nn.Module, source: str, batch_size: int = 256) -> FeatureExtractor:
    def embed(images: np.ndarray) -> np.ndarray:
        return extract_features(model, images_to_tensor(images), batch_size=batch_size).double().numpy()

    return FeatureExtractor(source, embed, int(model.feature_dim))


def load_feature_checkpoint(path: str | Path) -> FeatureExtractor:
    """A classifier file written by clinalign (``save_classifier``) used as the feature extractor."""
    model, meta = load_classifier(path)
    return classifier_features(model, f"classifier checkpoint {Path(path).name} ({meta.get('arch', '?')})")


def load_inception(path: str | Path, batch_size: int = 64) -> FeatureExtractor:
    """The standard FID network from a TorchScript file (NVlabs convention); see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--inception {path}: no such file; pass the path of a TorchScript Inception network")
    try:
        net = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as jit_exc:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            raise ConfigError(
                f"--inception {path}: not a TorchScript file ({jit_exc}); pass NVlabs' "
                "inception-2015-12-05.pt (TorchScript)"
            ) from None
        kind = "a state dict" if isinstance(obj, dict) else f"a pickled {type(obj).__name__}"
        raise ConfigError(
            f"--inception {path}: is {kind}, not TorchScript. Rebuilding Inception-v3 from a state dict "
            "(pytorch-fid's pt_inception-2015-12-05-*.pth) needs torchvision, which clinalign does not use; "
            "pass the TorchScript network instead (NVlabs' inception-2015-12-05.pt, as used by "
            "StyleGAN2-ADA), or leave --inception out to use the domain features only"
        ) from None

    @torch.no_grad()
    def embed(images: np.ndarray) -> np.ndarray:
        rgb = match_channels(images, 3)
        outs = []
        for i in range(0, len(rgb), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(rgb[i : i + batch_size])).permute(0, 3, 1, 2)  # uint8 NCHW
            outs.append(net(x, return_features=True).double().cpu())
        return torch.cat(outs).numpy()

    probe = embed(np.zeros((2, 32, 32, 3), np.uint8))
    if probe.ndim != 2:
        raise ConfigError(
            f"--inception {path}: returned shape {probe.shape} for return_features=True; "
            "expected (N, 2048) pool features"
        )
    log.info("standard FID with %s (%d-d features)", path, probe.shape[1])
    return FeatureExtractor(f"Inception-v3 ({path.name})", embed, int(probe.shape[1]))
