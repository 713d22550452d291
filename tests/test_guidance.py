"""--objective guidance: rejected images train a CLASS-rejected class, sampling steers away from it."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
from torch import nn

from clinalign.cli import main
from clinalign.data.naming import label_of
from clinalign.errors import ConfigError
from clinalign.sampling.guidance import RejectionGuidance, guided, parse_interval
from clinalign.sampling.sample import SampleConfig, generate, sample_folder
from clinalign.training.checkpoint import find_checkpoint

from .test_finetune import finetune_argv, scored_folder

EMB = "unet.class_embedding.weight"


class PerClass(nn.Module):
    """out = (1 + y) on every channel: guidance's arithmetic is visible in the output."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        return torch.ones(x.shape[0], 6, *x.shape[2:]) * (1.0 + y.float()).view(-1, 1, 1, 1)


def test_guidance_steers_the_prediction_away_from_the_rejected_class_and_keeps_the_variance():
    model = RejectionGuidance(PerClass(), negative=torch.tensor([2, 3, 2, 3]), scale=1.5, channels=3)
    out = model(torch.zeros(2, 3, 4, 4), torch.zeros(2), y=torch.tensor([0, 1]))
    # class 0 (out 1) against its rejected class 2 (out 3): 1 + 1.5 * (1 - 3) = -2; class 1: 2 + 1.5 * (2 - 4) = -1
    assert torch.equal(out[:, :3, 0, 0], torch.tensor([[-2.0] * 3, [-1.0] * 3]))
    assert torch.equal(out[:, 3:, 0, 0], torch.tensor([[1.0] * 3, [2.0] * 3]))  # learned variance: out(c)


class Counting(PerClass):
    """PerClass that records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return super().forward(x, t, y)


def test_an_interval_guides_only_the_noise_levels_inside_it_and_costs_one_pass_outside():
    inner = Counting()
    model = RejectionGuidance(inner, torch.tensor([2, 3, 2, 3]), 1.5, 3, interval=(0.25, 0.5), t_max=1000.0)
    x, y = torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])
    outside = model(x, torch.full((2,), 900.0), y=y)
    assert torch.equal(outside[:, :3, 0, 0], torch.tensor([[1.0] * 3, [2.0] * 3])) and inner.batches == [2]
    inside = model(x, torch.full((2,), 400.0), y=y)
    assert torch.equal(inside[:, :3, 0, 0], torch.tensor([[-2.0] * 3, [-1.0] * 3])) and inner.batches == [2, 4]
    mixed = model(x, torch.tensor([400.0, 100.0]), y=y)  # a batch straddling the edge: each row on its own
    assert torch.equal(mixed[:, :3, 0, 0], torch.tensor([[-2.0] * 3, [2.0] * 3]))


@pytest.mark.parametrize("text", ["0.6,0.1", "0.5", "a,b", "-0.1,0.5", "0.2,1.5", "0.3,0.3"])
def test_a_bad_guidance_interval_is_a_clear_error(text):
    with pytest.raises(ConfigError, match=r"--guidance_interval .*LO,HI with 0 <= LO < HI <= 1"):
        parse_interval(text)


def test_sampling_in_an_interval_differs_from_both_ends_and_resumes_only_at_its_own(guided_run, tmp_path):
    ck = find_checkpoint(guided_run[1])
    cfg = SampleConfig(num_samples=4, steps=3, batch_size=4, guidance=2.0)

    def pngs(folder, **kw):
        sample_folder(ck, folder, dataclasses.replace(cfg, **kw))
        return sorted(p.read_bytes() for p in folder.glob("*.png"))

    every, never = pngs(tmp_path / "every"), pngs(tmp_path / "never", guidance=0.0)
    part = pngs(tmp_path / "part", guidance_interval="0.6,1")  # dpm++ at 3 steps: t/T 0.99, 0.98, 0.51
    assert part != every and part != never
    with (tmp_path / "part" / "manifest.csv").open() as f:
        assert {row["guidance_interval"] for row in csv.DictReader(f)} == {"0.6,1"}
    assert pngs(tmp_path / "all", guidance_interval="0,1") == every  # the whole range is plain guidance
    with pytest.raises(ConfigError, match="another setting"):
        sample_folder(ck, tmp_path / "part", dataclasses.replace(cfg, num_samples=8))
    assert len(list((tmp_path / "part").glob("*.png"))) == 4


@pytest.fixture(scope="module")
def guided_run(pretrained, toy_dir, tmp_path_factory):
    """Every eosinophil rejected, every other image accepted; 3 finetune steps."""
    tmp = tmp_path_factory.mktemp("guidance")
    mod = scored_folder(toy_dir, tmp / "mod", lambda p: 0.0 if label_of(p.name) == "eosinophil" else 1.0)
    run = tmp / "ft"
    argv = finetune_argv(pretrained, toy_dir, mod, run, "--objective", "guidance", "--max_steps", "3")
    assert main([*argv, "--guidance_scale", "2.0"]) == 0
    return mod, run


def test_rejected_images_train_the_rejected_class_and_nothing_else_does(pretrained, guided_run):
    pre, ck = find_checkpoint(pretrained), find_checkpoint(guided_run[1])
    names = pre.class_map.names
    assert ck.guidance == {n: f"{n}-rejected" for n in names}
    assert ck.class_map.names == names + [f"{n}-rejected" for n in names]
    assert ck.sample_classes == names and ck.meta["guidance_scale"] == 2.0
    emb, start = ck.weights(ema=False)[EMB], pre.weights(ema=True)[EMB]
    for name in names:
        row, rejected = emb[ck.class_map.index(name)], emb[ck.class_map.index(f"{name}-rejected")]
        torch.testing.assert_close(row, start[pre.class_map.index(name)])  # existing rows stay frozen
        moved = not torch.allclose(rejected, row)
        assert moved == (name == "eosinophil"), name  # only the class with rejected images taught its row
    record = json.loads((guided_run[1] / "config.json").read_text())
    assert record["objective"] == "guidance" and record["guidance"] == ck.guidance


def test_sampling_draws_the_real_classes_guided_at_the_finetuned_strength(guided_run, tmp_path):
    ck = find_checkpoint(guided_run[1])
    cfg = SampleConfig(num_samples=4, steps=3, batch_size=4)
    result = sample_folder(ck, tmp_path / "default", cfg)
    assert set(result.per_class) == set(ck.sample_classes)  # no "-rejected" class is drawn
    labels = torch.tensor([ck.class_map.index(n) for n in ck.sample_classes])
    shape = (4, ck.channels, ck.model.image_size, ck.model.image_size)
    model = ck.build_model()

    def draw(m):
        gen = torch.Generator().manual_seed(0)
        return generate(
            m, ck.build_diffusion(""), labels, shape, sampler="dpm++", steps=3, generator=gen, class_cond=True
        )

    plain = draw(model)
    steered = draw(RejectionGuidance(model, torch.tensor([4, 5, 6, 7, 4, 5, 6, 7]), 2.0, ck.channels))
    assert not torch.allclose(plain, steered)
    off = sample_folder(ck, tmp_path / "off", SampleConfig(num_samples=4, steps=3, batch_size=4, guidance=0.0))
    on = sample_folder(ck, tmp_path / "on", SampleConfig(num_samples=4, steps=3, batch_size=4, guidance=2.0))
    default_bytes = sorted(p.read_bytes() for p in result.out.glob("*.png"))
    assert default_bytes == sorted(p.read_bytes() for p in on.out.glob("*.png"))
    assert default_bytes != sorted(p.read_bytes() for p in off.out.glob("*.png"))


def test_a_second_guidance_round_keeps_the_pairs_and_adds_no_rows(pretrained, toy_dir, guided_run, tmp_path):
    mod, first = guided_run
    ck = find_checkpoint(first)
    argv = finetune_argv(ck.path, toy_dir, mod, tmp_path / "r2", "--objective", "guidance", "--max_steps", "1")
    assert main(argv) == 0
    second = find_checkpoint(tmp_path / "r2")
    assert second.class_map.names == ck.class_map.names and second.guidance == ck.guidance
    assert second.meta["guidance_scale"] == 1.0  # this round's own flag (its default)


def test_resuming_a_sample_folder_at_another_guidance_strength_is_refused(guided_run, tmp_path):
    ck = find_checkpoint(guided_run[1])
    out = tmp_path / "s"
    sample_folder(ck, out, SampleConfig(num_samples=4, steps=3, batch_size=4, guidance=2.0))
    sample_folder(ck, out, SampleConfig(num_samples=8, steps=3, batch_size=4))  # 2.0 is the checkpoint's own
    assert len(list(out.glob("*.png"))) == 8
    with pytest.raises(ConfigError, match="another setting"):
        sample_folder(ck, out, SampleConfig(num_samples=12, steps=3, batch_size=4, guidance=0.5))
    assert len(list(out.glob("*.png"))) == 8  # nothing drawn at the other strength


def test_a_synthetic_image_declaring_a_rejected_class_is_a_clear_error(guided_run, toy_dir, tmp_path, capsys):
    """A second round (its model knows eosinophil-rejected) given an image named for that class."""
    mod = scored_folder(toy_dir, tmp_path / "mod", lambda p: 1.0)
    first = sorted(mod.glob("eosinophil_*.png"))[0]
    renamed = first.with_name(first.name.replace("eosinophil_", "eosinophil-rejected_"))
    first.rename(renamed)
    csv = mod / "rewards.csv"
    csv.write_text(csv.read_text().replace(first.name, renamed.name))
    run = tmp_path / "ft"
    argv = finetune_argv(guided_run[1], toy_dir, mod, run, "--objective", "guidance", "--max_steps", "1")
    assert main(argv) == 2
    assert renamed.name in capsys.readouterr().err
    assert renamed.exists() and not list(run.rglob("*.pt"))  # nothing lost, nothing trained


def test_the_exported_pipeline_guides_as_clinalign_does(guided_run, tmp_path):
    from clinalign.diffusion.samplers import sample_images

    from .test_interop_export import pipeline_from

    ck = find_checkpoint(guided_run[1])
    assert main(["export", str(guided_run[1]), str(tmp_path / "model"), "--format", "diffusers"]) == 0
    pipe = pipeline_from(tmp_path / "model")
    assert pipe.config.guidance == ck.guidance and pipe.config.guidance_scale == 2.0
    model, diffusion = ck.build_model(ema=True).eval(), ck.build_diffusion(timestep_respacing="")
    y = torch.tensor([ck.class_map.index(n) for n in ck.sample_classes])
    pipe.set_sampler("dpm++")

    def theirs(**kw):
        images = pipe(
            class_labels=y.tolist(), num_inference_steps=6, generator=torch.Generator().manual_seed(5),
            output_type="pt", **kw,
        ).images  # fmt: skip
        return images * 2 - 1

    with torch.inference_mode():
        ours = sample_images(
            guided(model, ck, -1), diffusion, (4, ck.channels, 16, 16), sampler="dpm++", steps=6,
            model_kwargs={"y": y}, generator=torch.Generator().manual_seed(5),
        ).clamp(-1, 1)  # fmt: skip
    assert (ours - theirs()).abs().max().item() < 1e-4
    assert (ours - theirs(guidance_scale=0.0)).abs().max().item() > 1e-2  # guidance changes the images


def test_accepted_samples_weigh_what_guidance_accepted_weight_says(tmp_path):
    """At 0 the classes learn from the real images alone; the rejected images always train their class."""
    from types import SimpleNamespace

    from clinalign.training.config import FinetuneConfig
    from clinalign.training.finetune import synthetic_weights, write_rewards_csv

    write_rewards_csv(tmp_path / "rewards.csv", {"monocyte_0.png": 1.0, "monocyte_1.png": 0.0, "monocyte_2.png": 0.7})
    synthetic = SimpleNamespace(paths=[tmp_path / f"monocyte_{i}.png" for i in range(3)], labels=[0, 0, 0])
    for accepted, expected in ((1.0, [1.0, 1.0, 1.0]), (0.0, [0.0, 1.0, 0.0]), (0.5, [0.5, 1.0, 0.5])):
        ft = FinetuneConfig(objective="guidance", guidance_accepted_weight=accepted)
        raw, weights, mode, _ = synthetic_weights(ft, synthetic, tmp_path)
        assert mode == "guidance" and weights.tolist() == expected and raw.tolist() == [1.0, 0.0, 0.7]
