"""``clinalign data import`` (class folders, seed names, CSV, npz -> train/val/test) and ``clinalign data pools``."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from clinalign.cli import main
from clinalign.data.folder import load_image
from clinalign.data.importing import ImportConfig, import_images
from clinalign.data.naming import declared_classes, label_of, list_images
from clinalign.data.pools import fingerprint
from clinalign.errors import ConfigError, DataError

CLASSES = ("blast", "cell", "dot")


def _image(path, size=(24, 18), seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def class_folders(tmp_path):
    """ImageNet layout, 10 images per class, half of them one folder deeper, names without a class prefix."""
    root = tmp_path / "src"
    for k, cls in enumerate(CLASSES):
        for i in range(10):
            sub = root / cls / ("scan2" if i % 2 else "")
            _image(sub / f"IMG-{k}{i:02d}.jpg", size=(24 + i, 18), seed=10 * k + i)
    return root


def _split_classes(out, split):
    return Counter(declared_classes(list_images(out / split), out / split))


def test_class_folders_become_seed_named_splits_resized_like_training(class_folders, tmp_path):
    out = tmp_path / "out"
    result = import_images(class_folders, out, ImportConfig(size=16, seed=0))
    assert result.kind == "folders"
    for cls in CLASSES:  # 10 per class at 0.8/0.1/0.1: 8/1/1, in every class
        assert [_split_classes(out, s)[cls] for s in ("train", "val", "test")] == [8, 1, 1]
    names = {p.name for s in ("train", "val", "test") for p in list_images(out / s)}
    assert "blast_IMG-003.png" in names and len(names) == 30
    # the pixels are what training reads from the original: the same scale-and-crop pipeline
    (written,) = [
        out / s / "blast_IMG-003.png" for s in ("train", "val", "test") if (out / s / "blast_IMG-003.png").exists()
    ]
    original = load_image(class_folders / "blast" / "scan2" / "IMG-003.jpg", 16)
    assert np.array_equal(np.asarray(Image.open(written)), original)
    record = json.loads((out / "import.json").read_text())
    assert record["counts"]["train"] == {"blast": 8, "cell": 8, "dot": 8}
    assert record["split"] == [0.8, 0.1, 0.1] and record["seed"] == 0 and record["size"] == 16
    assert record["fingerprints"]["val"] == fingerprint(list_images(out / "val"))
    assert record["source"]["kind"] == "folders" and record["source"]["images"] == 30
    rows = list(csv.DictReader((out / "import.csv").open()))
    assert {r["source"] for r in rows if r["ID"] == "blast_IMG-003.png"} == {
        str(class_folders / "blast" / "scan2" / "IMG-003.jpg")
    }


def test_the_split_is_seeded_and_stable(class_folders, tmp_path):
    def split_of(out):
        return {p.name: s for s in ("train", "val", "test") for p in list_images(out / s)}

    a = split_of(import_images(class_folders, tmp_path / "a", ImportConfig(seed=0)).out)
    b = split_of(import_images(class_folders, tmp_path / "b", ImportConfig(seed=0)).out)
    c = split_of(import_images(class_folders, tmp_path / "c", ImportConfig(seed=1)).out)
    assert a == b and a != c
    # one more image moves at most one other across a cut; a shuffle of the class would move several
    _image(class_folders / "dot" / "IMG-new.jpg", seed=99)
    d = split_of(import_images(class_folders, tmp_path / "d", ImportConfig(seed=0)).out)
    assert len([n for n in a if a[n] != d[n]]) <= 1


def test_seed_named_files_are_copied_byte_for_byte_without_size(tmp_path):
    src = tmp_path / "src"
    for cls in CLASSES:
        for i in range(5):
            _image(src / ("deep" if i == 0 else "") / f"{cls}_{i}.jpg", seed=i)
    out = tmp_path / "out"
    result = import_images(src, out, ImportConfig(split="0.6/0.2/0.2"))
    assert result.kind == "names"
    copied = {p.name: p for s in ("train", "val", "test") for p in list_images(out / s)}
    assert sorted(copied) == sorted(f"{c}_{i}.jpg" for c in CLASSES for i in range(5))  # no CLASS_CLASS_ doubling
    assert copied["cell_0.jpg"].read_bytes() == (src / "deep" / "cell_0.jpg").read_bytes()


def test_csv_of_paths_relative_to_the_csv(tmp_path):
    rows = [("path", "class")]
    for cls in CLASSES:
        for i in range(5):
            _image(tmp_path / "pics" / f"{cls}{i}.png", seed=i)
            rows.append((f"pics/{cls}{i}.png", cls))
    sheet = tmp_path / "labels.csv"
    with sheet.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    result = import_images(sheet, out, ImportConfig(split="0.6/0.2/0.2"))
    assert result.kind == "csv" and result.counts["test"] == {c: 1 for c in CLASSES}
    written = {p.name: p.read_bytes() for s in ("train", "val", "test") for p in list_images(out / s)}
    assert written["blast_blast0.png"] == (tmp_path / "pics" / "blast0.png").read_bytes()


def _npz(path, n=(6, 2, 2)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 2).reshape(k, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path, arrays


def test_npz_keeps_its_own_splits_unless_a_split_is_given(tmp_path):
    npz, arrays = _npz(tmp_path / "bloodmnist.npz")
    out = tmp_path / "out"
    result = import_images(npz, out, ImportConfig())
    assert result.counts == {"train": {"basophil": 3, "eosinophil": 3}, "val": {"basophil": 1, "eosinophil": 1},
                             "test": {"basophil": 1, "eosinophil": 1}}  # fmt: skip
    first = np.asarray(Image.open(out / "val" / "basophil_val-000000.png"))
    assert np.array_equal(first, arrays["val_images"][0])
    resplit = import_images(npz, tmp_path / "re", ImportConfig(split="0.5/0.25/0.25", size=16))
    assert sum(resplit.counts["val"].values()) == 2 * round(5 * 0.25)
    assert Image.open(list_images(tmp_path / "re" / "train")[0]).size == (16, 16)
    with pytest.raises(DataError, match="--flag"):
        import_images(_npz(tmp_path / "mystery.npz")[0], tmp_path / "x", ImportConfig())


def test_unreadable_images_are_all_named_and_nothing_is_written(class_folders, tmp_path):
    (class_folders / "cell" / "IMG-broken.jpg").write_bytes(b"not a jpeg")
    (class_folders / "dot" / "scan2" / "IMG-empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"2 of 32 images cannot be read") as err:
        import_images(class_folders, out, ImportConfig(size=16))
    assert "IMG-broken.jpg" in str(err.value) and "IMG-empty.jpg" in str(err.value)
    assert "skip_bad_images" not in str(err.value)  # training's flag; import has none
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(DataError, match="2 of 32"):  # copying checks the files too
        import_images(class_folders, out, ImportConfig())


def test_too_few_images_duplicates_non_empty_out_and_ambiguous_layout(class_folders, tmp_path):
    for i in range(4, 10):
        (class_folders / "dot" / ("scan2" if i % 2 else "") / f"IMG-2{i:02d}.jpg").unlink()
    with pytest.raises(DataError, match=r"at least 5 .*dot has 4"):
        import_images(class_folders, tmp_path / "a", ImportConfig())
    assert import_images(class_folders, tmp_path / "b", ImportConfig(split="0.75/0.25/0")).counts.keys() == {
        "train",
        "val",
    }
    _image(class_folders / "blast" / "other" / "IMG-000.jpg")  # also blast/IMG-000.jpg -> blast_IMG-000.png
    with pytest.raises(DataError, match=r"1 output name.*IMG-000.jpg and .*IMG-000.jpg -> blast_IMG-000.png"):
        import_images(class_folders, tmp_path / "c", ImportConfig(size=16, split="0.75/0.25/0"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        import_images(class_folders, tmp_path / "full", ImportConfig())
    with pytest.raises(ConfigError, match="sum to 1"):
        import_images(class_folders, tmp_path / "d", ImportConfig(split="0.8/0.1"))
    split_named = tmp_path / "presplit"
    for s in ("train", "test"):
        for cls in CLASSES:
            _image(split_named / s / f"{cls}_{s}1.png")
    with pytest.raises(DataError, match="--layout folders .* or --layout names"):
        import_images(split_named, tmp_path / "e", ImportConfig())
    names = import_images(split_named, tmp_path / "f", ImportConfig(layout="names", split="0.5/0/0.5"))
    assert names.counts["train"] == {c: 1 for c in CLASSES}


def test_csv_problems_name_the_file_and_row(tmp_path):
    sheet = tmp_path / "labels.csv"
    sheet.write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"labels.csv: missing column\(s\) path, class"):
        import_images(sheet, tmp_path / "out", ImportConfig())
    sheet.write_text("path,class\na.png,bad_name\n")
    with pytest.raises(DataError, match=r"row 2: class name 'bad_name'"):
        import_images(sheet, tmp_path / "out", ImportConfig())


def test_cli_prints_the_class_by_split_table(class_folders, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "import", str(class_folders), str(out), "--size", "16", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "imported 30 images" in text and "resized to 16x16" in text
    assert any(line.split() == ["blast", "8", "1", "1", "10"] for line in text.splitlines()), text
    assert any(line.split() == ["total", "24", "3", "3", "30"] for line in text.splitlines()), text
    assert json.loads((out / "import.json").read_text())["fingerprints"]["train"] in text
    assert main(["data", "import", str(class_folders), str(out)]) == 2  # not empty: a one-line error


def test_pools_cli_writes_g_e_o_and_prints_fingerprints(tmp_path, capsys):
    from clinalign.data.toy import generate

    train = tmp_path / "train"
    generate(train, classes=2, per_class=12, size=8, seed=0)
    out = tmp_path / "pools"
    assert (
        main(["data", "pools", "--train", str(train), "--real_per_class", "4", "--out", str(out), "--seed", "1"]) == 0
    )
    text = capsys.readouterr().out
    record = json.loads((out / "pools.json").read_text())
    assert record["G"]["n"] == 8 and record["seed"] == 1
    assert Counter(label_of(p) for p in list_images(out / "G")) == Counter({"lymphocyte": 4, "neutrophil": 4})
    for name in ("G", "E", "O"):
        assert record[name]["fingerprint"] in text
        assert len(list_images(out / name)) == record[name]["n"]
    assert main(["data", "pools", "--train", str(train), "--real_per_class", "12", "--out", str(tmp_path / "x")]) == 2
    assert "real_per_class" in capsys.readouterr().err


def test_real_raw_blood_cells_import_at_64(shared_data, tmp_path):
    src = shared_data / "pbc_raw_sample"
    if not src.exists():
        pytest.skip("pbc_raw_sample is not present")
    out = tmp_path / "pbc"
    result = import_images(src, out, ImportConfig(size=64))
    assert sum(sum(c.values()) for c in result.counts.values()) == len(list_images(src))
    assert set(result.counts["test"]) == set(declared_classes(list_images(src)))
    first = list_images(out / "train")[0]
    original = next(p for p in list_images(src) if p.stem == first.stem)
    assert Image.open(first).size == (64, 64)
    assert np.array_equal(np.asarray(Image.open(first)), load_image(original, 64))
