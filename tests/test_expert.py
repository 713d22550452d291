"""The simulated expert: its verdicts, strictness, noise, subtype labels, files and CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from clinalign.cli import main
from clinalign.data.layouts import read_feedback_folder
from clinalign.data.toy import generate, toy_class_map
from clinalign.errors import DataError
from clinalign.evaluate.data import ImageSet, half_of
from clinalign.evaluate.oracle import EvaluationModels, OracleConfig, check_independent
from clinalign.expert.simulator import ExpertConfig, ExpertSimulator, simulate

SIZE = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # See test_evaluate_models.py: one thread is much faster on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_set(per_class: int, seed: int) -> ImageSet:
    return ImageSet.from_toy(4, per_class, SIZE, seed, id_suffix=f"-{seed}")


@pytest.fixture(scope="module")
def real() -> ImageSet:
    return toy_set(120, seed=0)


@pytest.fixture(scope="module")
def expert(real) -> ExpertSimulator:
    return ExpertSimulator.fit(real, ExpertConfig(image_size=SIZE, epochs=25, width=16))


@pytest.fixture(scope="module")
def fresh() -> ImageSet:
    return toy_set(15, seed=3)


def test_expert_trains_on_half_a_with_its_own_architecture_and_seed(expert):
    assert expert.info["train_ids"] and all(half_of(i) == "A" for i in expert.info["train_ids"])
    assert expert.info["arch"] == "resnet" and expert.info["half"] == "A"


def test_expert_and_oracle_are_independent_by_construction(expert, real):
    oracle = EvaluationModels.fit(real, config=OracleConfig(image_size=16, epochs=1, width=4))
    check_independent(expert.info, oracle.info)
    assert not set(expert.info["train_ids"]) & set(oracle.info["train_ids"])
    assert expert.info["seed"] != oracle.info["seed"] and expert.info["arch"] != oracle.info["arch"]
    with pytest.raises(AssertionError, match="both training sets"):
        check_independent(expert.info, {**oracle.info, "train_ids": expert.info["train_ids"][:1]})
    with pytest.raises(AssertionError, match="architecture"):
        check_independent(expert.info, {**oracle.info, "arch": "resnet"})
    with pytest.raises(AssertionError, match="seed"):
        check_independent(expert.info, {**oracle.info, "seed": expert.info["seed"]})


def test_judges_real_cells_plausible_and_wrongly_declared_cells_implausible(expert, fresh):
    plausible, p = expert.judge(fresh.images, fresh.classes)
    assert plausible.mean() >= 0.8 and ((p >= 0) & (p <= 1)).all()
    names = toy_class_map(4).names
    wrong = [names[(names.index(c) + 1) % 4] for c in fresh.classes]
    assert expert.judge(fresh.images, wrong)[0].mean() <= 0.2


def test_strictness_tau(expert, fresh):
    p = expert.p_declared(fresh.images, fresh.classes)
    inside = expert.in_manifold(fresh.images)
    between = float(np.median(p[inside]))  # a bar that half of the recognisable images clear
    assert ((p >= 0.3) & (p < between) & inside).any(), "the data must separate the two bars"
    for tau in (0.0, 0.3, between):
        assert (expert.judge(fresh.images, fresh.classes, tau=tau)[0] == ((p >= tau) & inside)).all(), tau
    with pytest.raises(DataError):
        expert.judge(fresh.images, fresh.classes, tau=1.5)


def test_label_noise_flips_verdicts_at_the_given_rate_reproducibly(expert):
    many = toy_set(50, seed=4)
    clean, _ = expert.judge(many.images, many.classes)
    assert (expert.judge(many.images, many.classes, noise=1.0)[0] == ~clean).all()
    noisy, _ = expert.judge(many.images, many.classes, noise=0.3, seed=1)
    assert 0.22 <= (noisy != clean).mean() <= 0.38
    assert (expert.judge(many.images, many.classes, noise=0.3, seed=1)[0] == noisy).all()
    assert (expert.judge(many.images, many.classes, noise=0.3, seed=2)[0] != noisy).any()


def test_float_images_and_save_load_round_trip(expert, fresh, tmp_path):
    x = torch.from_numpy(fresh.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    p = expert.p_declared(fresh.images, fresh.classes)
    assert np.allclose(expert.p_declared(x, fresh.classes), p)
    expert.save(tmp_path / "e")
    again = ExpertSimulator.load(tmp_path / "e")
    assert again.labels == expert.labels and again.info == expert.info
    assert np.allclose(again.p_declared(fresh.images, fresh.classes), p, atol=1e-6)


def test_unknown_declared_class_is_refused(expert, fresh):
    with pytest.raises(DataError, match="blast"):
        expert.judge(fresh.images[:2], ["blast", "neutrophil"])


def test_a_real_class_missing_from_half_a_is_judged_implausible_not_an_error(real, fresh, caplog):
    # Keep every monocyte out of half A: the expert cannot learn the class, but it is a real class.
    drop = [k for k, (c, i) in enumerate(zip(real.classes, real.ids)) if c == "monocyte" and half_of(i) == "A"]
    partial = real.subset(np.setdiff1d(np.arange(len(real)), drop))
    with caplog.at_level("WARNING"):
        blind = ExpertSimulator.fit(partial, ExpertConfig(image_size=SIZE, epochs=1, width=4))
    assert "monocyte" in caplog.text and "monocyte" in blind.classes and "monocyte" not in blind.labels
    mono = [k for k, c in enumerate(fresh.classes) if c == "monocyte"]
    plausible, p = blind.judge(fresh.images[mono], ["monocyte"] * len(mono))
    assert not plausible.any() and (p == 0).all()


def test_subtype_labels_sum_to_the_declared_class(real, fresh):
    sub = ExpertSimulator.fit(real, ExpertConfig(image_size=SIZE, epochs=2, width=4, label_from="subtype"))
    assert {"neutrophil:BAND", "neutrophil:SEG", "lymphocyte:STD"} <= set(sub.labels)
    names = toy_class_map(4).names
    total = sum(sub.p_declared(fresh.images, [c] * len(fresh)) for c in names)
    assert np.allclose(total, 1.0, atol=1e-5)  # the class probabilities partition the subtypes
    proba = sub.probabilities(fresh.images)
    neut = [k for k, lab in enumerate(sub.labels) if lab.startswith("neutrophil:")]
    assert np.allclose(sub.p_declared(fresh.images, ["neutrophil"] * len(fresh)), proba[:, neut].sum(axis=1))
    # A subtype can itself be declared (concepts, later).
    assert np.allclose(
        sub.p_declared(fresh.images, ["neutrophil:BAND"] * len(fresh)), proba[:, sub.labels.index("neutrophil:BAND")]
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("expert")
    generate(root / "real", classes=4, per_class=40, size=16, seed=0)
    generate(root / "samples", classes=4, per_class=5, size=16, seed=9)
    return root


def test_simulate_writes_the_feedback_layout_and_judgements_and_caches_the_expert(folders, monkeypatch):
    config = ExpertConfig(image_size=16, epochs=3, width=4)
    out = folders / "run1" / "feedback"
    result = simulate(folders / "samples", out, folders / "real", tau=0.5, noise=0.0, seed=0, config=config)
    assert result.n == 20 and result.expert_dir.parent == out.parent / "expert"
    judged = read_feedback_folder(out, 16)
    sample_names = sorted(p.name for p in (folders / "samples").glob("*.png"))
    assert sorted(p.name for p in judged.paths) == sample_names  # file names kept
    with (out / "judgements.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ID", "class", "plausible", "p_declared"]
    by_id = {r["ID"]: r for r in rows}
    for path, cls, verdict in zip(judged.paths, judged.classes, judged.plausible):
        assert by_id[path.name]["class"] == cls and int(by_id[path.name]["plausible"]) == verdict
        assert (float(by_id[path.name]["p_declared"]) >= 0.5) == bool(verdict)
    # The same real data and config reuse the cached expert.
    monkeypatch.setattr(ExpertSimulator, "fit", classmethod(lambda *a, **k: pytest.fail("retrained")))
    again = simulate(folders / "samples", folders / "run1" / "feedback2", folders / "real", noise=1.0, config=config)
    assert again.expert_dir == result.expert_dir
    assert again.plausible_rate == pytest.approx(1.0 - result.plausible_rate)


def test_cli_expert_simulate(folders, capsys):
    out = folders / "cli" / "judged"
    argv = [
        "expert",
        "simulate",
        "--samples",
        str(folders / "samples"),
        "--out",
        str(out),
        "--real",
        str(folders / "real"),
        "--tau",
        "0.4",
        "--noise",
        "0.1",
        "--seed",
        "3",
        "--image_size",
        "16",
        "--epochs",
        "2",
        "--width",
        "4",
    ]
    assert main(argv) == 0
    assert "judged 20 images" in capsys.readouterr().out
    assert (out / "judgements.csv").exists() and (folders / "cli" / "expert").is_dir()
    assert {p.name for p in out.iterdir() if p.is_dir()} <= set(toy_class_map(4).names)
    assert main(argv) == 2  # OUT exists: refused with one line, nothing overwritten
    err = capsys.readouterr().err
    assert "clinalign: error:" in err and "already exists" in err


def test_simulated_reviewer_works_through_the_review_apps_queue(folders, tmp_path, capsys):
    from sqlalchemy import select

    from clinalign.expert.reviewer import review_queue
    from clinalign.review.db import Store, Verdict
    from clinalign.review.ingest import add_batch, add_user

    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(url)
    add_batch(store, folders / "samples", per_image=2)
    for name in ("sim-a", "sim-b"):
        add_user(store, name, "reviewer")
    store.dispose()
    expert = ExpertSimulator.fit(
        ImageSet.from_folder(folders / "real", 16), ExpertConfig(image_size=16, epochs=2, width=4)
    )
    first = review_queue(url, "sim-a", expert, limit=5)
    assert first.n == 5
    rest = review_queue(url, "sim-a", expert)  # resumes where it stopped
    assert rest.n == 15 and review_queue(url, "sim-a", expert).n == 0
    argv = [
        "expert",
        "simulate",
        "--real",
        str(folders / "real"),
        "--db",
        url,
        "--reviewer",
        "sim-b",
        "--expert_dir",
        str(tmp_path / "expert"),
        "--image_size",
        "16",
        "--epochs",
        "2",
        "--width",
        "4",
    ]
    assert main(argv) == 0
    assert "sim-b: judged 20 image(s)" in capsys.readouterr().out
    store = Store(url, create=False)
    with store.read() as s:
        sources = s.scalars(select(Verdict.source)).all()
    store.dispose()
    assert len(sources) == 40 and set(sources) == {"simulated"}
    assert (
        main(
            [
                "expert",
                "simulate",
                "--real",
                str(folders / "real"),
                "--db",
                url,
                "--reviewer",
                "nobody",
                "--expert_dir",
                str(tmp_path / "never"),
            ]
        )
        == 2
    )
    assert "nobody" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # refused before any training


def test_expert_rejects_a_recognisable_cell_in_an_impossible_stain(expert, fresh, tmp_path):
    """Shape says the class, colour says no smear: a pathologist rejects it, so must the simulator."""
    recolour = fresh.images[..., ::-1].copy()  # RGB -> BGR: blue slide, orange nuclei
    assert expert.in_manifold(fresh.images).mean() >= 0.8
    assert expert.in_manifold(recolour).mean() <= 0.2
    plausible, _ = expert.judge(recolour, fresh.classes)
    assert plausible.mean() <= 0.2
    # the manifold reference survives save/load
    expert.save(tmp_path / "e")
    again = ExpertSimulator.load(tmp_path / "e")
    assert np.array_equal(again.in_manifold(recolour), expert.in_manifold(recolour))
