"""``clinalign export --format diffusers``: a folder diffusers loads alone, sampling what clinalign samples."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clinalign.cli import main
from clinalign.errors import CheckpointError, ConfigError
from clinalign.interop.export import export_diffusers
from clinalign.sampling.sample import batch_generator, generate
from clinalign.training.checkpoint import find_checkpoint

from .conftest import TINY_DIFFUSION, TINY_MODEL, subprocess_env

# Runs in a fresh interpreter that cannot import clinalign (a meta-path hook refuses it): only
# torch and diffusers, the pipeline class coming from the exported folder's own file.
LOAD_AND_SAMPLE = """
import json, sys

class NoClinalign:
    def find_spec(self, name, path=None, target=None):
        if name == "clinalign" or name.startswith("clinalign."):
            raise ImportError("clinalign must not be imported here")

sys.meta_path.insert(0, NoClinalign())
import numpy as np
import torch
from diffusers import DiffusionPipeline

folder, labels, seed, steps, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
pipe.set_sampler("ddim")
images = pipe(class_labels=labels, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
              output_type="pt").images
np.save(out, images.numpy())
assert not [m for m in sys.modules if m.split(".")[0] == "clinalign"]
print(type(pipe).__name__, type(pipe.scheduler).__name__, pipe.config.class_names)
"""


def pipeline_from(folder):
    """The export's ClinalignPipeline built from its parts (no custom code copied into the HF modules cache)."""
    import diffusers

    from clinalign.interop.pipeline_clinalign import ClinalignPipeline

    index = json.loads((folder / "model_index.json").read_text())
    pipe = ClinalignPipeline(
        unet=diffusers.UNet2DModel.from_pretrained(folder / "unet"),
        scheduler=getattr(diffusers, index["scheduler"][1]).from_pretrained(folder / "scheduler"),
        rescale_timesteps=index["rescale_timesteps"],
        class_names=index["class_names"],
        guidance=index.get("guidance"),
        guidance_scale=index.get("guidance_scale", 0.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def run(toy_dir, tmp_path_factory):
    """A tiny class-conditional eps-predicting run with a learned-range variance (2 steps)."""
    out = tmp_path_factory.mktemp("interop") / "run"
    argv = [
        "train",
        "--data_dir",
        str(toy_dir),
        "--run_dir",
        str(out),
        *TINY_MODEL,
        *TINY_DIFFUSION,
        "--recipe",
        "seed",
    ]
    assert main([*argv, "--class_cond", "True", "--learn_sigma", "True", "--batch_size", "4", "--max_steps", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "model"
    assert main(["export", str(run), str(out), "--format", "diffusers"]) == 0
    return out


def test_export_writes_the_diffusers_layout(exported, run):
    names = {p.name for p in exported.iterdir()}
    assert {"model_index.json", "pipeline_clinalign.py", "unet", "scheduler", "class_map.json", "README.md"} <= names
    assert (exported / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_clinalign", "ClinalignPipeline"]
    ck = find_checkpoint(run)
    assert index["class_names"] == ck.class_map.names and index["rescale_timesteps"] is True
    scheduler = json.loads((exported / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["variance_type"] == "learned_range" and scheduler["prediction_type"] == "epsilon"
    assert scheduler["num_train_timesteps"] == 100 and scheduler["beta_schedule"] == "squaredcos_cap_v2"
    unet = json.loads((exported / "unet" / "config.json").read_text())
    assert unet["num_class_embeds"] == len(ck.class_map) and unet["out_channels"] == 6


def test_exported_scheduler_has_the_runs_betas(exported, run):
    from diffusers import DDPMScheduler

    ck = find_checkpoint(run)
    betas = ck.build_diffusion(timestep_respacing="").betas
    theirs = DDPMScheduler.from_pretrained(exported / "scheduler").betas
    assert torch.equal(theirs, torch.tensor(betas, dtype=torch.float32))


def _clinalign_sample(run, out, seed, steps, n):
    argv = ["sample", "--checkpoint", str(run), "--sampler", "ddim", "--steps", str(steps), "--out", str(out)]
    assert main([*argv, "--num_samples", str(n), "--batch_size", str(n), "--seed", str(seed)]) == 0
    with (out / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def test_fresh_process_with_only_diffusers_samples_what_clinalign_samples(exported, run, tmp_path):
    """DDIM 10 steps, same seed: the exported folder, loaded with diffusers alone, gives clinalign's samples."""
    seed, steps, n = 3, 10, 4
    rows = _clinalign_sample(run, tmp_path / "samples", seed, steps, n)
    labels = [r["class"] for r in rows]  # batch 0's classes in the order clinalign drew them
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env["PYTHONPATH"] = ""  # nothing of the repository on the path; the import hook guards the rest
    out = tmp_path / "pipe.npy"
    noise_seed = batch_generator(seed, 0).initial_seed()  # the generator clinalign draws batch 0's noise from
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AND_SAMPLE,
            str(exported),
            json.dumps(labels),
            str(noise_seed),
            str(steps),
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ClinalignPipeline DDIMScheduler" in res.stdout
    theirs = torch.from_numpy(np.load(out)) * 2 - 1  # [0, 1] -> [-1, 1]

    ck = find_checkpoint(run)
    model, diffusion = ck.build_model(ema=True).eval(), ck.build_diffusion(timestep_respacing="")
    y = torch.tensor(ck.class_map.indices(labels))
    ours = generate(
        model, diffusion, y, (n, 3, 16, 16), sampler="ddim", steps=steps,
        generator=batch_generator(seed, 0), class_cond=True,
    )  # fmt: skip
    assert (ours - theirs).abs().max().item() < 1e-4
    # ... and the PNGs `clinalign sample` wrote are those images (up to rounding at the last level).
    pngs = np.stack([np.asarray(Image.open(tmp_path / "samples" / r["ID"])) for r in rows]).astype(int)
    pipe_u8 = np.round(theirs.permute(0, 2, 3, 1).numpy() * 127.5 + 127.5).astype(int)
    assert np.abs(pngs - pipe_u8).max() <= 1


def test_every_sampler_of_the_pipeline_matches_clinalign(exported, run):
    """In-process: set_sampler("ddim" | "dpm++" | "ancestral") reproduces sample_images with the same noise."""
    from clinalign.diffusion.samplers import sample_images

    pipe = pipeline_from(exported)
    ck = find_checkpoint(run)
    model, diffusion = ck.build_model(ema=True).eval(), ck.build_diffusion(timestep_respacing="")
    y = torch.tensor([0, 1, 2, 3])
    for sampler, steps in (("ddim", 20), ("dpm++", 8), ("ancestral", 25)):
        with torch.inference_mode():
            ours = sample_images(
                model, diffusion, (4, 3, 16, 16), sampler=sampler, steps=steps, model_kwargs={"y": y},
                generator=torch.Generator().manual_seed(5),
            ).clamp(-1, 1)  # fmt: skip
        pipe.set_sampler(sampler)
        theirs = pipe(
            class_labels=y.tolist(), num_inference_steps=steps, generator=torch.Generator().manual_seed(5),
            output_type="pt",
        ).images * 2 - 1  # fmt: skip
        assert (ours - theirs).abs().max().item() < 1e-4, sampler


def test_export_refuses_a_non_empty_folder_and_writes_nothing(run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_diffusers(run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(run), str(out)]) == 2


def test_export_of_a_run_without_checkpoint_fails_cleanly(tmp_path):
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    (empty_run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        export_diffusers(empty_run, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no OUT, no temporary sibling


def test_a_failure_while_writing_leaves_nothing(run, tmp_path, monkeypatch):
    import clinalign.interop.export as export

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export.shutil, "copyfile", broken)
    with pytest.raises(OSError, match="disk full"):
        export_diffusers(run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
