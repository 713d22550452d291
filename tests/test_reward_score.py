"""`reward score` (the seed's rewards.csv, byte for byte) and `reward select` (what to judge next).

A freshly initialised model (random class embeddings, so the class matters) stands in for a
trained one: these tests are about formats, ordering, atomicity and messages, not accuracy.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clinalign.cli import main as clinalign_main
from clinalign.data.classmap import ClassMap
from clinalign.data.folder import images_to_tensor, load_image
from clinalign.data.naming import read_manifest
from clinalign.data.toy import toy_arrays
from clinalign.data.transforms import save_png
from clinalign.errors import DataError
from clinalign.reward.model import RewardModel, RewardNet
from clinalign.reward.score import score_folder
from clinalign.reward.select import pick_uncertain, select_for_review

CLASSES = ["eosinophil", "lymphocyte"]
SIZE = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = RewardNet(len(CLASSES), 3, 8, "resnet", 2)
    with torch.no_grad():
        net.film.weight.normal_(0, 1.0)
    model = RewardModel(
        net.eval(),
        ClassMap(CLASSES),
        1.7,
        SIZE,
        3,
        {"arch": "resnet", "width": 8, "stem_stride": 2, "hidden": net.proj.out_features, "dropout": 0.1},
    )
    out = tmp_path_factory.mktemp("reward_ckpt")
    model.save(out)
    return out


@pytest.fixture()
def samples(tmp_path) -> Path:
    """12 toy cells in the seed's naming, split over two sub-folders (IDs are file names)."""
    images, labels, _ = toy_arrays(classes=2, per_class=6, size=SIZE, seed=3)  # eosinophil, lymphocyte
    root = tmp_path / "samples"
    for i, (img, y) in enumerate(zip(images, labels)):
        save_png(img, root / ("a" if i % 2 else "b") / f"{CLASSES[y]}_{i:03d}.png")
    return root


def expected_rewards(checkpoint: Path, paths: list[Path], classes: list[str]) -> np.ndarray:
    model = RewardModel.load(checkpoint)
    x = images_to_tensor(np.stack([load_image(p, SIZE, 3) for p in paths]))
    return model.score_names(x, classes).numpy()


def test_rewards_csv_is_the_seeds_format(checkpoint, samples, tmp_path):
    out = tmp_path / "out" / "rewards.csv"
    res = score_folder(checkpoint, samples, out)
    raw = out.read_bytes()
    assert raw.startswith(b"ID,rewards\n")
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode().splitlines()
    assert len(lines) == 1 + 12 == res.n + 1
    ids = [line.split(",")[0] for line in lines[1:]]
    assert ids == sorted(ids)  # deterministic order
    assert all("/" not in i for i in ids)  # file names, not paths
    for line in lines[1:]:
        assert re.fullmatch(r"[a-z]+_\d{3}\.png,[01]\.\d{6}", line), line
    # The values are the calibrated probabilities of the in-memory API.
    paths = sorted(samples.rglob("*.png"), key=lambda p: p.name)
    want = expected_rewards(checkpoint, paths, [p.name.split("_")[0] for p in paths])
    got = np.array([float(line.split(",")[1]) for line in lines[1:]])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(set(np.round(got, 4))) > 1  # the model does respond to its input


def test_detail_csv_beside_it(checkpoint, samples, tmp_path):
    out = tmp_path / "rewards.csv"
    score_folder(checkpoint, samples, out)
    with open(tmp_path / "rewards_detail.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ID", "class", "logit", "probability_uncalibrated", "rewards"]
    main_rows = list(csv.DictReader(open(out, newline="")))
    assert [r["ID"] for r in rows] == [r["ID"] for r in main_rows]
    assert [r["rewards"] for r in rows] == [r["rewards"] for r in main_rows]
    for r in rows:
        z = float(r["logit"])
        assert float(r["probability_uncalibrated"]) == pytest.approx(1 / (1 + np.exp(-z)), abs=2e-6)
        assert float(r["rewards"]) == pytest.approx(1 / (1 + np.exp(-z / 1.7)), abs=2e-6)
    assert {r["class"] for r in rows} == set(CLASSES)


def test_manifest_overrides_the_prefix(checkpoint, samples, tmp_path):
    # Declare every image as lymphocyte: eosinophil-named files must now score as lymphocytes.
    names = sorted(p.name for p in samples.rglob("*.png"))
    (samples / "manifest.csv").write_text("ID,class\n" + "".join(f"{n},lymphocyte\n" for n in names))
    out = tmp_path / "rewards.csv"
    score_folder(checkpoint, samples, out)
    detail = list(csv.DictReader(open(tmp_path / "rewards_detail.csv", newline="")))
    assert {r["class"] for r in detail} == {"lymphocyte"}
    paths = sorted(samples.rglob("*.png"), key=lambda p: p.name)
    want = expected_rewards(checkpoint, paths, ["lymphocyte"] * len(paths))
    np.testing.assert_allclose([float(r["rewards"]) for r in detail], want, atol=1e-6)


def test_duplicate_file_names_are_an_error_and_nothing_is_written(checkpoint, samples, tmp_path):
    first = next((samples / "a").glob("*.png"))
    (samples / "c").mkdir()
    (samples / "c" / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "rewards.csv"
    with pytest.raises(DataError) as err:
        score_folder(checkpoint, samples, out)
    assert str(samples / "a" / first.name) in str(err.value) and str(samples / "c" / first.name) in str(err.value)
    assert list(tmp_path.glob("rewards*")) == [] and not list(tmp_path.glob(".rewards*"))


def test_empty_folder_and_unknown_class(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "rewards.csv"
    with pytest.raises(DataError, match="no .jpg/.jpeg/.png images"):
        score_folder(checkpoint, tmp_path / "empty", out)
    bad = tmp_path / "bad"
    save_png(np.zeros((SIZE, SIZE, 3), np.uint8), bad / "basophil_001.png")
    with pytest.raises(DataError, match=r"basophil_001\.png: declares class 'basophil'.*eosinophil, lymphocyte"):
        score_folder(checkpoint, bad, out)
    assert not out.exists()


def test_failed_run_keeps_the_previous_csv(checkpoint, samples, tmp_path):
    out = tmp_path / "rewards.csv"
    out.write_text("ID,rewards\nold.png,0.5\n")
    (samples / "a" / "lymphocyte_broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="lymphocyte_broken.png: cannot decode"):
        score_folder(checkpoint, samples, out)
    assert out.read_text() == "ID,rewards\nold.png,0.5\n"
    assert not list(tmp_path.glob(".rewards*"))


def test_other_sizes_are_scaled_with_a_warning(checkpoint, tmp_path, caplog):
    root = tmp_path / "big"
    images, _, _ = toy_arrays(classes=1, per_class=2, size=2 * SIZE, seed=0)  # eosinophil
    for i, img in enumerate(images):
        save_png(img, root / f"eosinophil_{i}.png")
    with caplog.at_level(logging.WARNING):
        res = score_folder(checkpoint, root, tmp_path / "r.csv")
    assert res.n == 2
    assert "2 of 2 images are not 16x16" in caplog.text


def test_score_cli(checkpoint, samples, tmp_path, capsys):
    out = tmp_path / "rewards.csv"
    rc = clinalign_main(
        [
            "reward",
            "score",
            "--checkpoint",
            str(checkpoint),
            "--images",
            str(samples),
            "--out",
            str(out),
            "--batch_size",
            "5",
        ]
    )
    assert rc == 0
    assert "wrote 12 rewards" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 13
    rc = clinalign_main(
        ["reward", "score", "--checkpoint", str(tmp_path / "nope"), "--images", str(samples), "--out", str(out)]
    )
    assert rc == 2
    assert "no reward model here" in capsys.readouterr().err


def test_in_memory_api(checkpoint):
    model = RewardModel.load(checkpoint)
    images, _, _ = toy_arrays(classes=2, per_class=2, size=SIZE, seed=5)
    x = images_to_tensor(images)
    p = model.score_names(x, ["eosinophil", "lymphocyte", "eosinophil", "lymphocyte"])
    assert p.shape == (4,) and bool(((p > 0) & (p < 1)).all())
    torch.testing.assert_close(p, model.score_tensors(x, [0, 1, 0, 1]))
    # A sampler running at twice the size is resized, not rejected.
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    torch.testing.assert_close(model.score_tensors(big, [0, 1, 0, 1]), p, atol=0.05, rtol=0)
    with pytest.raises(DataError, match="not in this run's class map"):
        model.score_names(x, ["basophil"] * 4)


# ---------------------------------------------------------------------------- select


def test_pick_uncertain_round_robin():
    rewards = np.array(
        [
            0.51,
            0.9,
            0.45,
            0.02,  # class a: most uncertain 0.51, then 0.45
            0.7,
            0.35,
            0.99,  # class b: 0.35 (0.15 away), then 0.7 (0.2 away)
            0.6,
        ]
    )  # class c: only one
    classes = ["a", "a", "a", "a", "b", "b", "b", "c"]
    picked = pick_uncertain(rewards, classes, 5, seed=0)
    assert sorted(picked[:3]) == [0, 5, 7]  # first round: each class's most uncertain
    assert sorted(picked[3:]) == [2, 4]  # second round: c is exhausted
    # Order within a class is by uncertainty, whatever the rotation.
    for seed in range(5):
        p = pick_uncertain(rewards, classes, 8, seed=seed)
        assert [i for i in p if classes[i] == "a"] == [0, 2, 1, 3]
        assert sorted(p) == list(range(8))
    assert pick_uncertain(rewards, classes, 100) == pick_uncertain(rewards, classes, 8)
    with pytest.raises(DataError):
        pick_uncertain(rewards, classes, 0)


def test_select_for_review(checkpoint, samples, tmp_path):
    out = tmp_path / "next"
    res = select_for_review(checkpoint, samples, 4, out, seed=1)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(res.ids + ["manifest.csv"])
    assert res.per_class == {"eosinophil": 2, "lymphocyte": 2}
    manifest = list(csv.DictReader(open(out / "manifest.csv", newline="")))
    assert list(manifest[0]) == ["ID", "class", "reward"]
    assert read_manifest(out / "manifest.csv") == dict(zip(res.ids, res.classes))
    # They are the most uncertain of each class.
    all_scores = {
        r["ID"]: (r["class"], float(r["rewards"]))
        for r in csv.DictReader(open(score_folder(checkpoint, samples, tmp_path / "r.csv").detail, newline=""))
    }
    for cls in CLASSES:
        ranked = sorted((abs(p - 0.5), i) for i, (c, p) in all_scores.items() if c == cls)
        assert {i for _, i in ranked[:2]} == {i for i, c in zip(res.ids, res.classes) if c == cls}
    # Same file bytes (a copy, same name).
    src = next(samples.rglob(res.ids[0]))
    assert (out / res.ids[0]).read_bytes() == src.read_bytes()
    with pytest.raises(DataError, match="not an empty folder"):
        select_for_review(checkpoint, samples, 2, out)


def test_selected_folder_loads_into_the_review_app(checkpoint, samples, tmp_path):
    pytest.importorskip("sqlalchemy")
    from clinalign.review.db import Store
    from clinalign.review.ingest import add_batch

    out = tmp_path / "next"
    rc = clinalign_main(
        [
            "reward",
            "select",
            "--checkpoint",
            str(checkpoint),
            "--images",
            str(samples),
            "--n",
            "3",
            "--out",
            str(out),
            "--seed",
            "0",
        ]
    )
    assert rc == 0
    summary = add_batch(Store(f"sqlite:///{tmp_path / 'fb.db'}"), out, name="next", qc_share=0.0)
    assert summary.samples == 3
