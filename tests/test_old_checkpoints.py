"""A run written before the package redesign (tests/fixtures/run_v0_1, see its README) still loads,
samples the same images and resumes: checkpoints outlive refactors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clinalign.cli import main

from .conftest import REPO

OLD_RUN = REPO / "tests" / "fixtures" / "run_v0_1"


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm++"])
def test_an_old_checkpoint_samples_what_it_sampled_before(tmp_path, sampler, one_thread):
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(OLD_RUN),
                "--num_samples",
                "4",
                "--sampler",
                sampler,
                "--steps",
                "6",
                "--batch_size",
                "4",
                "--out",
                str(out),
                "--seed",
                "5",
            ]
        )
        == 0
    )
    expected = np.load(OLD_RUN / "samples_seed5_steps6.npz")
    key = sampler.replace("+", "p")
    got = np.load(out / "samples.npz")
    np.testing.assert_array_equal(got["arr_1"], expected[f"{key}_labels"])
    # Same weights, noise and maths: at most one grey level of rounding from thread-count effects.
    diff = np.abs(got["arr_0"].astype(int) - expected[key].astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()} grey levels"


def test_an_old_run_resumes_from_its_checkpoint(tmp_path, one_thread):
    from clinalign.data.toy import generate

    data = tmp_path / "data"
    generate(data, classes=2, per_class=4, size=16, seed=0)
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    assert (
        main(
            [
                "train",
                "--data_dir",
                str(data),
                "--run_dir",
                str(run),
                "--batch_size",
                "4",
                "--max_steps",
                "3",
                "--ema_rate",
                "0.999",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    from clinalign.training.checkpoint import find_checkpoint

    ck = find_checkpoint(run)
    assert ck.step == 3
    assert ck.model.learn_sigma is True and ck.model.num_channels == 8
    assert ck.model.mid_attention_norm is False, "built as it was trained: no GroupNorm before the middle attention"
