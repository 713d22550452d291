"""Reward-weighted finetuning through the one training loop, on tiny real models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clinalign.cli import main
from clinalign.data.naming import list_images
from clinalign.errors import DataError
from clinalign.training.checkpoint import find_checkpoint
from clinalign.training.finetune import read_rewards_csv, transform_rewards
from clinalign.training.loop import kept_timesteps

from .conftest import REPO, TINY_DIFFUSION, TINY_MODEL, subprocess_env


def scored_folder(src: Path, out: Path, reward) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in list_images(src):
        Image.open(p).save(out / p.name)
        rows.append((p.name, reward(p)))
    with (out / "rewards.csv").open("w", newline="") as f:
        f.write("ID,rewards\n")
        for name, r in rows:
            f.write(f"{name},{r:.6f}\n")
    return out


def finetune_argv(pretrained, toy_dir, mod, run, *extra):
    return [
        "finetune",
        "--resume_checkpoint",
        str(pretrained),
        "--data_pre_dir",
        str(toy_dir),
        "--data_mod_dir",
        str(mod),
        "--run_dir",
        str(run),
        "--batch_size",
        "4",
        "--log_interval",
        "1",
        "--weight_decay",
        "0",
        *extra,
    ]


def test_beta_zero_and_zero_rewards_leave_the_model_unchanged(pretrained, toy_dir, tmp_path):
    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 0.0)
    run = tmp_path / "ft"
    assert main(finetune_argv(pretrained, toy_dir, mod, run, "--beta", "0", "--max_steps", "2")) == 0
    start = find_checkpoint(pretrained).weights(ema=True)
    end = find_checkpoint(run).weights(ema=False)
    for name in start:
        torch.testing.assert_close(start[name], end[name], msg=name)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == [0.0, 0.0]


def test_loss_is_beta_times_real_plus_reward_times_synthetic(pretrained, toy_dir, tmp_path):
    """With rewards 0 the logged loss is beta x the real loss, so doubling beta doubles it."""
    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 0.0)
    runs = {}
    for beta in ("0.5", "1.0"):
        runs[beta] = tmp_path / f"beta{beta}"
        assert (
            main(finetune_argv(pretrained, toy_dir, mod, runs[beta], "--beta", beta, "--max_steps", "1", "--lr", "0"))
            == 0
        )
    first = {b: json.loads((r / "metrics.jsonl").read_text().splitlines()[0])["loss"] for b, r in runs.items()}
    assert first["0.5"] > 0
    assert first["1.0"] == pytest.approx(2 * first["0.5"], rel=1e-5)


def test_synthetic_min_t_trains_the_samples_only_above_it(pretrained, toy_dir, tmp_path):
    """Its loss differs from every-timestep training, leaves the real-only loss alone, and rejects share 1."""
    kept = scored_folder(toy_dir, tmp_path / "kept", lambda p: 1.0)
    dropped = scored_folder(toy_dir, tmp_path / "dropped", lambda p: 0.0)

    def first_loss(mod, name, *extra):
        run = tmp_path / name
        argv = finetune_argv(pretrained, toy_dir, mod, run, "--max_steps", "1", "--lr", "0", *extra)
        assert main(argv) == 0
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])

    real_only = first_loss(dropped, "real_only", "--beta", "1")["loss"]
    assert first_loss(dropped, "real_only_cut", "--beta", "1", "--synthetic_min_t", "0.5")["loss"] == pytest.approx(
        real_only
    )
    every_t = first_loss(kept, "every_t", "--beta", "0")
    high_t = first_loss(kept, "high_t", "--beta", "0", "--synthetic_min_t", "0.75")
    assert every_t["loss"] > 0
    assert high_t["loss"] != pytest.approx(every_t["loss"])
    assert main(finetune_argv(pretrained, toy_dir, kept, tmp_path / "bad", "--synthetic_min_t", "1")) == 2


def test_kept_timesteps_draws_only_above_the_cut_with_unit_weight():
    gen = torch.Generator().manual_seed(0)
    t, w = torch.arange(10).repeat(40), torch.full((400,), 0.5)
    same_t, same_w = kept_timesteps(t, w, 0.0, 10, gen)
    assert same_t is t and same_w is w
    kt, kw = kept_timesteps(t, w, 0.35, 10, gen)
    assert kt.min() == 4 and kt.max() == 9 and set(kt.tolist()) == set(range(4, 10))
    assert torch.equal(kw, torch.ones(400))
    assert set(kept_timesteps(t, w, 0.999, 10, gen)[0].tolist()) == {9}


def test_a_smaller_synthetic_part_shares_the_first_timesteps_and_weighs_as_a_mean():
    """Each part's rows carry weight / its own size, so the synthetic term weighs the same in all."""
    from types import SimpleNamespace

    from clinalign.diffusion.timestep_samplers import UniformSampler
    from clinalign.training.loop import TrainLoop

    def stream(n, value, weight):
        while True:
            yield torch.full((n, 3, 4, 4), value), torch.zeros(n, dtype=torch.long), torch.full((n,), weight)

    def batch(sizes, min_t):
        loop = SimpleNamespace(
            schedule_sampler=UniformSampler(SimpleNamespace(num_timesteps=100)),
            spec=SimpleNamespace(stream_min_t=min_t),
            diffusion=SimpleNamespace(num_timesteps=100),
            device=torch.device("cpu"),
        )
        streams = [stream(sizes[0], 0.0, 0.75), stream(sizes[1], 1.0, 0.5)]
        return TrainLoop.next_batch(loop, streams, torch.Generator().manual_seed(3))

    even, uneven = batch((8, 8), ()), batch((12, 4), ())
    assert uneven.x.shape[0] == 16 and uneven.stream.tolist() == [0] * 12 + [1] * 4
    assert torch.equal(uneven.x[12:], torch.ones(4, 3, 4, 4))
    assert torch.equal(uneven.t[12:], uneven.t[:4])  # the samples share the real part's first draws
    for b in (even, uneven):
        assert float(b.coef[b.stream == 0].sum()) == pytest.approx(0.75)
        assert float(b.coef[b.stream == 1].sum()) == pytest.approx(0.5)
    cut = batch((12, 4), (0.0, 0.6))
    assert cut.t[12:].min() >= 60 and torch.equal(cut.t[:12], uneven.t[:12])


def test_synthetic_batch_size_leaves_the_real_loss_alone(pretrained, toy_dir, tmp_path):
    dropped = scored_folder(toy_dir, tmp_path / "dropped", lambda p: 0.0)
    kept = scored_folder(toy_dir, tmp_path / "kept", lambda p: 1.0)

    def first_loss(mod, name, *extra):
        run = tmp_path / name
        assert main(finetune_argv(pretrained, toy_dir, mod, run, "--max_steps", "1", "--lr", "0", *extra)) == 0
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    real = first_loss(dropped, "even", "--beta", "1")
    assert first_loss(dropped, "uneven", "--beta", "1", "--synthetic_batch_size", "2") == pytest.approx(real)
    assert first_loss(kept, "syn_even", "--beta", "0") != pytest.approx(
        first_loss(kept, "syn_uneven", "--beta", "0", "--synthetic_batch_size", "2")
    )
    assert main(finetune_argv(pretrained, toy_dir, kept, tmp_path / "bad", "--synthetic_batch_size", "-1")) == 2


def test_seed_finetune_script_and_checkpoint_meta(pretrained, toy_dir, tmp_path):
    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 1.0 if p.name.startswith("neutrophil") else 0.2)
    run = tmp_path / "seed"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "image_finetuned.py"),
        "--data_pre_dir",
        str(toy_dir),
        "--data_mod_dir",
        str(mod),
        "--resume_checkpoint",
        str(pretrained),
        "--image_size",
        "16",
        "--num_channels",
        "32",
        "--num_res_blocks",
        "1",
        "--lr",
        "1e-4",
        "--batch_size",
        "4",
        "--max_steps",
        "2",
        "--run_dir",
        str(run),
    ]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ck = find_checkpoint(run)
    assert ck.step == 2 and ck.meta["objective"] == "reward-weighted" and ck.meta["beta"] == 0.3
    config = json.loads((run / "config.json").read_text())
    assert config["n_synthetic"] == 24 and config["reward_transform"] == "raw"


def test_missing_rewards_and_bad_csv_are_named(pretrained, toy_dir, tmp_path):
    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 0.5)
    rows = (mod / "rewards.csv").read_text().splitlines()
    (mod / "rewards.csv").write_text("\n".join(rows[:-1]) + "\n")
    assert main(finetune_argv(pretrained, toy_dir, mod, tmp_path / "x", "--max_steps", "1")) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("name,score\na.png,1\n")
    with pytest.raises(DataError, match="ID,rewards"):
        read_rewards_csv(bad)
    bad.write_text("ID,rewards\na.png,high\n")
    with pytest.raises(DataError, match="bad.csv:2"):
        read_rewards_csv(bad)


def test_reward_transforms():
    r = np.array([0.2, 0.6, 0.4, 0.9, 1.3])
    labels = np.array([0, 0, 1, 1, 1])
    assert transform_rewards(r, labels, "raw").tolist() == [0.2, 0.6, 0.4, 0.9, 1.0]
    assert transform_rewards(r, labels, "threshold", 0.5).tolist() == [0, 1, 0, 1, 1]
    np.testing.assert_allclose(transform_rewards(r, labels, "class_norm"), [0, 1, 0, (0.9 - 0.4) / 0.6, 1])


@pytest.mark.slow
def test_reward_weighted_finetuning_moves_samples_towards_high_reward(tmp_path):
    """A seeded run where the reward is brightness: rewarding bright images must give brighter samples
    than rewarding dark ones from the same pool (an objective that ignores rewards fails this)."""
    from clinalign.data.toy import generate
    from clinalign.sampling.sample import SampleConfig, sample_folder

    real = tmp_path / "real"
    generate(real, classes=2, per_class=24, size=16, seed=1)
    pre = tmp_path / "pre"
    assert (
        main(
            [
                "train",
                "--data_dir",
                str(real),
                "--run_dir",
                str(pre),
                *TINY_MODEL,
                *TINY_DIFFUSION,
                "--class_cond",
                "True",
                "--batch_size",
                "8",
                "--max_steps",
                "300",
                "--lr",
                "1e-3",
                "--ema_rate",
                "0.99",
            ]
        )
        == 0
    )
    # synthetic pool: the real cells, half brightened, half darkened
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, p in enumerate(list_images(real)):
        a = np.asarray(Image.open(p)).astype(np.float32)
        a = a * 0.55 if i % 2 else a * 0.4 + 150
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(pool / p.name)

    def brightness(path):
        return float(np.asarray(Image.open(path)).mean() / 255)

    bright = scored_folder(pool, tmp_path / "bright", lambda p: 1.0 if brightness(p) > 0.6 else 0.0)
    dark = scored_folder(pool, tmp_path / "dark", lambda p: 0.0 if brightness(p) > 0.6 else 1.0)
    means = {}
    for name, mod in (("bright", bright), ("dark", dark)):
        run = tmp_path / f"ft_{name}"
        assert (
            main(
                finetune_argv(
                    pre,
                    real,
                    mod,
                    run,
                    "--max_steps",
                    "300",
                    "--batch_size",
                    "8",
                    "--lr",
                    "1e-3",
                    "--beta",
                    "0.1",
                    "--ema_rate",
                    "0.99",
                    "--log_interval",
                    "50",
                )
            )
            == 0
        )
        out = tmp_path / f"samples_{name}"
        sample_folder(run, out, SampleConfig(num_samples=32, sampler="ddim", steps=20, batch_size=32, seed=0))
        means[name] = float(np.mean([brightness(p) for p in list_images(out)]))
    # An objective that ignores the rewards makes the two runs identical (same seeds): a difference of 0.
    assert means["bright"] > means["dark"] + 0.05, means


def test_kto_lowers_the_loss_of_liked_and_raises_that_of_disliked_images(pretrained, toy_dir, tmp_path):
    """Diffusion-KTO: after a few steps, liked images are likelier than under the frozen start, disliked less."""
    liked = {p.name for p in list_images(toy_dir) if p.name.startswith(("eosinophil", "lymphocyte"))}
    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 1.0 if p.name in liked else 0.0)
    run = tmp_path / "kto"
    assert (
        main(
            finetune_argv(
                pretrained,
                toy_dir,
                mod,
                run,
                "--objective",
                "kto",
                "--beta",
                "0",
                "--kto_beta",
                "20",
                "--lr",
                "3e-4",
                "--max_steps",
                "20",
                "--ema_rate",
                "0.5",
            )
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["objective"] == "kto"
    assert "kto" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])

    from clinalign.data.folder import ImageFolderDataset

    start, end = find_checkpoint(pretrained), find_checkpoint(run)
    data = ImageFolderDataset(str(toy_dir), 16, class_cond=True, class_map=start.class_map)
    x, y = data.get_batch(np.arange(len(data)))
    is_liked = torch.tensor([p.name in liked for p in data.paths])
    diffusion = start.build_diffusion(timestep_respacing="")
    gen = torch.Generator().manual_seed(0)
    reps = 8
    t = torch.randint(0, diffusion.num_timesteps, (reps * len(x),), generator=gen)
    noise = torch.randn((reps * len(x), *x.shape[1:]), generator=gen)

    def losses(ck):
        model = ck.build_model(ema=False).eval()
        with torch.no_grad():
            out = diffusion.training_losses(
                model, x.repeat(reps, 1, 1, 1), t, noise=noise, model_kwargs={"y": y.repeat(reps)}
            )["loss"]
        return out.view(reps, -1).mean(0)

    delta = losses(end) - losses(start)
    # measured: liked -0.27, disliked +0.45 (a flipped sign or an ignored reference fails this)
    assert delta[is_liked].mean() < 0 < delta[~is_liked].mean(), delta


def test_carry_state_continues_the_weights_ema_and_optimizer(pretrained, toy_dir, tmp_path):
    """At lr 0 a carried finetune keeps the raw weights, its EMA keeps averaging toward them at the
    continued age, and the optimizer's moments count on; without it the run starts from the EMA."""
    from clinalign.training.ema import ema_decay

    base = find_checkpoint(pretrained)
    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 1.0)
    carried, fresh = tmp_path / "carried", tmp_path / "fresh"
    for run, carry in ((carried, "True"), (fresh, "False")):
        argv = finetune_argv(pretrained, toy_dir, mod, run, "--max_steps", "2", "--lr", "0", "--carry_state", carry)
        assert main(argv) == 0
    raw, ema = base.weights(ema=False), base.weights(ema=True)
    end = find_checkpoint(carried)
    rate = float(base.ema_rates[0])
    keep = ema_decay(rate, base.step) * ema_decay(rate, base.step + 1)
    moved = 0
    for name, w in end.weights(ema=False).items():
        torch.testing.assert_close(w, raw[name], msg=name)
        if w.is_floating_point():
            torch.testing.assert_close(end.weights(ema=True)[name], keep * ema[name] + (1 - keep) * raw[name])
            moved += int(not torch.equal(raw[name], ema[name]))
    assert moved  # the base's EMA and raw weights differ, so the check above can fail
    base_steps = {int(s["step"]) for s in base.state()["optimizer"]["state"].values()}
    state = end.state()
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {b + 2 for b in base_steps}
    assert state["optimizer"]["param_groups"][0]["lr"] == 0
    assert state["ema_age"] == base.step and end.step == 2
    start = find_checkpoint(fresh).weights(ema=False)
    assert all(torch.equal(start[n], ema[n]) for n in ema)


def test_carry_state_refuses_what_it_cannot_carry(pretrained, toy_dir, tmp_path, capsys):
    """A new concept has no optimizer state or EMA to carry, nor has a weights-only checkpoint."""
    import shutil

    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 1.0)
    first = list_images(mod)[0]
    parent, rest = first.name.split("_", 1)
    first.rename(mod / f"newcell_{rest}")
    (mod / "rewards.csv").write_text("ID,rewards\n" + "".join(f"{p.name},1\n" for p in list_images(mod)))
    carry = ("--max_steps", "1", "--carry_state", "True")
    argv = finetune_argv(pretrained, toy_dir, mod, tmp_path / "ft", *carry, "--concept", f"newcell={parent}")
    assert main(argv) == 2
    assert "adds classes (newcell)" in capsys.readouterr().err
    assert not (tmp_path / "ft" / "checkpoints").exists()

    bare = tmp_path / "bare"
    shutil.copytree(find_checkpoint(pretrained).path, bare)
    (bare / "state.pt").unlink()
    plain = scored_folder(toy_dir, tmp_path / "plain", lambda p: 1.0)
    assert main(finetune_argv(bare, toy_dir, plain, tmp_path / "ft2", *carry)) == 2
    assert "holds no optimizer state" in capsys.readouterr().err
