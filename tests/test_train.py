"""The training loop on tiny real models: checkpoints, resume, kill -9, DDP, skipped steps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clinalign.cli import main
from clinalign.data.classmap import ClassMap
from clinalign.diffusion import DiffusionConfig
from clinalign.errors import CheckpointError, ConfigError
from clinalign.models.unet import ModelConfig
from clinalign.training.checkpoint import find_checkpoint, list_checkpoints
from clinalign.training.config import TrainConfig
from clinalign.training.loop import TrainSpec, train

from .conftest import REPO, TINY_DIFFUSION, TINY_MODEL, subprocess_env


def train_argv(data: Path, run: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data_dir",
        str(data),
        "--run_dir",
        str(run),
        *TINY_MODEL,
        *TINY_DIFFUSION,
        "--class_cond",
        "True",
        "--batch_size",
        "4",
        "--log_interval",
        "1",
        *extra,
    ]


def weights_of(path: Path, ema: bool = False) -> dict[str, torch.Tensor]:
    return find_checkpoint(path).weights(ema=ema)


def test_checkpoint_round_trip_carries_config(toy_dir, tmp_path):
    run = tmp_path / "run"
    assert main(train_argv(toy_dir, run, "--max_steps", "2", "--learn_sigma", "True")) == 0
    ck = find_checkpoint(run)
    assert ck.step == 2
    assert ck.model.image_size == 16 and ck.model.learn_sigma is True
    assert ck.diffusion.diffusion_steps == 100
    assert ck.class_map.names == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert ck.channels == 3
    model = ck.build_model(ema=False)
    saved = weights_of(run)
    for name, p in model.state_dict().items():
        assert torch.equal(p, saved[name]), name
    # the same checkpoint is found from its directory and from its weights file
    assert find_checkpoint(ck.path).step == 2
    assert find_checkpoint(ck.path / "model.safetensors").meta["model"] == ck.meta["model"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for key in ("loss", "grad_norm", "images_per_s", "lr", "mse", "vb"):
        assert key in lines[-1]
    assert any(k.startswith("loss_q") for k in lines[-1])
    assert json.loads((run / "config.json").read_text())["model"]["num_channels"] == 32


def test_resume_replays_an_uninterrupted_run_exactly(toy_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(train_argv(toy_dir, straight, "--max_steps", "4", "--save_interval", "2")) == 0
    assert main(train_argv(toy_dir, split, "--max_steps", "2")) == 0
    # the same command with a larger budget resumes from the run dir, no flags repeated but data
    assert (
        main(["train", "--data_dir", str(toy_dir), "--run_dir", str(split), "--batch_size", "4", "--max_steps", "4"])
        == 0
    )
    a, b = weights_of(straight), weights_of(split)
    assert find_checkpoint(split).step == 4
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    ema_a, ema_b = weights_of(straight, ema=True), weights_of(split, ema=True)
    for name in ema_a:
        torch.testing.assert_close(ema_a[name], ema_b[name], rtol=1e-5, atol=1e-6)


def test_typed_flags_that_contradict_the_checkpoint_are_refused(toy_dir, tmp_path):
    run = tmp_path / "run"
    assert main(train_argv(toy_dir, run, "--max_steps", "1")) == 0
    with pytest.raises(ConfigError, match="num_channels"):
        from clinalign.cli import build_parser
        from clinalign.training.pretrain import pretrain

        args = build_parser().parse_args(train_argv(toy_dir, run, "--max_steps", "2", "--num_channels", "64"))
        pretrain(args)
    # and through the CLI it is a one-line error, exit code 2
    assert main(train_argv(toy_dir, run, "--max_steps", "2", "--num_channels", "64")) == 2


def test_bad_checkpoint_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        find_checkpoint(tmp_path / "empty")
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        find_checkpoint(bogus)


def _tiny_spec(run: Path, stream, **train_over) -> TrainSpec:
    model = ModelConfig(
        image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8", num_heads=2, class_cond=True
    )
    train_cfg = TrainConfig(**{"batch_size": 2, "log_interval": 1, "save_interval": 100, **train_over})
    return TrainSpec(
        run_dir=run,
        model=model,
        diffusion=DiffusionConfig(diffusion_steps=50),
        train=train_cfg,
        channels=3,
        class_map=ClassMap.from_labels(["a", "b"]),
        streams=lambda d, s: [stream()],
    )


def test_non_finite_step_is_skipped_and_never_written(tmp_path):
    def stream():
        g = torch.Generator().manual_seed(0)
        step = 0
        while True:
            x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
            if step == 1:
                x[0, 0, 0, 0] = float("nan")
            step += 1
            yield x, torch.tensor([0, 1]), torch.ones(2)

    run = tmp_path / "nan"
    train(_tiny_spec(run, stream, max_steps=3))
    ck = find_checkpoint(run)
    assert ck.state()["skipped_steps"] == 1
    for name, value in ck.weights(ema=False).items():
        assert torch.isfinite(value).all(), name
    for name, value in ck.weights(ema=True).items():
        assert torch.isfinite(value).all(), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]


def test_a_run_whose_every_step_is_non_finite_stops_with_a_clear_error(tmp_path, monkeypatch):
    """Skipping non-finite steps protects the weights; skipping all of them silently would waste hours."""
    import clinalign.training.loop as loop_module
    from clinalign.training.loop import TrainingDiverged

    def stream():
        while True:
            yield torch.full((2, 3, 16, 16), float("nan")), torch.tensor([0, 1]), torch.ones(2)

    monkeypatch.setattr(loop_module, "MAX_CONSECUTIVE_SKIPS", 3)
    with pytest.raises(TrainingDiverged, match="last 3 steps .*diverged.*lower --lr"):
        train(_tiny_spec(tmp_path / "diverged", stream, max_steps=50))


def test_two_runs_cannot_train_in_one_run_directory(toy_dir, tmp_path):
    import fcntl

    run = tmp_path / "locked"
    run.mkdir()
    with open(run / ".lock", "w") as held:  # another process training there holds this lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another clinalign process is training"):
            from clinalign.training.pretrain import pretrain

            pretrain(
                {
                    "data_dir": str(toy_dir),
                    "run_dir": str(run),
                    "image_size": 16,
                    "num_channels": 32,
                    "num_res_blocks": 1,
                    "attention_resolutions": "8",
                    "num_heads": 2,
                    "class_cond": True,
                    "diffusion_steps": 100,
                    "batch_size": 4,
                    "max_steps": 1,
                }
            )
    assert main(train_argv(toy_dir, run, "--max_steps", "1")) == 0  # free again once it is released


def test_save_steps_checkpoint_between_intervals(tmp_path):
    """A control continued from a base at any step is checkpointed at its comparison points."""

    def stream():
        while True:
            yield torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([0, 1]), torch.ones(2)

    run = tmp_path / "points"
    spec = _tiny_spec(run, stream, max_steps=5, save_interval=100)
    spec.save_steps = frozenset({3})
    train(spec)
    assert [find_checkpoint(p).step for p in list_checkpoints(run)] == [3, 5]


def test_zero_weights_leave_the_model_unchanged(tmp_path):
    """Per-sample weights really scale the loss: all-zero weights give zero gradients."""

    def stream():
        while True:
            yield torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([0, 1]), torch.zeros(2)

    run = tmp_path / "zero"
    spec = _tiny_spec(run, stream, max_steps=2, weight_decay=0.0)
    train(spec)
    torch.manual_seed(0)
    from clinalign.models.unet import build_denoiser

    init = build_denoiser(spec.model, 3, 2).state_dict()
    final = find_checkpoint(run).weights(ema=False)
    for name in init:
        torch.testing.assert_close(init[name], final[name], msg=name)


def test_seed_script_runs_with_the_seed_flags(toy_dir, tmp_path):
    run = tmp_path / "seedrun"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "image_train.py"),
        "--data_dir",
        str(toy_dir),
        "--image_size",
        "16",
        "--num_channels",
        "32",
        "--num_res_blocks",
        "1",
        "--attention_resolutions",
        "8",
        "--diffusion_steps",
        "100",
        "--noise_schedule",
        "linear",
        "--learn_sigma",
        "True",
        "--use_kl",
        "True",
        "--schedule_sampler",
        "loss-second-moment",
        "--class_cond",
        "True",
        "--lr",
        "1e-4",
        "--batch_size",
        "4",
        "--max_steps",
        "3",
        "--run_dir",
        str(run),
    ]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ck = find_checkpoint(run)
    assert ck.step == 3 and ck.diffusion.use_kl is True
    assert ck.state()["schedule_sampler"], "loss-second-moment history is checkpointed"
    # the seed's meaning: eps-prediction in fp32, whatever `clinalign train` defaults to
    assert ck.build_diffusion().model_mean_type.name == "EPSILON"
    assert json.loads((run / "config.json").read_text())["train"]["use_fp16"] is False


def test_clinalign_train_uses_the_measured_recipe_for_new_runs_only(toy_dir, tmp_path):
    from clinalign.cli import main
    from clinalign.training.cli import RECIPE

    from .conftest import TINY_DIFFUSION, TINY_MODEL

    def train(run, *extra):
        flags = ["--batch_size", "4", "--class_cond", "True", *TINY_MODEL, *TINY_DIFFUSION]
        assert main(["train", "--data_dir", str(toy_dir), "--run_dir", str(run), *flags, *extra]) == 0
        return find_checkpoint(run), json.loads((run / "config.json").read_text())["train"]

    ck, cfg = train(tmp_path / "new", "--max_steps", "2")
    assert ck.diffusion.prediction == RECIPE["prediction"] and cfg["use_fp16"] is RECIPE["use_fp16"]
    # a typed objective wins, and a resumed run keeps its checkpoint's
    ck, _ = train(tmp_path / "typed", "--max_steps", "2", "--predict_xstart", "False", "--use_fp16", "False")
    assert ck.build_diffusion().model_mean_type.name == "EPSILON"
    ck, _ = train(tmp_path / "typed", "--max_steps", "3")
    assert ck.step == 3 and ck.build_diffusion().model_mean_type.name == "EPSILON"
    ck, _ = train(tmp_path / "seed", "--max_steps", "2", "--recipe", "seed")
    assert ck.build_diffusion().model_mean_type.name == "EPSILON"


def test_kill_9_mid_run_then_resume_reaches_the_same_step(toy_dir, tmp_path):
    run = tmp_path / "killed"
    argv = [
        sys.executable,
        "-m",
        "clinalign.cli",
        *train_argv(toy_dir, run, "--max_steps", "40", "--save_interval", "3"),
    ]
    proc = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not list_checkpoints(run):
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = find_checkpoint(run).step
    assert 3 <= saved < 40, "killed after the first save and before the end"
    res = subprocess.run(argv, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert find_checkpoint(run).step == 40
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40
    # no half-written checkpoint directories are left behind
    assert all(not p.name.startswith(".") for p in (run / "checkpoints").iterdir())


def test_ctrl_c_saves_a_checkpoint_at_the_interrupted_step_and_the_run_resumes(toy_dir, tmp_path):
    """SIGINT (Ctrl-C) with no periodic checkpoint yet: the step reached is saved, and resuming finishes."""
    run = tmp_path / "interrupted"
    argv = [
        sys.executable,
        "-m",
        "clinalign.cli",
        *train_argv(toy_dir, run, "--max_steps", "500", "--save_interval", "1000"),
    ]
    # A shell's background job (`pytest &`) starts with SIGINT ignored, and the child would inherit
    # that: it would finish its 500 steps and this test would fail for a reason outside the code.
    proc = subprocess.Popen(
        argv,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "saving a checkpoint" in err and "rerun the same command to resume" in err
    saved = find_checkpoint(run).step
    assert 3 <= saved < 500, "the interrupted step is saved, though no periodic save was due"
    res = subprocess.run(
        [*argv[:-4], "--max_steps", str(saved + 2)], env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert find_checkpoint(run).step == saved + 2


def test_ddp_two_gloo_processes(toy_dir, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "clinalign.cli",
        *train_argv(
            toy_dir,
            run,
            "--max_steps",
            "3",
            "--batch_size",
            "2",
            "--schedule_sampler",
            "loss-second-moment",
            "--microbatch",
            "1",
        ),
    ]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ck = find_checkpoint(run)
    assert ck.step == 3
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3, "only rank 0 writes metrics"
    assert records[-1]["images_seen"] == 3 * 2 * 2


@pytest.mark.slow
def test_compile_trains_the_same_model_and_saves_plain_keys(toy_dir, tmp_path):
    """--compile True (a GPU option) compiles only the training forward: same losses, same checkpoint keys."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(train_argv(toy_dir, eager, "--max_steps", "2")) == 0
    assert main(train_argv(toy_dir, compiled, "--max_steps", "2", "--compile", "True")) == 0
    losses = [
        [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (eager, compiled)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)  # fused kernels round differently
    a, b = weights_of(eager), weights_of(compiled)
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    assert json.loads((compiled / "config.json").read_text())["train"]["compile"] is True
