"""Reward-model inputs: class checks, one-sided feedback, sizes, the review database, trunks, seeds."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clinalign.data.toy import generate
from clinalign.errors import CheckpointError, ConfigError, DataError
from clinalign.models.classifier import build_classifier, save_classifier
from clinalign.reward.data import load_reward_data, wrong_classes
from clinalign.reward.model import REWARD_FILE, RewardModel
from clinalign.reward.toy import toy_feedback, write_feedback
from clinalign.reward.train import TrainConfig, build_net, epoch_plan, train_reward

SIZE = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folders(tmp_path) -> dict[str, Path]:
    """2 real classes x 6 images and 2 x 6 judged images at 16 px."""
    generate(tmp_path / "train", classes=2, per_class=6, size=SIZE, seed=0, layout="imagenet")
    generate(tmp_path / "val", classes=2, per_class=3, size=SIZE, seed=1, layout="imagenet")
    write_feedback(toy_feedback(classes=2, per_class=6, size=SIZE, seed=2), tmp_path / "anno")
    write_feedback(toy_feedback(classes=2, per_class=4, size=SIZE, seed=3), tmp_path / "val_anno")
    return {
        "train_dir": tmp_path / "train",
        "train_anno_dir": tmp_path / "anno",
        "val_dir": tmp_path / "val",
        "val_anno_dir": tmp_path / "val_anno",
    }


def load(f: dict[str, Path], **kw):
    return load_reward_data(f["train_dir"], f["train_anno_dir"], f["val_dir"], f["val_anno_dir"], **kw)


def test_reads_all_four_folders(folders):
    data = load(folders)
    assert data.class_map.names == ["lymphocyte", "neutrophil"] == data.real_classes
    assert data.image_size == SIZE and data.channels == 3
    assert len(data.train_real) == 12 and len(data.train_feedback) == 12
    assert set(data.train_feedback.plausible.tolist()) == {0, 1}


def test_feedback_class_without_real_images_warns(folders, caplog):
    anno = folders["train_anno_dir"]
    shutil.copytree(anno / "lymphocyte", anno / "monocyte")
    shutil.copytree(anno / "neutrophil", anno / "neutrophil-band")
    with caplog.at_level(logging.WARNING):
        data = load(folders)
    assert "class 'monocyte' has feedback but no real images" in caplog.text
    assert "a concept under 'neutrophil'" in caplog.text
    assert data.class_map.names == ["lymphocyte", "monocyte", "neutrophil", "neutrophil-band"]
    assert data.class_map.parents["neutrophil-band"] == "neutrophil"
    assert data.real_classes == ["lymphocyte", "neutrophil"]  # wrong classes come only from these


def test_misspelt_feedback_class_is_an_error(folders):
    anno = folders["train_anno_dir"]
    (anno / "lymphocyte").rename(anno / "lymphocite")
    with pytest.raises(
        DataError,
        match=r"lymphocite: class 'lymphocite' has no real images.*rename the folder to "
        r"'lymphocyte'",
    ):
        load(folders)


def test_invalid_class_folder_name(folders):
    anno = folders["train_anno_dir"]
    (anno / "lymphocyte").rename(anno / "lympho_cyte")
    with pytest.raises(DataError, match=r"lympho_cyte.*contains '_'"):
        load(folders)


def test_one_sided_feedback(folders, caplog):
    anno = folders["train_anno_dir"]
    for p in (anno / "lymphocyte" / "notalign").iterdir():
        p.unlink()
    with caplog.at_level(logging.WARNING):
        load(folders)
    assert "lymphocyte/notalign: empty" in caplog.text and "one-sided feedback" in caplog.text
    shutil.rmtree(anno / "neutrophil" / "notalign")
    with pytest.raises(DataError, match="every judged image in the training feedback is plausible"):
        load(folders, require_both=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data = load(folders)  # without --require_both: a warning, and training can go on
    assert "every judged image" in caplog.text
    assert set(data.train_feedback.plausible.tolist()) == {1}


def test_other_image_sizes_warn_once(folders, caplog):
    first = sorted((folders["train_dir"] / "lymphocyte").iterdir())[0]
    Image.open(first).resize((2 * SIZE, 3 * SIZE)).save(folders["train_dir"] / "lymphocyte" / "z_big.png")
    Image.open(first).resize((3 * SIZE, 3 * SIZE)).save(folders["val_dir"] / "lymphocyte" / "z_big2.png")
    with caplog.at_level(logging.WARNING):
        data = load(folders)
    warnings = [r for r in caplog.records if "are not 16x16" in r.getMessage()]
    assert len(warnings) == 1 and "2 of" in warnings[0].getMessage()
    assert data.train_real.images.shape[1:] == (SIZE, SIZE, 3)
    # Default size: the first real image's.
    assert load(folders, image_size=8).image_size == 8


def test_validation_class_unknown_to_training(folders):
    shutil.copytree(folders["val_anno_dir"] / "lymphocyte", folders["val_anno_dir"] / "basophil")
    with pytest.raises(DataError, match=r"basophil: class 'basophil' of the validation feedback is not among"):
        load(folders)


def test_missing_folder_and_missing_verdict_folders(folders, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load({**folders, "train_dir": tmp_path / "nope"})
    shutil.rmtree(folders["train_anno_dir"] / "lymphocyte" / "align")
    shutil.rmtree(folders["train_anno_dir"] / "lymphocyte" / "notalign")
    with pytest.raises(DataError, match="neither an 'align' nor a 'notalign'"):
        load(folders)


def test_wrong_classes_are_wrong_and_uniform():
    rng = np.random.default_rng(0)
    true = np.repeat([0, 2, 5], 3000)
    w = wrong_classes(true, np.array([0, 2, 5, 7]), rng)
    assert not np.any(w == true)
    for c in (0, 2, 5):
        counts = np.bincount(w[true == c], minlength=8)[[0, 2, 5, 7]]
        others = counts[counts > 0]
        assert len(others) == 3 and others.min() > 900  # ~1000 each
    assert (wrong_classes(np.array([3, 3]), np.array([3]), rng) == -1).all()


def test_epoch_plan_balances_sources_and_verdicts():
    rng = np.random.default_rng(0)
    plausible = np.r_[np.ones(10, int), np.zeros(30, int)]
    real, syn = epoch_plan(100, plausible, 0.5, rng)
    pairs = 2 * 100 + 40
    assert 2 * len(real) == pairs / 2  # half the pairs are real (two per image)
    assert (plausible[syn] == 1).sum() == (plausible[syn] == 0).sum() == pairs / 4
    real, syn = epoch_plan(100, None, 0.5, rng)
    assert len(real) == 100 and len(syn) == 0
    real, syn = epoch_plan(0, plausible, 0.5, rng)
    assert len(real) == 0 and len(syn) == 40


def test_training_is_deterministic(folders, tmp_path):
    from safetensors.torch import load_file

    cfg = dict(**folders, epochs=2, batch_size=8, seed=3)
    train_reward(TrainConfig(**cfg, save_dir=tmp_path / "a"))
    train_reward(TrainConfig(**cfg, save_dir=tmp_path / "b"))
    a, b = load_file(tmp_path / "a" / REWARD_FILE), load_file(tmp_path / "b" / REWARD_FILE)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_real_images_only_without_validation(folders, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res = train_reward(
            TrainConfig(train_dir=folders["train_dir"], save_dir=tmp_path / "ck", epochs=1, batch_size=8)
        )
    assert "no validation data" in caplog.text
    assert res.model.temperature == 1.0 and res.report["validation"] is None


def test_bad_config(folders, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        train_reward(TrainConfig(**folders, train_anno_db="sqlite:///x.db", save_dir=tmp_path))
    with pytest.raises(ConfigError, match="--train_dir"):
        train_reward(TrainConfig(train_dir=None, save_dir=tmp_path))
    with pytest.raises(ConfigError, match="--batch_size"):
        train_reward(TrainConfig(**folders, batch_size=1, save_dir=tmp_path))


def test_init_trunk_from_a_classifier(folders, tmp_path):
    clf = build_classifier("resnet", 3, 5, width=8)
    with torch.no_grad():
        for p in clf.parameters():
            p.normal_()
    path = save_classifier(
        tmp_path / "clf.safetensors", clf, {"arch": "resnet", "channels": 3, "num_outputs": 5, "width": 8}
    )
    data = load(folders)
    net, meta = build_net(TrainConfig(**folders, init_trunk=path), data)
    assert meta["width"] == 8 and meta["stem_stride"] == 1
    torch.testing.assert_close(net.trunk.stem[0].weight, clf.stem[0].weight)
    with pytest.raises(CheckpointError, match="pass --arch resnet --width 8"):
        build_net(TrainConfig(**folders, init_trunk=path, width=16), data)
    with pytest.raises(CheckpointError, match="a classifier, not a reward model"):
        RewardModel.load(path)


def test_feedback_straight_from_the_review_database(folders, tmp_path):
    pytest.importorskip("sqlalchemy")
    from sqlalchemy import select

    from clinalign.review import queue
    from clinalign.review.db import SAMPLE, Store, User
    from clinalign.review.db import Image as DbImage
    from clinalign.review.ingest import add_batch, add_user

    # The judged images as an unjudged sample batch, then one reviewer's verdicts.
    samples = tmp_path / "samples"
    truth = {}
    for p in folders["train_anno_dir"].rglob("*.png"):
        (samples / p.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, samples / p.name)
        truth[p.name] = "plausible" if p.parent.name == "align" else "implausible"
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(url)
    add_batch(store, samples, name="b1", qc_share=0.0)
    add_user(store, "alice")
    with store.write() as s:
        rid = s.scalar(select(User.id).where(User.name == "alice"))
        for image in s.scalars(select(DbImage).where(DbImage.kind == SAMPLE)):
            queue.record_verdict(
                s, rid, request_id=str(uuid.uuid4()), item=image.uid, verdict=truth[image.filename], require_slot=False
            )
    cfg = TrainConfig(
        train_dir=folders["train_dir"],
        train_anno_db=url,
        val_dir=folders["val_dir"],
        val_anno_dir=folders["val_anno_dir"],
        save_dir=tmp_path / "ck",
        epochs=1,
        batch_size=8,
    )
    res = train_reward(cfg)
    fb = res.report["data"]["train_feedback"]
    assert fb["images"] == len(truth)
    assert fb["plausible"] == sum(v == "plausible" for v in truth.values())
    # A database with no verdicts is a clear error, not an empty training set.
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(empty)
    with pytest.raises(DataError, match="no decided judgements"):
        train_reward(TrainConfig(train_dir=folders["train_dir"], train_anno_db=empty, save_dir=tmp_path / "ck2"))


def test_review_database_that_does_not_exist(folders, tmp_path):
    pytest.importorskip("sqlalchemy")
    missing = tmp_path / "typo.db"
    with pytest.raises(DataError, match="no such database file"):
        train_reward(
            TrainConfig(train_dir=folders["train_dir"], train_anno_db=f"sqlite:///{missing}", save_dir=tmp_path / "ck")
        )
    assert not missing.exists()
    not_review = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(not_review).execute("create table t (x int)").connection.commit()
    with pytest.raises(DataError, match="cannot read judgements"):
        train_reward(
            TrainConfig(
                train_dir=folders["train_dir"], train_anno_db=f"sqlite:///{not_review}", save_dir=tmp_path / "ck"
            )
        )


def test_ratio_subsamples_feedback_per_class(folders):
    full = load(folders)
    half = load(folders, feedback_fraction=0.5)
    for c in range(2):
        assert (half.train_feedback.classes == c).sum() == (full.train_feedback.classes == c).sum() // 2
    with pytest.raises(ConfigError, match="--ratio"):
        load(folders, feedback_fraction=1.5)


def test_report_config_hides_database_password(tmp_path):
    cfg = TrainConfig(train_dir=tmp_path, train_anno_db="postgresql+psycopg://ann:s3cret@db.example:5432/fb")
    assert "s3cret" not in str(cfg.to_json()) and "db.example" in cfg.to_json()["train_anno_db"]


def test_real_images_in_the_seed_naming_are_accepted(folders, tmp_path):
    # The diffusion stages keep real data as CLASS_*.png in one folder; the reward model reads it too.
    flat = tmp_path / "flat"
    generate(flat, classes=2, per_class=6, size=SIZE, seed=0, layout="prefix")
    a = load(folders)
    b = load({**folders, "train_dir": flat})
    assert b.class_map.names == a.class_map.names
    assert sorted(a.train_real.classes.tolist()) == sorted(b.train_real.classes.tolist())
    np.testing.assert_array_equal(
        np.sort(a.train_real.images.reshape(12, -1), axis=0), np.sort(b.train_real.images.reshape(12, -1), axis=0)
    )
