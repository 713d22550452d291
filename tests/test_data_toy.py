"""Toy blood cells: determinism, clinically meaningful class differences, file naming, CLI."""

from __future__ import annotations

import argparse
import re
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from clinalign.data import ImageFolderDataset, label_of
from clinalign.data import cli as data_cli
from clinalign.data.toy import CLASS_NAMES, SUBTYPES, generate, render_cell, subtype_of, toy_arrays, toy_class_map
from clinalign.errors import DataError


@pytest.fixture(scope="module")
def cells8() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return toy_arrays(8, 30, 32, seed=1)


@pytest.fixture(scope="module")
def cells8_heldout() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return toy_arrays(8, 30, 32, seed=2)


def features(images: np.ndarray) -> np.ndarray:
    """What a haematologist looks at, crudely, in the central disc where the cell sits.

    Columns: fraction of blue/purple pixels (nucleus + basophilic cytoplasm), 5th-percentile
    luminance (how dark the nucleus is), fraction of orange-red pixels (eosinophil granules),
    mean R, G, B.
    """
    x = images.astype(np.float32) / 255.0
    side = x.shape[1]
    u = (np.arange(side) + 0.5) / side * 2 - 1
    centre = (u[None, :] ** 2 + u[:, None] ** 2) < 0.6**2
    c = x[:, centre]
    lum = c.mean(-1)
    blue = (c[..., 2] > c[..., 0] + 0.02).mean(1)
    orange = (c[..., 0] - c[..., 2] > 0.35).mean(1)
    return np.column_stack([blue, np.percentile(lum, 5, axis=1), orange, c.mean(1)])


def per_class(images, labels, names) -> dict[str, np.ndarray]:
    f = features(images)
    return {name: f[labels == k].mean(0) for k, name in enumerate(names)}


# --------------------------------------------------------------------------------------------
# Determinism and API


def test_render_is_deterministic_by_seed():
    a, sa = render_cell("neutrophil", np.random.default_rng(7), 32)
    b, sb = render_cell("neutrophil", np.random.default_rng(7), 32)
    c, _ = render_cell("neutrophil", np.random.default_rng(8), 32)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)


def test_toy_arrays_deterministic_and_prefix_stable():
    a = toy_arrays(2, 5, 16, seed=3)
    b = toy_arrays(2, 5, 16, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], toy_arrays(2, 5, 16, seed=4)[0])
    # More classes or more images per class only add images; existing ones do not change.
    bigger, labels, _ = toy_arrays(4, 6, 16, seed=3)
    names2, names4 = toy_class_map(2).names, toy_class_map(4).names
    for k, name in enumerate(names2):
        j = names4.index(name)
        assert np.array_equal(a[0][a[1] == k], bigger[labels == j][:5])


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_renders_at_any_size(size):
    for name in CLASS_NAMES:
        img, subtype = render_cell(name, np.random.default_rng(0), size)
        assert img.shape == (size, size, 3) and subtype in SUBTYPES[name]


def test_class_order_and_subtypes():
    assert CLASS_NAMES[:4] == ("neutrophil", "lymphocyte", "eosinophil", "monocyte")
    assert set(CLASS_NAMES) == {
        "neutrophil",
        "lymphocyte",
        "eosinophil",
        "monocyte",
        "basophil",
        "platelet",
        "erythroblast",
        "ig",
    }
    assert all("_" not in name for name in CLASS_NAMES)
    img, st = render_cell("neutrophil", np.random.default_rng(0), 32, subtype="BAND")
    assert st == "BAND"
    with pytest.raises(DataError, match="BAND, SEG"):
        render_cell("neutrophil", np.random.default_rng(0), 32, subtype="XYZ")
    with pytest.raises(DataError, match="unknown toy class 'blast'"):
        render_cell("blast", np.random.default_rng(0), 32)
    with pytest.raises(DataError, match="--classes"):
        toy_arrays(9, 1, 16)


def test_labels_follow_the_sorted_class_map():
    images, labels, subtypes = toy_arrays(4, 3, 16, seed=0)
    cm = toy_class_map(4)
    assert cm.names == sorted(CLASS_NAMES[:4])
    assert images.shape == (12, 16, 16, 3) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert all(s == "STD" for s, y in zip(subtypes, labels) if cm.names[y] != "neutrophil")


# --------------------------------------------------------------------------------------------
# The classes differ the way blood cells do


def test_first_four_classes_differ_clinically(cells8):
    images, labels, _ = cells8
    f = per_class(images, labels, toy_class_map(8).names)
    blue, dark, orange = 0, 1, 2
    # Eosinophil: coarse orange-red granules; nobody else has them.
    assert f["eosinophil"][orange] > 0.25
    assert all(f[n][orange] < 0.05 for n in CLASS_NAMES if n != "eosinophil")
    # Lymphocyte: dense dark nucleus, darker than a neutrophil's lobes.
    assert f["lymphocyte"][dark] < f["neutrophil"][dark] - 0.05
    # Monocyte: large grey-blue cell: most blue pixels of the four.
    assert f["monocyte"][blue] > 0.5 > max(f[n][blue] for n in ("neutrophil", "lymphocyte", "eosinophil"))
    # Platelet: no nucleus at all; basophil: darkest of all (granules over the nucleus).
    assert f["platelet"][dark] > 0.65 > max(f[n][dark] for n in CLASS_NAMES if n != "platelet")
    assert f["basophil"][dark] == min(v[dark] for v in f.values())
    # ig: blue cytoplasm, more blue than the neutrophil it matures into.
    assert f["ig"][blue] > f["neutrophil"][blue] + 0.4


@pytest.mark.parametrize("classes, minimum", [(4, 0.95), (8, 0.85)])
def test_classes_are_separable_on_simple_features(cells8, cells8_heldout, classes, minimum):
    """A nearest-centroid rule on 6 crude features, fitted on one seed, scored on another."""
    (a, ya, _), (b, yb, _) = cells8, cells8_heldout
    names8, names = toy_class_map(8).names, toy_class_map(classes).names
    keep = [names8.index(n) for n in names]
    ma, mb = np.isin(ya, keep), np.isin(yb, keep)
    fa, fb = features(a[ma]), features(b[mb])
    mu, sd = fa.mean(0), fa.std(0) + 1e-6
    centroids = np.stack([((fa[ya[ma] == k] - mu) / sd).mean(0) for k in keep])
    pred = np.asarray(keep)[np.argmin(((((fb - mu) / sd)[:, None] - centroids[None]) ** 2).sum(-1), 1)]
    assert (pred == yb[mb]).mean() >= minimum


def _nucleus_parts(img: np.ndarray) -> int:
    dark = img.astype(np.float32).mean(-1) / 255.0 < 0.5
    parts, n = ndimage.label(ndimage.binary_erosion(dark, iterations=3))
    return int((np.bincount(parts.ravel())[1:] > 15).sum())


def test_neutrophil_subtypes_band_vs_segmented():
    """BAND: one unsegmented nucleus; SEG: lobes joined by strands thin enough to erode away."""
    band = [_nucleus_parts(render_cell("neutrophil", np.random.default_rng([5, i]), 128, "BAND")[0]) for i in range(12)]
    seg = [_nucleus_parts(render_cell("neutrophil", np.random.default_rng([5, i]), 128, "SEG")[0]) for i in range(12)]
    assert all(n == 1 for n in band)
    assert sum(n >= 2 for n in seg) >= 10


def test_about_half_of_neutrophils_are_bands():
    _, _, subtypes = toy_arrays(1, 200, 16, seed=0)  # class 0 of 1 is neutrophil
    share = Counter(subtypes)["BAND"] / 200
    assert 0.35 < share < 0.65


# --------------------------------------------------------------------------------------------
# Files


def test_generate_prefix_layout(tmp_path):
    paths = generate(tmp_path, classes=3, per_class=4, size=24, seed=5)
    assert len(paths) == 12 and sorted(paths) == sorted(tmp_path.glob("*.png"))
    pattern = re.compile(r"^(neutrophil|lymphocyte|eosinophil)_(BAND|SEG|STD)_\d{6}\.png$")
    assert all(pattern.match(p.name) for p in paths)
    assert Counter(label_of(p) for p in paths) == {"neutrophil": 4, "lymphocyte": 4, "eosinophil": 4}
    for p in paths:
        assert subtype_of(p) == p.name.split("_")[1]
        assert (label_of(p) == "neutrophil") == (subtype_of(p) in ("BAND", "SEG"))
    assert {p.name.split("_")[2] for p in paths} == {f"{i:06d}.png" for i in range(4)}
    assert not list(tmp_path.glob(".*"))  # no temp files left behind

    # Reading the folder back gives the toy class map and exactly the in-memory pixels.
    ds = ImageFolderDataset(tmp_path, 24)
    assert ds.class_map == toy_class_map(3) and ds.channels == 3
    images, labels, _ = toy_arrays(3, 4, 24, seed=5)
    for k in range(12):
        matches = [i for i, y in enumerate(ds.labels) if y == labels[k] and np.array_equal(ds.images[i], images[k])]
        assert len(matches) == 1


def test_generate_imagenet_layout(tmp_path):
    paths = generate(tmp_path, classes=2, per_class=2, size=16, seed=0, layout="imagenet")
    assert {p.parent.name for p in paths} == {"neutrophil", "lymphocyte"}
    assert all(label_of(p) == p.parent.name for p in paths)
    with pytest.raises(DataError, match="--layout"):
        generate(tmp_path, layout="coco")


def test_subtype_of_rejects_names_without_subtype():
    assert subtype_of("neutrophil_BNE_123.jpg") == "BNE"  # a real PBC name
    with pytest.raises(DataError, match="no subtype"):
        subtype_of("neutrophil_123.png")


def test_cli_toy_and_inspect(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    out = tmp_path / "toy"
    args = parser.parse_args(
        ["data", "toy", "--classes", "2", "--per_class", "3", "--size", "16", "--out", str(out), "--seed", "1"]
    )
    assert args.func(args) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 6

    (out / "lymphocyte_STD_999999.png").write_text("broken")
    args = parser.parse_args(["data", "inspect", str(out), "--image_size", "16"])
    assert args.func(args) == 1  # a bad file makes inspect fail, so scripts can check a folder
    printed = capsys.readouterr().out
    assert re.search(r"lymphocyte\s+3", printed) and re.search(r"neutrophil\s+3", printed)
    assert "3 channel(s)" in printed and "lymphocyte_STD_999999.png" in printed
