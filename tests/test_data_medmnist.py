"""MedMNIST npz export and verified download (no network: file:// URLs)."""

from __future__ import annotations

import argparse
import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinalign.data import ImageFolderDataset, label_of, list_images, medmnist
from clinalign.data import cli as data_cli
from clinalign.errors import DataError

REAL_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "bloodmnist_like_28.npz"
BLOOD = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def mode_of(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def make_npz(path: Path, n=(20, 5, 6), channels=3, classes=8, seed=0) -> dict[str, np.ndarray]:
    """A small file in BloodMNIST's layout: {split}_images (N,28,28[,3]) uint8, {split}_labels (N,1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(medmnist.SPLITS, n):
        shape = (count, 28, 28, 3) if channels == 3 else (count, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).astype(np.uint8)[:, None]
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.fixture
def blood_npz(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "bloodmnist.npz"
    return path, make_npz(path)


def test_export_prefix_layout(blood_npz, tmp_path):
    path, arrays = blood_npz
    out = tmp_path / "out"
    assert medmnist.export_npz(path, "train", out) == 20
    files = sorted(out.iterdir())
    assert len(files) == 20 and all(re.fullmatch(r"[a-z]+_\d{6}\.png", f.name) for f in files)
    for i, (img, label) in enumerate(zip(arrays["train_images"], arrays["train_labels"][:, 0])):
        f = out / f"{BLOOD[label]}_{i:06d}.png"
        assert np.array_equal(pixels_of(f), img)  # lossless, index = position in split
    ds = ImageFolderDataset(out, 28)
    assert ds.class_map.names == BLOOD  # sorted names == BloodMNIST's index order


def test_export_imagenet_layout_and_other_split(blood_npz, tmp_path):
    path, arrays = blood_npz
    out = tmp_path / "out"
    assert medmnist.export_npz(path, "test", out, layout="imagenet") == 6
    files = list_images(out)
    assert all(f.parent.name == label_of(f) for f in files)
    assert Counter(label_of(f) for f in files) == Counter(BLOOD[y] for y in arrays["test_labels"][:, 0])
    assert (out / "basophil" / "basophil_000000.png").exists()


def test_grayscale_set_stays_single_channel(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    make_npz(path, n=(6, 2, 2), channels=1, classes=2)
    out = tmp_path / "out"
    assert medmnist.export_npz(path, "train", out, flag="pneumoniamnist") == 6
    assert {mode_of(f) for f in out.iterdir()} == {"L"}
    assert {label_of(f) for f in out.iterdir()} == {"normal", "pneumonia"}
    assert ImageFolderDataset(out, 28).channels == 1


def test_class_names_are_short_and_safe():
    assert medmnist.class_names("bloodmnist") == BLOOD
    for flag in medmnist.INFO:
        if flag == "chestmnist":
            continue
        names = medmnist.class_names(flag)
        assert all("_" not in n and " " not in n and len(n) <= 24 for n in names), flag
        assert len(set(names)) == len(names), flag
    assert medmnist.class_names("dermamnist") == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.mark.parametrize(
    "flag, pattern",
    [("chestmnist", "multi-label"), ("organmnist3d", "3D"), ("mnist", "unknown MedMNIST set")],
)
def test_unsupported_sets_are_refused_clearly(tmp_path, flag, pattern):
    path = tmp_path / "x.npz"
    make_npz(path)
    with pytest.raises(DataError, match=pattern):
        medmnist.export_npz(path, "train", tmp_path / "out", flag=flag)


def test_mismatched_files_are_refused(tmp_path):
    out = tmp_path / "out"
    gray = tmp_path / "data.npz"
    make_npz(gray, channels=1, classes=2)
    with pytest.raises(DataError, match=r"1 channel\(s\) but bloodmnist has 3.*--flag"):
        medmnist.export_npz(gray, "train", out)
    many = tmp_path / "many.npz"
    make_npz(many, classes=12)
    with pytest.raises(DataError, match=r"labels range 0..11 but bloodmnist has 8"):
        medmnist.export_npz(many, "train", out)
    named = tmp_path / "pathmnist.npz"
    make_npz(named)
    with pytest.raises(DataError, match="file name says pathmnist but --flag is bloodmnist"):
        medmnist.export_npz(named, "train", out)
    multi = tmp_path / "multi.npz"
    np.savez(multi, train_images=np.zeros((2, 28, 28, 3), np.uint8), train_labels=np.zeros((2, 3), np.uint8))
    with pytest.raises(DataError, match="multi-label"):
        medmnist.export_npz(multi, "train", out)
    assert not out.exists()  # nothing half-written


def test_bad_npz_files(tmp_path, blood_npz):
    path, _ = blood_npz
    with pytest.raises(DataError, match="--split must be one of"):
        medmnist.export_npz(path, "dev", tmp_path / "o")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="trunc.npz"):
        medmnist.export_npz(trunc, "train", tmp_path / "o")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(DataError, match="text.npz"):
        medmnist.export_npz(text, "train", tmp_path / "o")
    with pytest.raises(DataError, match="not found"):
        medmnist.export_npz(tmp_path / "missing.npz", "train", tmp_path / "o")
    nosplit = tmp_path / "nosplit.npz"
    np.savez(nosplit, train_images=np.zeros((1, 28, 28, 3), np.uint8), train_labels=np.zeros((1, 1), np.uint8))
    with pytest.raises(DataError, match="no 'val_images'.*found: train_images, train_labels"):
        medmnist.export_npz(nosplit, "val", tmp_path / "o")


# --------------------------------------------------------------------------------------------
# Download (md5-verified), against file:// URLs


@pytest.fixture
def local_mirror(tmp_path, monkeypatch, blood_npz):
    path, _ = blood_npz
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "bloodmnist.npz").write_bytes(path.read_bytes())
    monkeypatch.setattr(medmnist, "URL_TEMPLATE", mirror.as_uri() + "/{name}.npz")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(medmnist.MD5, ("bloodmnist", 28), md5)
    return mirror, md5


def test_download_verifies_md5_and_reuses_the_file(tmp_path, local_mirror):
    mirror, md5 = local_mirror
    dest = tmp_path / "cache"
    seen = []
    got = medmnist.download("bloodmnist", dest, 28, progress=lambda done, total: seen.append((done, total)))
    assert got == dest / "bloodmnist.npz"
    assert medmnist.md5sum(got) == md5 and seen and seen[-1][0] == got.stat().st_size
    assert sorted(p.name for p in dest.iterdir()) == ["bloodmnist.npz"]  # no .part left
    (mirror / "bloodmnist.npz").unlink()  # a second call must not need the network
    assert medmnist.download("BloodMNIST", dest, 28) == got
    assert medmnist.export_npz(got, "val", tmp_path / "out") == 5


def test_download_with_wrong_md5_deletes_and_raises(tmp_path, local_mirror, monkeypatch):
    monkeypatch.setitem(medmnist.MD5, ("bloodmnist", 28), "0" * 32)
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match=r"MD5 [0-9a-f]{32}, expected 0{32}"):
        medmnist.download("bloodmnist", dest, 28)
    assert list(dest.iterdir()) == []


def test_download_replaces_a_corrupt_cached_file(tmp_path, local_mirror):
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "bloodmnist.npz").write_bytes(b"half a file")
    got = medmnist.download("bloodmnist", dest, 28)
    assert medmnist.md5sum(got) == local_mirror[1]


def test_download_failure_is_a_data_error(tmp_path, local_mirror):
    with pytest.raises(DataError, match="download failed.*--npz"):
        medmnist.download("bloodmnist", tmp_path / "cache", 64)  # no bloodmnist_64.npz in the mirror
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(DataError, match="--size must be one of"):
        medmnist.download("bloodmnist", tmp_path / "cache", 32)


def test_official_table_covers_every_set_and_size():
    for flag in medmnist.INFO:
        for size in medmnist.SIZES:
            assert re.fullmatch(r"[0-9a-f]{32}", medmnist.MD5[(flag, size)])
    assert medmnist.URL_TEMPLATE.format(name=Path(medmnist.file_name("bloodmnist", 64)).stem) == (
        "https://zenodo.org/records/10519652/files/bloodmnist_64.npz?download=1"
    )


def test_cli_medmnist_from_npz(blood_npz, tmp_path, capsys):
    path, _ = blood_npz
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    args = parser.parse_args(["data", "medmnist", "--npz", str(path), "--split", "val", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 bloodmnist val images" in printed and re.search(r"basophil\s+1", printed)
    with pytest.raises(SystemExit):  # --npz and --download together are refused by argparse
        parser.parse_args(["data", "medmnist", "--npz", "a", "--download", "bloodmnist", "--out", "o"])


# --------------------------------------------------------------------------------------------
# Real data


def test_real_bloodmnist_like_val_split(tmp_path):
    if not REAL_NPZ.exists():
        pytest.skip(f"{REAL_NPZ} not present")
    with np.load(REAL_NPZ) as data:
        expected = np.bincount(data["val_labels"][:, 0], minlength=8)
    out = tmp_path / "val"
    assert medmnist.export_npz(REAL_NPZ, "val", out) == 1710
    counts = Counter(label_of(p) for p in out.iterdir())
    assert counts == {name: int(n) for name, n in zip(BLOOD, expected)}
    assert medmnist.class_counts(REAL_NPZ, "val") == counts
    ds = ImageFolderDataset(out, 28)
    assert len(ds) == 1710 and ds.channels == 3 and ds.class_map.names == BLOOD
