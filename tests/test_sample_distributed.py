"""``clinalign sample`` under torchrun: batches shared among processes, the same folder as one process."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clinalign.cli import main
from clinalign.data.naming import list_images
from clinalign.errors import ConfigError
from clinalign.sampling.sample import SampleConfig, sample_folder

from .conftest import subprocess_env

# 9 images in batches of 2: five batches, so the last round has a batch for rank 0 only.
SAMPLE_ARGS = ["--num_samples", "9", "--batch_size", "2", "--sampler", "ddim", "--steps", "3", "--seed", "5"]


def _sample(checkpoint, out, processes: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    argv = [*launcher, "-m", "clinalign.cli"] if processes > 1 else [sys.executable, "-m", "clinalign.cli"]
    argv += ["sample", "--checkpoint", str(checkpoint), "--out", str(out), *SAMPLE_ARGS]
    res = subprocess.run(argv, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _assert_same_folder(a, b):
    names = sorted(p.name for p in list_images(a))
    assert names == sorted(p.name for p in list_images(b)) and len(names) == 9
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "manifest.csv").read_text() == (b / "manifest.csv").read_text()
    npz_a, npz_b = np.load(a / "samples.npz"), np.load(b / "samples.npz")
    assert np.array_equal(npz_a["arr_0"], npz_b["arr_0"]) and np.array_equal(npz_a["arr_1"], npz_b["arr_1"])


@pytest.fixture(scope="module")
def one_process(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "samples"
    _sample(pretrained, out, 1)
    return out


def test_two_processes_share_the_batches_and_write_what_one_process_writes(pretrained, one_process, tmp_path):
    out = tmp_path / "two"
    res = _sample(pretrained, out, 2)
    assert "rank 0 of 2 draws 3 of 5 batches: [0, 2, 4]" in res.stderr
    assert "rank 1 of 2 draws 2 of 5 batches: [1, 3]" in res.stderr
    assert res.stdout.count("wrote 9 images") == 1  # one rank reports
    _assert_same_folder(one_process, out)


def test_an_interrupted_run_resumes_under_torchrun(pretrained, one_process, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(one_process, out)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    for r in rows:  # the crash: batch 4 lost, batch 3 written but not yet in the manifest
        if r["batch"] == "4":
            (out / r["ID"]).unlink()
    kept = [r for r in rows if int(r["batch"]) < 3]
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    (out / "samples.npz").unlink()
    res = _sample(pretrained, out, 2)
    assert "rank 0 of 2 draws 1 of 2 batches: [3]" in res.stderr  # the round-robin goes on from batch 3
    assert "rank 1 of 2 draws 1 of 2 batches: [4]" in res.stderr
    _assert_same_folder(one_process, out)


def test_rejection_sampling_is_refused_under_torchrun(pretrained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["sample", "--checkpoint", str(pretrained), "--out", str(tmp_path / "x"), "--reward_checkpoint", "R"]
    assert main(argv) == 2
    assert "rejection sampling (--reward_checkpoint) runs in one process" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="without torchrun"):
        sample_folder(pretrained, tmp_path / "y", SampleConfig(num_samples=2), accept=lambda x, y: (y >= 0, None))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
