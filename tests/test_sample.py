"""Sampling from a tiny trained checkpoint: files, manifest, npz, determinism, resume, errors."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clinalign.cli import main
from clinalign.data.naming import label_of, list_images
from clinalign.errors import ConfigError, DataError
from clinalign.sampling.sample import SampleConfig, sample_folder

from .conftest import REPO, TINY_DIFFUSION, TINY_MODEL, subprocess_env


@pytest.fixture(scope="module")
def tiny_run(toy_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    argv = [
        "train",
        "--data_dir",
        str(toy_dir),
        "--run_dir",
        str(run),
        *TINY_MODEL,
        *TINY_DIFFUSION,
        "--class_cond",
        "True",
        "--learn_sigma",
        "True",
        "--batch_size",
        "4",
        "--max_steps",
        "2",
    ]
    assert main(argv) == 0
    return run


@pytest.mark.parametrize("sampler,steps", [("ancestral", 10), ("ddim", 5), ("dpm++", 5)])
def test_sample_writes_seed_named_files_manifest_and_npz(tiny_run, tmp_path, sampler, steps):
    out = tmp_path / sampler
    rc = main(
        [
            "sample",
            "--checkpoint",
            str(tiny_run),
            "--num_samples",
            "6",
            "--classes",
            "lymphocyte,neutrophil",
            "--sampler",
            sampler,
            "--steps",
            str(steps),
            "--batch_size",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    files = list_images(out)
    assert len(files) == 6
    assert sorted(label_of(f) for f in files) == ["lymphocyte"] * 3 + ["neutrophil"] * 3
    with Image.open(files[0]) as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    # one row per file, in the order they were drawn (the running number), classes interleaved
    assert [r["ID"] for r in rows] == sorted((f.name for f in files), key=lambda n: int(n.rsplit("_", 1)[1][:-4]))
    assert [r["class"] for r in rows] == ["lymphocyte", "neutrophil"] * 3
    assert {r["sampler"] for r in rows} == {sampler} and {r["steps"] for r in rows} == {str(steps)}
    assert set(rows[0]) >= {"ID", "class", "seed", "checkpoint", "sampler", "steps"}
    npz = np.load(out / "samples.npz")
    assert npz["arr_0"].shape == (6, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
    assert len(npz["arr_1"]) == 6


def test_rejection_sampling_gives_up_on_a_hopeless_class_without_starving_the_others(tiny_run, tmp_path):
    from clinalign.training.checkpoint import find_checkpoint

    hopeless = find_checkpoint(tiny_run).class_map.index("neutrophil")

    def accept(images, labels):  # a reward model that never accepts a neutrophil
        keep = labels != hopeless
        return keep, keep.float()

    cfg = SampleConfig(
        num_samples=6, classes="lymphocyte,neutrophil", sampler="ddim", steps=2, batch_size=4, max_draw_factor=3
    )
    result = sample_folder(tiny_run, tmp_path / "rs", cfg, accept=accept)
    assert result.per_class == {"lymphocyte": 3, "neutrophil": 0}
    assert result.short == {"neutrophil": 3}
    assert result.drawn_per_class["neutrophil"] == 9  # its own budget: 3 x its quota of 3, no more
    assert sorted(label_of(f) for f in list_images(tmp_path / "rs")) == ["lymphocyte"] * 3


def test_same_seed_same_images_and_interrupted_run_resumes_exactly(tiny_run, tmp_path):
    import shutil

    cfg = SampleConfig(num_samples=5, sampler="ddim", steps=4, batch_size=2, seed=3)
    a = sample_folder(tiny_run, tmp_path / "a", cfg)
    assert a.written == 5
    # Simulate a crash: the last batch never written, the one before written but not in the manifest.
    b_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b_dir)
    rows = list(csv.DictReader((b_dir / "manifest.csv").open()))
    last_batch = max(int(r["batch"]) for r in rows)
    for r in rows:
        if int(r["batch"]) == last_batch:
            (b_dir / r["ID"]).unlink()
    kept = [r for r in rows if int(r["batch"]) < last_batch - 1]
    with (b_dir / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(kept)
    b = sample_folder(tiny_run, b_dir, cfg)
    assert b.written == len(rows) - len(kept)
    assert a.per_class == b.per_class
    assert (b_dir / "manifest.csv").read_text() == (tmp_path / "a" / "manifest.csv").read_text()
    for f in list_images(tmp_path / "a"):
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(b_dir / f.name))), f.name
    # a different seed gives different images
    c = sample_folder(tiny_run, tmp_path / "c", dataclasses.replace(cfg, seed=4))
    first = sorted(list_images(tmp_path / "a"))[0]
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(tmp_path / "c" / first.name)))
    assert c.written == 5


def test_unknown_class_and_foreign_folder_are_refused(tiny_run, tmp_path):
    with pytest.raises(DataError, match="basophil"):
        sample_folder(
            tiny_run, tmp_path / "x", SampleConfig(num_samples=1, classes="basophil", sampler="ddim", steps=2)
        )
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    Image.new("RGB", (4, 4)).save(foreign / "cat_1.png")
    with pytest.raises(ConfigError, match="did not write"):
        sample_folder(tiny_run, foreign, SampleConfig(num_samples=1, sampler="ddim", steps=2))


def test_seed_sample_script(tiny_run, tmp_path):
    out = tmp_path / "seed"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "image_sample.py"),
            "--model_path",
            str(tiny_run),
            "--num_samples",
            "2",
            "--batch_size",
            "2",
            "--timestep_respacing",
            "ddim4",
            "--image_size",
            "16",
            "--out",
            str(out),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert len(list_images(out)) == 2
    bad = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "image_sample.py"),
            "--model_path",
            str(tiny_run),
            "--image_size",
            "64",
            "--out",
            str(tmp_path / "bad"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "image_size" in bad.stderr
