"""``--init_from DIR``: train and finetune from a diffusers UNet2DModel (a clinalign export or diffusers' own)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from clinalign.cli import main
from clinalign.data.toy import generate
from clinalign.errors import ConfigError
from clinalign.models.unet import CLASS_EMBEDDING_KEY
from clinalign.training.checkpoint import find_checkpoint
from clinalign.training.pretrain import pretrain

from .test_interop_export import exported, pipeline_from, run  # noqa: F401  (fixtures: a tiny run and its export)

FAST = ["--batch_size", "4", "--max_steps", "1"]


def _train(data, run_dir, init, *extra) -> int:
    return main(["train", "--init_from", str(init), "--data_dir", str(data), "--run_dir", str(run_dir), *FAST, *extra])


def _ddim(ck, y, seed=4):
    from clinalign.diffusion.samplers import sample_images

    model, diffusion = ck.build_model(ema=True).eval(), ck.build_diffusion(timestep_respacing="")
    size = ck.model.image_size
    with torch.inference_mode():
        return sample_images(
            model, diffusion, (len(y), ck.channels, size, size), sampler="ddim", steps=5,
            model_kwargs={"y": y} if ck.model.class_cond else None, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip


def _scored_samples(checkpoint, out):
    assert (
        main(["sample", "--checkpoint", str(checkpoint), "--num_samples", "4", "--steps", "3", "--out", str(out)]) == 0
    )
    ids = sorted(p.name for p in out.glob("*.png"))
    (out / "rewards.csv").write_text("ID,rewards\n" + "".join(f"{i},{0.2 + 0.2 * k}\n" for k, i in enumerate(ids)))
    return out


def test_round_trip_export_train_init_from_finetune(run, exported, toy_dir, tmp_path):  # noqa: F811
    r2 = tmp_path / "r2"
    assert _train(toy_dir, r2, exported) == 0
    source, imported = find_checkpoint(run), find_checkpoint(r2 / "init_from")
    assert imported.step == 0 and imported.meta["init_from"] == str(exported.resolve())
    assert imported.class_map.names == source.class_map.names
    ours, theirs = source.weights(ema=True), imported.weights(ema=True)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    y = torch.arange(4)
    assert torch.equal(_ddim(source, y), _ddim(imported, y))  # same architecture, schedule and timestep scale
    trained = find_checkpoint(r2)
    assert trained.step == 1 and trained.meta["init_from"] == str(exported.resolve())
    assert trained.diffusion.diffusion_steps == 100 and trained.diffusion.noise_schedule == "cosine"

    assert _train(toy_dir, r2, exported, "--max_steps", "2") == 0  # the same command resumes
    assert find_checkpoint(r2).step == 2

    samples = _scored_samples(r2, tmp_path / "samples")
    argv = ["finetune", "--resume_checkpoint", str(r2), "--data_pre_dir", str(toy_dir), "--data_mod_dir", str(samples)]
    assert main([*argv, "--run_dir", str(tmp_path / "ft"), "--batch_size", "2", "--max_steps", "1"]) == 0
    tuned = find_checkpoint(tmp_path / "ft")
    assert tuned.step == 1 and tuned.model.diffusers_unet  # the imported architecture travels on


def test_finetune_takes_init_from_too(run, exported, toy_dir, tmp_path):  # noqa: F811
    samples = _scored_samples(run, tmp_path / "s")
    argv = ["finetune", "--init_from", str(exported), "--data_pre_dir", str(toy_dir), "--data_mod_dir", str(samples)]
    assert main([*argv, "--run_dir", str(tmp_path / "ft"), "--batch_size", "2", "--max_steps", "1"]) == 0
    tuned = find_checkpoint(tmp_path / "ft")
    assert tuned.step == 1 and tuned.meta["init_checkpoint"].endswith("init_from/checkpoints/step_000000")


def test_more_classes_grow_the_embedding_from_the_mean_row(exported, tmp_path):  # noqa: F811
    data = tmp_path / "toy5"
    generate(data, classes=5, per_class=2, size=16, seed=1)  # the exported model's 4 classes + basophil
    assert _train(data, tmp_path / "r", exported) == 0
    imported = find_checkpoint(tmp_path / "r" / "init_from")
    old = json.loads((exported / "class_map.json").read_text())["names"]
    assert imported.class_map.names == old + ["basophil"]
    emb = imported.weights(ema=True)[CLASS_EMBEDDING_KEY]
    from safetensors.torch import load_file

    rows = load_file(exported / "unet" / "diffusion_pytorch_model.safetensors")["class_embedding.weight"]
    assert emb.shape[0] == 5 and torch.equal(emb[:4], rows)
    assert torch.allclose(emb[4], rows.mean(dim=0))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """What diffusers' own examples save: a DDPMPipeline folder (unconditional UNet, default scheduler)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("foreign") / "ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(out)
    return out


def test_a_diffusers_trained_model_starts_as_itself(foreign, toy_dir, tmp_path):
    """Unconditional diffusers model + labelled data: zero class rows, so the start is exactly that model."""
    from diffusers import UNet2DModel

    assert _train(toy_dir, tmp_path / "r", foreign, "--class_cond", "True") == 0
    ck = find_checkpoint(tmp_path / "r" / "init_from")
    d = ck.diffusion
    assert (d.diffusion_steps, d.noise_schedule, d.predict_xstart, d.rescale_timesteps) == (
        1000,
        "linear",
        False,
        False,
    )
    assert ck.model.sigma_small and not ck.model.learn_sigma and ck.model.image_size == 16
    assert torch.equal(ck.weights(ema=True)[CLASS_EMBEDDING_KEY], torch.zeros(4, 128))
    model = ck.build_model(ema=True).eval()
    original = UNet2DModel.from_pretrained(foreign / "unet").eval()
    x, t = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([999, 500, 10, 0])
    with torch.no_grad():
        assert torch.equal(model(x, t, y=torch.arange(4)), original(x, t).sample)


def _gray(src, dst):
    dst.mkdir()
    for p in src.glob("*.png"):
        Image.open(p).convert("L").save(dst / p.name)
    return dst


@pytest.mark.parametrize(
    "case, match",
    [
        ("gray data", "pass --rgb True"),
        ("--class_cond False", "train it with --class_cond True"),
        ("--image_size 32", "--image_size 32 .*has 16"),
        ("--num_channels 64", "brings its own architecture; drop --num_channels"),
        ("--resume_checkpoint", "both name a starting point"),
        ("no model", "holds no diffusers UNet"),
        ("flow_prediction", "predicts 'flow_prediction'"),
        ("rows without names", "no class_map.json says which row is which"),
    ],
)
def test_what_does_not_fit_is_a_clear_error_and_writes_nothing(case, match, exported, toy_dir, tmp_path):  # noqa: F811
    args = {"data_dir": str(toy_dir), "run_dir": str(tmp_path / "r"), "init_from": str(exported), "max_steps": 1}
    if case == "gray data":
        args["data_dir"] = str(_gray(toy_dir, tmp_path / "gray"))
    elif case.startswith("--"):
        flag, _, value = case.partition(" ")
        args[flag[2:]] = {"False": False, "": str(tmp_path)}.get(value, value if not value.isdigit() else int(value))
    elif case == "no model":
        args["init_from"] = str(tmp_path)
    elif case in ("flow_prediction", "rows without names"):
        import shutil

        copy = tmp_path / "copy"
        shutil.copytree(exported, copy)
        if case == "flow_prediction":
            cfg = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
            (copy / "scheduler" / "scheduler_config.json").write_text(
                json.dumps({**cfg, "prediction_type": "flow_prediction"})
            )
        else:  # 4 unnamed rows, 2 classes of data
            (copy / "class_map.json").unlink()
            data = tmp_path / "two"
            generate(data, classes=2, per_class=2, size=16)
            args["data_dir"] = str(data)
        args["init_from"] = str(copy)
    with pytest.raises(ConfigError, match=match):
        pretrain(args)
    assert not (tmp_path / "r").exists()


def test_a_v_prediction_model_goes_out_and_comes_back_as_itself(toy_dir, tmp_path):
    """--prediction v: exported as v_prediction, sampled alike by the pipeline, and imported as v."""
    from clinalign.interop.export import export_diffusers

    from .conftest import TINY_DIFFUSION, TINY_MODEL

    v_run = tmp_path / "v"
    argv = ["train", "--data_dir", str(toy_dir), "--run_dir", str(v_run), *TINY_MODEL, *TINY_DIFFUSION]
    assert main([*argv, "--class_cond", "True", "--prediction", "v", "--batch_size", "4", "--max_steps", "2"]) == 0
    out = export_diffusers(v_run, tmp_path / "export")
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    assert _train(toy_dir, tmp_path / "again", out) == 0
    source, imported = find_checkpoint(v_run), find_checkpoint(tmp_path / "again" / "init_from")
    assert imported.diffusion.prediction == "v"
    y = torch.arange(4)
    ours = _ddim(source, y)
    assert torch.equal(ours, _ddim(imported, y))
    pipe = pipeline_from(out)
    pipe.set_sampler("ddim")
    g = torch.Generator().manual_seed(4)
    theirs = pipe(class_labels=y.tolist(), num_inference_steps=5, generator=g, output_type="pt").images * 2 - 1
    assert (ours.clamp(-1, 1) - theirs).abs().max().item() < 1e-4
