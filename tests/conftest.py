"""Shared fixtures: tiny real data and tiny real models (fast on 2 CPU cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A tiny denoiser: trains a step in well under a second on this CPU.
TINY_MODEL = [
    "--image_size",
    "16",
    "--num_channels",
    "32",
    "--num_res_blocks",
    "1",
    "--attention_resolutions",
    "8",
    "--num_heads",
    "2",
]
TINY_DIFFUSION = ["--diffusion_steps", "100", "--noise_schedule", "cosine"]


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """4 toy-cell classes x 6 images at 16 px, in the seed's naming."""
    from clinalign.data.toy import generate

    out = tmp_path_factory.mktemp("toy")
    generate(out, classes=4, per_class=6, size=16, seed=0)
    return out


@pytest.fixture(scope="module")
def pretrained(toy_dir, tmp_path_factory) -> Path:
    """A class-conditional tiny denoiser trained 2 steps on the module's ``toy_dir``."""
    from clinalign.cli import main

    run = tmp_path_factory.mktemp("pre")
    assert (
        main(
            [
                "train",
                "--data_dir",
                str(toy_dir),
                "--run_dir",
                str(run),
                *TINY_MODEL,
                *TINY_DIFFUSION,
                "--class_cond",
                "True",
                "--batch_size",
                "4",
                "--max_steps",
                "2",
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads stall whenever another
    process takes a core (epochs went from 0.7 s to 10-30 s); one thread is steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data (real blood-cell images) is not present")
    return SHARED_DATA


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
