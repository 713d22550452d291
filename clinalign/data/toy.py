"""Toy blood-cell smears: an offline dataset whose classes differ the way real cells do.

The classes are told apart by the features a haematologist uses (nucleus shape and lobes, how
much of the cell the nucleus fills, cytoplasm colour, granules, cell size), so a sample can be
judged plausible by eye, by a simulated expert, or by a small CNN, and a model that gets the
clinical features wrong (a neutrophil with a round nucleus, a lymphocyte with granules) makes
visibly implausible images. Neutrophils carry a hidden subtype (``BAND``: one curved unsegmented
nucleus; ``SEG``: 3-5 lobes) in the file name, for experiments with concepts a class hides.

Rendering: signed-distance shapes on a grid at twice the output size (soft edges, so it is
antialiased), composited over a pale smear with a few red cells, then box-downsampled. Every
random draw that shapes the cell comes before any draw whose size depends on the output size, so
one seed gives the same cell at 32 px and at 128 px.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ..errors import DataError
from .classmap import ClassMap
from .transforms import save_png

logger = logging.getLogger(__name__)

#: Class order: ``classes=k`` takes the first k, chosen so that any prefix is maximally distinct.
CLASS_NAMES: tuple[str, ...] = (
    "neutrophil",
    "lymphocyte",
    "eosinophil",
    "monocyte",
    "basophil",
    "platelet",
    "erythroblast",
    "ig",
)
#: Hidden subtypes (second file-name token). Only neutrophils have more than one.
SUBTYPES: dict[str, tuple[str, ...]] = {name: ("STD",) for name in CLASS_NAMES} | {"neutrophil": ("BAND", "SEG")}

Color = tuple[float, float, float]
_SUPERSAMPLE = 2


# ---------------------------------------------------------------------------------------------
# Canvas: a grid in normalised coordinates (the image spans [-1, 1]) and shape primitives on it.


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0
    return np.meshgrid(u, u)  # X grows to the right, Y downwards


@dataclass
class _Canvas:
    n: int  # grid side (output size x supersampling)
    rng: np.random.Generator

    def __post_init__(self) -> None:
        self.X, self.Y = _grid(self.n)
        self.px = 2.0 / self.n

    def local(self, cx: float, cy: float, angle: float, sx: float = 1.0, sy: float = 1.0):
        """Coordinates in a frame centred at (cx, cy), rotated by ``angle``, stretched by (sx, sy)."""
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = self.X - cx, self.Y - cy
        return (c * dx + s * dy) / sx, (-s * dx + c * dy) / sy

    def coverage(self, d: np.ndarray, soft: float = 0.012) -> np.ndarray:
        """Signed distance -> alpha, with an edge at least one grid pixel wide (antialiasing)."""
        width = max(self.px, soft)
        return np.clip(0.5 - d / width, 0.0, 1.0)

    def noise(self, cells: int) -> np.ndarray:
        """Smooth noise in [0, 1]: ``cells`` x ``cells`` random values, bicubic-upsampled.

        Drawn at a fixed resolution so the pattern does not depend on the output size.
        """
        coarse = self.rng.random((cells, cells), dtype=np.float32)
        img = Image.fromarray(coarse, mode="F").resize((self.n, self.n), Image.BICUBIC)
        return np.clip(np.asarray(img), 0.0, 1.0)

    def dots(self, xs: np.ndarray, ys: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian dots of radius ~``sigma`` at (xs, ys); peak ~1 each (granules, chromatin)."""
        field = np.zeros((self.n, self.n), dtype=np.float32)
        cols = np.floor((xs + 1.0) / self.px).astype(int)
        rows = np.floor((ys + 1.0) / self.px).astype(int)
        inside = (cols >= 0) & (cols < self.n) & (rows >= 0) & (rows < self.n)
        np.add.at(field, (rows[inside], cols[inside]), 1.0)
        s = max(sigma / self.px, 0.5)
        return gaussian_filter(field, s, mode="constant", truncate=3.0) * (2 * math.pi * s * s)


def _circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


def _ellipse(x, y, cx, cy, a, b):
    # Not an exact distance, but exact on the boundary and monotone: enough for soft edges.
    return (np.hypot((x - cx) / a, (y - cy) / b) - 1.0) * min(a, b)


def _arc(x, y, cx, cy, radius, mid, half, thick):
    """A circular arc of ``radius`` around (cx, cy), angles mid +- half, as a tube (capsule ends)."""
    ang = np.arctan2(y - cy, x - cx) - mid
    ang = (ang + math.pi) % (2 * math.pi) - math.pi
    ang = np.clip(ang, -half, half) + mid
    return np.hypot(x - cx - radius * np.cos(ang), y - cy - radius * np.sin(ang)) - thick


def _smin(a, b, k):
    """Smooth union: shapes merge with a fillet of size ~k (lobes joined by a neck, not a seam)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _points_in_disc(rng, n, radius):
    r = radius * np.sqrt(rng.random(n))  # sqrt: uniform over the area, not crowded at the centre
    t = rng.random(n) * 2 * math.pi
    return r * np.cos(t), r * np.sin(t)


def _jitter(rng, color: Color, amount: float = 0.03) -> np.ndarray:
    return np.clip(np.asarray(color, dtype=np.float32) + rng.normal(0, amount, 3).astype(np.float32), 0, 1)


def _paint(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """Alpha-composite ``color`` (RGB or an HxWx3 field) over ``img`` in place."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * color


# ---------------------------------------------------------------------------------------------
# Cell anatomy


@dataclass
class _Cell:
    """What a class drawer returns: cell body, nucleus and granule layers as alphas + colours."""

    body: np.ndarray | None
    cytoplasm: np.ndarray | Color | None
    nucleus: np.ndarray | None = None
    nucleus_color: np.ndarray | Color | None = None
    granules: list[tuple[np.ndarray, Color, bool]] | None = None  # (alpha, colour, drawn over nucleus)
    rim: float = 0.08  # how much darker the membrane edge is


def _lumpy(cv: _Canvas, d: np.ndarray, amount: float, cells: int = 10) -> np.ndarray:
    return d + amount * (cv.noise(cells) - 0.5)


def _chromatin(cv: _Canvas, color: Color, contrast: float, cells: int = 14) -> np.ndarray:
    """Nucleus colour with clumped chromatin: darker and lighter patches."""
    tex = cv.noise(cells)
    base = np.asarray(color, dtype=np.float32)
    return base[None, None, :] * (1.0 + contrast * (0.5 - tex))[..., None]


def _granules(cv: _Canvas, frame, n: int, radius: float, sigma: float, strength: float, region=None):
    """``n`` granules scattered over a disc of ``radius`` in the cell's frame, as an alpha field."""
    lx, ly = _points_in_disc(cv.rng, n, radius)
    cx, cy, angle, sx, sy = frame
    c, s = math.cos(angle), math.sin(angle)
    lx, ly = lx * sx, ly * sy
    alpha = np.clip(cv.dots(cx + c * lx - s * ly, cy + s * lx + c * ly, sigma) * strength, 0.0, 1.0)
    return alpha if region is None else alpha * region


def _body(cv: _Canvas, radius: float, wobble: float = 0.03, stretch: float = 0.06):
    """Cell outline: a slightly elliptical disc with a low-harmonic wobbly membrane.

    Returns local coordinates, the signed distance, and the frame (centre, angle, stretch) so
    granules can be scattered in cell coordinates.
    """
    rng = cv.rng
    angle = rng.uniform(0, 2 * math.pi)
    e = rng.uniform(0, stretch)
    cx, cy = rng.normal(0, 0.05, 2).clip(-0.12, 0.12)
    amps = rng.normal(0, wobble, 3)
    phases = rng.uniform(0, 2 * math.pi, 3)
    frame = (float(cx), float(cy), angle, 1 + e, 1 - e)
    x, y = cv.local(*frame)
    phi = np.arctan2(y, x)
    r = radius * (1.0 + sum(a * np.cos((k + 2) * phi + p) for k, (a, p) in enumerate(zip(amps, phases))))
    return x, y, np.hypot(x, y) - r, frame


def _draw_neutrophil(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    R = 0.47 * rng.uniform(0.92, 1.08)
    x, y, d, frame = _body(cv, R)
    body = cv.coverage(d)
    # The nucleus follows a C-shaped arc, shifted toward the arc's open side to stay centred.
    arc_r = R * rng.uniform(0.45, 0.55)
    mid = rng.uniform(0, 2 * math.pi)
    ox, oy = -0.3 * arc_r * math.cos(mid), -0.3 * arc_r * math.sin(mid)
    if subtype == "BAND":
        half = rng.uniform(0.55, 0.8) * math.pi
        dn = _arc(x, y, ox, oy, arc_r, mid, half, R * rng.uniform(0.16, 0.2))
    else:
        lobes = int(rng.integers(3, 6))
        lobe_r = R * rng.uniform(0.23, 0.28) * (1.0 if lobes < 5 else 0.9)
        # Neighbouring lobes nearly touch; what separates them is a thin chromatin strand.
        half = min(lobe_r * rng.uniform(2.1, 2.4) * (lobes - 1) / (2 * arc_r), 0.9 * math.pi)
        dn = _arc(x, y, ox, oy, arc_r, mid, half, R * 0.035)
        for t in np.linspace(-half, half, lobes) + rng.normal(0, 0.06, lobes):
            lx, ly = ox + arc_r * math.cos(mid + t), oy + arc_r * math.sin(mid + t)
            dn = _smin(dn, _circle(x, y, lx, ly, lobe_r * rng.uniform(0.9, 1.1)), R * 0.04)
    nucleus = cv.coverage(_lumpy(cv, dn, 0.02)) * body
    fine = _granules(cv, frame, 140, R * 0.92, 0.016, 0.35, region=body)
    return _Cell(
        body,
        _jitter(rng, (0.92, 0.82, 0.84), 0.02),
        nucleus,
        _chromatin(cv, _jitter(rng, (0.36, 0.19, 0.50), 0.02), 0.35),
        [(fine, (0.70, 0.52, 0.76), False)],
    )


def _draw_lymphocyte(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    R = 0.30 * rng.uniform(0.9, 1.1)
    x, y, d, _ = _body(cv, R, wobble=0.02)
    body = cv.coverage(d)
    nr = R * rng.uniform(0.80, 0.88)
    off = R - nr - 0.01  # eccentric: the blue rim is a crescent, thicker on one side
    dn = _ellipse(x, y, off * rng.uniform(0.3, 1.0), 0.0, nr, nr * rng.uniform(0.9, 1.0))
    nucleus = cv.coverage(_lumpy(cv, dn, 0.015)) * body
    return _Cell(
        body,
        _jitter(rng, (0.68, 0.77, 0.93)),
        nucleus,
        _chromatin(cv, _jitter(rng, (0.27, 0.15, 0.42), 0.02), 0.45, cells=16),
        rim=0.05,
    )


def _draw_eosinophil(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    R = 0.47 * rng.uniform(0.92, 1.08)
    x, y, d, frame = _body(cv, R)
    body = cv.coverage(d)
    lr = R * rng.uniform(0.28, 0.33)
    sep = R * rng.uniform(0.30, 0.38)
    bend = R * rng.uniform(0.0, 0.15)
    dn = _smin(_circle(x, y, -sep, bend, lr), _circle(x, y, sep, bend, lr * rng.uniform(0.85, 1.0)), R * 0.06)
    nucleus = cv.coverage(_lumpy(cv, dn, 0.02)) * body
    coarse = _granules(cv, frame, 110, R * 0.93, 0.03, 0.9, region=body)
    return _Cell(
        body,
        _jitter(rng, (0.93, 0.70, 0.60)),
        nucleus,
        _chromatin(cv, _jitter(rng, (0.40, 0.24, 0.52)), 0.3),
        [(coarse, tuple(_jitter(rng, (0.90, 0.42, 0.28), 0.03)), False)],
    )


def _draw_monocyte(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    R = 0.58 * rng.uniform(0.92, 1.08)
    x, y, d, frame = _body(cv, R, wobble=0.05, stretch=0.1)
    body = cv.coverage(d)
    a, b = R * rng.uniform(0.55, 0.65), R * rng.uniform(0.42, 0.5)
    cx = -R * 0.12
    kidney = _ellipse(x, y, cx, 0.0, a, b)
    notch = _circle(x, y, cx + a * rng.uniform(0.85, 1.05), rng.normal(0, 0.03), b * rng.uniform(0.6, 0.8))
    dn = np.maximum(kidney, -notch)
    nucleus = cv.coverage(_lumpy(cv, dn, 0.03, cells=8)) * body
    cyto = _chromatin(cv, _jitter(rng, (0.72, 0.72, 0.84)), 0.08, cells=12)
    vac = np.zeros_like(body)
    for _ in range(int(rng.integers(0, 5))):
        vx, vy = _points_in_disc(rng, 1, R * 0.8)
        vac = np.maximum(vac, cv.coverage(_circle(x, y, vx[0], vy[0], R * rng.uniform(0.05, 0.09)), 0.01))
    vac *= body * (1 - nucleus)
    return _Cell(
        body,
        cyto,
        nucleus,
        _chromatin(cv, _jitter(rng, (0.55, 0.40, 0.68)), 0.4, cells=20),
        [(vac * 0.8, (0.95, 0.93, 0.96), False)],
    )


def _draw_basophil(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    R = 0.40 * rng.uniform(0.92, 1.08)
    x, y, d, frame = _body(cv, R)
    body = cv.coverage(d)
    dn = _lumpy(cv, _ellipse(x, y, 0.0, 0.0, R * 0.62, R * 0.5), 0.08, cells=6)
    nucleus = cv.coverage(dn) * body
    dark = _granules(cv, frame, 90, R * 0.95, 0.032, 1.0, region=body)
    return _Cell(
        body,
        _jitter(rng, (0.80, 0.70, 0.86)),
        nucleus,
        _chromatin(cv, _jitter(rng, (0.36, 0.20, 0.50)), 0.2),
        [(dark, tuple(_jitter(rng, (0.20, 0.08, 0.32), 0.02)), True)],
    )


def _draw_platelet(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    body = np.zeros((cv.n, cv.n), dtype=np.float32)
    centre = np.zeros_like(body)
    for k in range(1 + int(rng.random() < 0.35) + int(rng.random() < 0.15)):
        R = 0.11 * rng.uniform(0.8, 1.3)
        x, y, d, frame = _body(cv, R, wobble=0.12, stretch=0.2)
        if k:  # satellites of a small clump sit next to the first fragment
            t = rng.uniform(0, 2 * math.pi)
            x, y = x - 2.2 * R * math.cos(t), y - 2.2 * R * math.sin(t)
            d = np.hypot(x, y) - R
        part = cv.coverage(_lumpy(cv, d, 0.04, cells=12))
        body = np.maximum(body, part)
        centre = np.maximum(centre, _granules(cv, frame, 12, R * 0.6, 0.018, 0.8) * part)
    return _Cell(
        body,
        _jitter(rng, (0.74, 0.62, 0.84)),
        None,
        None,
        [(centre, tuple(_jitter(rng, (0.40, 0.22, 0.55), 0.02)), False)],
        rim=0.0,
    )


def _draw_erythroblast(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    R = 0.27 * rng.uniform(0.9, 1.1)
    x, y, d, _ = _body(cv, R, wobble=0.015)
    body = cv.coverage(d)
    nr = R * rng.uniform(0.55, 0.66)
    dn = _circle(x, y, rng.normal(0, R * 0.08), rng.normal(0, R * 0.08), nr)
    nucleus = cv.coverage(_lumpy(cv, dn, 0.01), 0.006) * body
    return _Cell(
        body,
        _jitter(rng, (0.70, 0.66, 0.80)),
        nucleus,
        _chromatin(cv, _jitter(rng, (0.17, 0.09, 0.24), 0.015), 0.25),
        rim=0.05,
    )


def _draw_ig(cv: _Canvas, subtype: str) -> _Cell:
    rng = cv.rng
    R = 0.55 * rng.uniform(0.92, 1.08)
    x, y, d, frame = _body(cv, R, stretch=0.1)
    body = cv.coverage(d)
    a = R * rng.uniform(0.58, 0.68)
    dn = _ellipse(x, y, R * rng.uniform(0.05, 0.2), 0.0, a, a * rng.uniform(0.78, 0.95))
    nucleus = cv.coverage(_lumpy(cv, dn, 0.025)) * body
    sparse = _granules(cv, frame, 25, R * 0.9, 0.02, 0.5, region=body)
    return _Cell(
        body,
        _jitter(rng, (0.60, 0.68, 0.90)),
        nucleus,
        _chromatin(cv, _jitter(rng, (0.47, 0.32, 0.64)), 0.25, cells=22),
        [(sparse, (0.78, 0.55, 0.75), False)],
    )


_DRAWERS: dict[str, Callable[[_Canvas, str], _Cell]] = {
    "neutrophil": _draw_neutrophil,
    "lymphocyte": _draw_lymphocyte,
    "eosinophil": _draw_eosinophil,
    "monocyte": _draw_monocyte,
    "basophil": _draw_basophil,
    "platelet": _draw_platelet,
    "erythroblast": _draw_erythroblast,
    "ig": _draw_ig,
}


# ---------------------------------------------------------------------------------------------
# Smear background and final image


def _smear(cv: _Canvas) -> np.ndarray:
    """Pale pink slide with a few faint red cells (pale discs with central pallor), some cut off."""
    rng = cv.rng
    bg = _jitter(rng, (0.96, 0.87, 0.80), 0.008)
    img = np.broadcast_to(bg, (cv.n, cv.n, 3)) * (1.0 + 0.03 * (cv.noise(4) - 0.5))[..., None]
    img = np.ascontiguousarray(img, dtype=np.float32)
    rbc = _jitter(rng, (0.88, 0.66, 0.64), 0.02)
    for _ in range(int(rng.integers(3, 8))):
        ang = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(0.55, 1.25)  # mostly around the white cell, which is drawn on top
        r = rng.uniform(0.27, 0.34)
        x, y = cv.local(
            dist * math.cos(ang), dist * math.sin(ang), rng.uniform(0, math.pi), 1.0, rng.uniform(0.85, 1.0)
        )
        rho = np.hypot(x, y)
        disc = cv.coverage(rho - r, 0.02)
        pallor = np.exp(-((rho / (0.45 * r)) ** 2))  # the thin centre of a biconcave disc
        _paint(img, disc * rng.uniform(0.5, 0.7) * (1.0 - 0.5 * pallor), rbc)
    return img


def _compose(cv: _Canvas, cell: _Cell) -> np.ndarray:
    img = _smear(cv)
    if cell.body is not None:
        _paint(img, cell.body, cell.cytoplasm)
        if cell.rim:
            edge = cell.body * (1.0 - cell.body)  # peaks on the membrane
            img *= (1.0 - 4.0 * cell.rim * edge)[..., None]
    layers = cell.granules or []
    for alpha, color, over_nucleus in layers:
        if not over_nucleus:
            region = alpha if cell.nucleus is None else alpha * (1.0 - cell.nucleus)
            _paint(img, region, np.asarray(color, dtype=np.float32))
    if cell.nucleus is not None:
        _paint(img, cell.nucleus * 0.95, cell.nucleus_color)
    for alpha, color, over_nucleus in layers:
        if over_nucleus:
            _paint(img, alpha, np.asarray(color, dtype=np.float32))
    return img


def _finish(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """Stain variation, optics blur, downsample, sensor noise."""
    stain = 1.0 + rng.normal(0, 0.015, 3).astype(np.float32)
    blur = rng.uniform(0.3, 0.8) * _SUPERSAMPLE
    img = gaussian_filter(img * stain, (blur, blur, 0), mode="nearest")
    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    img = img + rng.normal(0, 0.012, img.shape).astype(np.float32)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _check_class(class_name: str) -> None:
    if class_name not in _DRAWERS:
        raise DataError(f"unknown toy class {class_name!r}; toy classes are {', '.join(CLASS_NAMES)}")


def render_cell(
    class_name: str, rng: np.random.Generator, size: int = 32, subtype: str | None = None
) -> tuple[np.ndarray, str]:
    """One toy cell image, uint8 ``(size, size, 3)``, and its subtype."""
    _check_class(class_name)
    if not 8 <= size <= 512:
        raise ValueError(f"size must be in [8, 512], got {size}")
    options = SUBTYPES[class_name]
    if subtype is None:
        subtype = options[int(rng.integers(len(options)))]
    elif subtype not in options:
        raise DataError(f"{class_name} has subtypes {', '.join(options)}, not {subtype!r}")
    cv = _Canvas(size * _SUPERSAMPLE, rng)
    img = _compose(cv, _DRAWERS[class_name](cv, subtype))
    return _finish(rng, img, size), subtype


# ---------------------------------------------------------------------------------------------
# Datasets


def _class_names(classes: int) -> list[str]:
    if not 1 <= classes <= len(CLASS_NAMES):
        raise DataError(f"--classes must be between 1 and {len(CLASS_NAMES)}, got {classes}")
    return sorted(CLASS_NAMES[:classes])


def toy_class_map(classes: int = 4) -> ClassMap:
    """The class map a folder written by :func:`generate` yields (sorted names)."""
    return ClassMap(_class_names(classes))


def _cell_rng(seed: int, class_name: str, i: int) -> np.random.Generator:
    # Keyed by the class's fixed position, not by how many classes were asked for, so
    # --classes 8 contains exactly the images of --classes 4 (and --per_class grows likewise).
    return np.random.default_rng([seed, CLASS_NAMES.index(class_name), i])


def _cells(classes: int, per_class: int, size: int, seed: int):
    if per_class < 1:
        raise DataError(f"--per_class must be at least 1, got {per_class}")
    if seed < 0:
        raise DataError(f"--seed must be non-negative, got {seed}")
    for label, name in enumerate(_class_names(classes)):
        for i in range(per_class):
            img, subtype = render_cell(name, _cell_rng(seed, name, i), size)
            yield label, name, i, img, subtype


def toy_arrays(
    classes: int = 4, per_class: int = 100, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """In-memory toy dataset: uint8 ``(N, size, size, 3)``, labels, subtypes.

    Labels index :func:`toy_class_map` (sorted names), the same indices an
    :class:`~clinalign.data.folder.ImageFolderDataset` of :func:`generate`'s output gets.
    """
    images = np.empty((classes * per_class, size, size, 3), dtype=np.uint8)
    labels = np.empty(classes * per_class, dtype=np.int64)
    subtypes: list[str] = []
    for k, (label, _, _, img, subtype) in enumerate(_cells(classes, per_class, size, seed)):
        images[k], labels[k] = img, label
        subtypes.append(subtype)
    return images, labels, subtypes


def toy_file_name(class_name: str, subtype: str, index: int, suffix: str = "") -> str:
    """``CLASS_SUBTYPE_000012.png``; ``suffix`` keeps sets drawn with different seeds apart (IDs are file names)."""
    return f"{class_name}_{subtype}_{index:06d}{suffix}.png"


def generate(
    out_dir: str | Path,
    classes: int = 4,
    per_class: int = 100,
    size: int = 32,
    seed: int = 0,
    layout: str = "prefix",
    progress: Callable[[int, int], None] | None = None,
    suffix: str = "",
) -> list[Path]:
    """Write a toy image folder; returns the paths written.

    ``layout="prefix"``: ``OUT/CLASS_SUBTYPE_000012.png``; ``"imagenet"``: the same files under
    ``OUT/CLASS/``. Both read back with the class as the file-name prefix. ``progress(done, total)``
    is called after each image (the CLI hangs a progress bar on it).
    """
    if layout not in ("prefix", "imagenet"):
        raise DataError(f"--layout must be 'prefix' or 'imagenet', got {layout!r}")
    out = Path(out_dir)
    written: list[Path] = []
    for _, name, i, img, subtype in _cells(classes, per_class, size, seed):
        folder = out / name if layout == "imagenet" else out
        written.append(save_png(img, folder / toy_file_name(name, subtype, i, suffix)))
        if progress is not None:
            progress(len(written), classes * per_class)
    logger.info("wrote %d toy cells (%d classes, %dpx, seed %d) to %s", len(written), classes, size, seed, out)
    return written


def write_mislabelled(
    out_dir: str | Path, classes: int, per_class: int, size: int = 32, seed: int = 0, suffix: str = "_x"
) -> list[Path]:
    """``per_class`` cells under each class's name, each drawn from the other classes in turn.

    Label noise, as clinical sets carry it: the file says eosinophil, a haematologist sees a
    lymphocyte. A generator trained on it learns to draw the wrong cell for the class; an expert
    who has seen clean cells rejects what it draws. The cell's true class is kept in the subtype
    token (``eosinophil_LYMPHOCYTE_000003_x.png``) so an experiment can count them.
    """
    names = _class_names(classes)
    if len(names) < 2:
        raise DataError("label noise needs at least 2 classes")
    out = Path(out_dir)
    written = []
    for c, name in enumerate(names):
        others = [n for n in names if n != name]
        for i in range(per_class):
            true = others[(c + i) % len(others)]
            img, _ = render_cell(true, _cell_rng(seed, true, c * per_class + i), size)
            written.append(save_png(img, out / toy_file_name(name, true.upper(), i, suffix)))
    return written


def subtype_of(path: str | Path) -> str:
    """The hidden subtype a toy (or PBC-style) file name carries: its second ``_`` token."""
    parts = Path(path).stem.split("_")
    if len(parts) < 3:
        raise DataError(f"{path}: name has no subtype token; expected CLASS_SUBTYPE_INDEX.png")
    return parts[1]
