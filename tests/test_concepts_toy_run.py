"""End to end on toy cells: a sub-feature the class labels hide becomes generable on request.

Toy "neutrophils" have one nucleus lobe (``ONE``, centred) or two (``TWO``, left and right); the
label only says ``neutrophil``. A tiny model is pretrained on the labels, samples neutrophils, the
simulated expert (trained on the subtype tokens of the real file names) assigns plausible samples
to ``neutrophil-one`` / ``neutrophil-two``, and finetuning teaches the two new embedding rows. A
sample requested as a concept is then judged by where its dark nucleus mass lies — a fixed pixel
rule, independent of every trained network.

The margin a broken implementation fails: if the concept rows were not trained, or the concept
labels ignored, both concepts would generate the parent's one/two mixture: the difference in
"one lobe" shares between the two requests would be ~0 (± ~0.12 with 32 samples each), and
neither would move away from the pretrained model's share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clinalign.cli import main
from clinalign.concepts.assign import assign
from clinalign.data.naming import list_images
from clinalign.expert.simulator import ExpertConfig, simulate
from clinalign.training.checkpoint import find_checkpoint

from .conftest import TINY_MODEL

SIZE = 16
LOBES = {"ONE": [(0.0, 0.0, 2.6)], "TWO": [(-3.6, 0.0, 2.0), (3.6, 0.0, 2.0)]}


def toy_cell(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Grey disk on a pale background with dark nucleus lobes; ``kind`` in ONE, TWO, LYMPH."""
    y, x = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    dx, dy = rng.normal(0, 0.4, 2)
    img = np.full((SIZE, SIZE), 225.0 + rng.normal(0, 4))
    img[(x - dx) ** 2 + (y - dy) ** 2 <= 6.5**2] = 170 + rng.normal(0, 6)
    lobes = LOBES.get(kind, [(0.0, 0.0, 4.6)])
    for lx, ly, r in lobes:
        img[(x - dx - lx) ** 2 + (y - dy - ly) ** 2 <= r**2] = 55 + rng.normal(0, 6)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cells(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        for cls, kind in (("neutrophil", "ONE" if i % 2 else "TWO"), ("lymphocyte", "LY")):
            Image.fromarray(toy_cell(kind, rng)).save(folder / f"{cls}_{kind}_{i:05d}.png")


def one_lobe(path: Path) -> bool:
    """Darker at the centre than at the two side-lobe positions: one lobe, else two."""
    a = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    c = SIZE // 2 - 1  # the 2x2 centre block of an even-sized image
    centre = a[c : c + 2, c : c + 2].mean()
    sides = np.mean([a[c : c + 2, round(c + 0.5 + s) - 1 : round(c + 0.5 + s) + 1].mean() for s in (-3.6, 3.6)])
    return bool(centre < sides)


def one_share(folder: Path, cls: str) -> float:
    files = [p for p in list_images(folder) if p.name.startswith(f"{cls}_")]
    return float(np.mean([one_lobe(p) for p in files]))


@pytest.mark.slow
def test_a_hidden_subtype_becomes_generable_on_request_after_finetuning(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # oversubscribed threads on a shared 2-core CPU are many times slower
    try:
        run_toy(tmp_path)
    finally:
        torch.set_num_threads(threads)


def run_toy(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write_cells(real, 200, seed=0)
    # The judging rule reads the hidden subtype of every real neutrophil correctly.
    assert all(one_lobe(p) == ("_ONE_" in p.name) for p in list_images(real) if p.name.startswith("neutrophil_"))

    model = [*TINY_MODEL, "--diffusion_steps", "100", "--noise_schedule", "cosine", "--class_cond", "True"]
    pre = tmp_path / "pre"
    assert (
        main(
            [
                "train",
                "--data_dir",
                str(real),
                "--run_dir",
                str(pre),
                *model,
                "--batch_size",
                "16",
                "--lr",
                "2e-3",
                "--max_steps",
                "400",
                "--ema_rate",
                "0.99",
                "--save_interval",
                "100000",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    samples = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(pre),
                "--num_samples",
                "96",
                "--classes",
                "neutrophil",
                "--sampler",
                "ancestral",
                "--out",
                str(samples),
                "--batch_size",
                "96",
            ]
        )
        == 0
    )
    baseline = one_share(samples, "neutrophil")

    fb = simulate(
        samples,
        tmp_path / "feedback",
        real,
        tau=0.5,
        config=ExpertConfig(image_size=SIZE, width=16, epochs=15, batch_size=16, seed=0, label_from="subtype"),
        concepts={"neutrophil-one": "neutrophil:ONE", "neutrophil-two": "neutrophil:TWO"},
    )
    taught = {c: fb.counts.get(c, {}).get("align", 0) for c in ("neutrophil-one", "neutrophil-two")}
    assert min(taught.values()) >= 10, fb.counts  # the expert found both subtypes among the samples

    mod = assign(samples, fb.out, tmp_path / "mod", ["neutrophil", "lymphocyte"], only_assigned=True).out
    rejected = {p.name for p in fb.out.glob("*/notalign/*.png")}
    with (mod / "rewards.csv").open("w") as f:  # the expert's verdicts as rewards (Γ is tested elsewhere)
        f.write("ID,rewards\n" + "".join(f"{p.name},{0 if p.name in rejected else 1}\n" for p in list_images(mod)))
    ft = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "--resume_checkpoint",
                str(pre),
                "--data_pre_dir",
                str(real),
                "--data_mod_dir",
                str(mod),
                "--run_dir",
                str(ft),
                "--batch_size",
                "16",
                "--lr",
                "2e-3",
                "--max_steps",
                "300",
                "--ema_rate",
                "0.99",
                "--save_interval",
                "100000",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    assert find_checkpoint(ft).class_map.parents["neutrophil-one"] == "neutrophil"

    after = tmp_path / "after"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(ft),
                "--num_samples",
                "64",
                "--classes",
                "neutrophil-one,neutrophil-two",
                "--sampler",
                "ancestral",
                "--out",
                str(after),
                "--batch_size",
                "64",
            ]
        )
        == 0
    )
    one, two = one_share(after, "neutrophil-one"), one_share(after, "neutrophil-two")
    print(
        f"one-lobe share: pretrained neutrophil {baseline:.2f}, requested one {one:.2f}, requested two {two:.2f}; "
        f"expert taught {taught}"
    )
    # Each request moved away from the parent's mixture towards its own subtype, and the two apart.
    # (The expert's own "one" folder is only ~60 % one-lobe by this rule, which caps the first share.)
    assert one - two >= 0.25
    assert one >= baseline + 0.1 and two <= baseline - 0.1
