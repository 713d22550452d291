"""Pixel conversions shared by every stage: PIL image -> model input and back.

Model space is float32 CHW in [-1, 1] (as improved-diffusion): 0 -> -1 and 255 -> +1 exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils.fileio import atomic_writer  # noqa: F401  (re-exported: the one atomic writer)

#: PIL modes that hold one intensity per pixel (an X-ray, a CT slice), alpha aside.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def is_gray_mode(mode: str) -> bool:
    return mode in GRAY_MODES


def to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL image as mode ``L`` (grayscale sources) or ``RGB`` (everything else).

    Transparency is composited on white (a slide/film background, not black); 16/32-bit and float
    grayscale are rescaled to 0..255 instead of clipped, which is what PIL's ``convert("L")`` does.
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_wide_gray_to_uint8(np.asarray(img)), mode="L")
    has_alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
        return flat.convert("L") if is_gray_mode(mode) else flat
    return img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX ...


def _wide_gray_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map 16-bit / 32-bit-int / float grayscale to uint8.

    Integer counts that fit 16 bits are scaled by the 16-bit range (65535 -> 255), so every image of
    a dataset keeps one intensity scale; floats in [0, 1] by 255; anything else has no declared
    range and is stretched min..max per image.
    """
    values = arr.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    is_float = arr.dtype.kind == "f"
    if is_float and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif lo >= 0 and hi <= 65535 and (not is_float or np.array_equal(values, np.round(values))):
        scaled = values * (255.0 / 65535.0)
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def center_crop_arr(img: Image.Image, image_size: int) -> np.ndarray:
    """Scale the shorter side to ``image_size`` and take the centre square (improved-diffusion).

    Halving with BOX first while the image is at least twice the target keeps large images from
    aliasing, then one BICUBIC resize lands the shorter side exactly on ``image_size``.
    """
    while min(*img.size) >= 2 * image_size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = image_size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC (or HW) -> float32 CHW in [-1, 1]."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
    return t / 127.5 - 1.0


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """float CHW or NCHW in [-1, 1] -> uint8 HWC or NHWC (values outside [-1, 1] are clipped)."""
    t = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if t.ndim not in (3, 4):
        raise ValueError(f"to_uint8 expects CHW or NCHW, got shape {tuple(t.shape)}")
    t = ((t + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return t.movedim(-3, -1).contiguous().numpy()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write uint8 HW / HWC (C = 1, 3 or 4) as PNG atomically (temp file + rename)."""
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"save_png expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"save_png expects HW or HWC with 1, 3 or 4 channels, got shape {arr.shape}")
    with atomic_writer(path) as f:
        Image.fromarray(arr).save(f, format="PNG")
    return path
