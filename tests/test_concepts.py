"""New clinical concepts (Algorithm 4): class-map growth, checkpoints across it, the folder layout,
the simulated expert's assignments, reward data and finetuning with concept rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clinalign.cli import main
from clinalign.concepts.assign import assign
from clinalign.data.classmap import ClassMap
from clinalign.data.concepts import (
    CONCEPTS_FILE,
    concept_parents,
    extension_parents,
    grow_class_map,
    parse_concept_specs,
    read_concepts_file,
)
from clinalign.data.folder import ImageFolderDataset
from clinalign.data.layouts import read_feedback_folder, write_feedback_folder
from clinalign.data.naming import list_images
from clinalign.errors import CheckpointError, ClinalignError, DataError
from clinalign.reward.data import load_reward_data
from clinalign.training.checkpoint import find_checkpoint

CONCEPTS = {"neutrophil-band": "neutrophil", "neutrophil-segmented": "neutrophil"}


def neutrophil_samples(toy_dir: Path, out: Path) -> Path:
    """The toy neutrophils (and lymphocytes) named as the sampler names samples: CLASS_000123.png."""
    out.mkdir(parents=True)
    for i, p in enumerate(list_images(toy_dir)):
        cls = p.name.split("_")[0]
        if cls in ("neutrophil", "lymphocyte"):
            shutil.copyfile(p, out / f"{cls}_{i:06d}.png")
    return out


def concept_feedback(samples: Path, out: Path) -> Path:
    """Half the neutrophils to neutrophil-band, the rest to neutrophil-segmented; lymphocytes judged."""
    items = []
    neutrophils = [p for p in list_images(samples) if p.name.startswith("neutrophil_")]
    for k, p in enumerate(neutrophils):
        items.append((p, "neutrophil-band" if k % 2 == 0 else "neutrophil-segmented", True))
    for k, p in enumerate(p for p in list_images(samples) if p.name.startswith("lymphocyte_")):
        items.append((p, "lymphocyte", k % 2 == 0))
    write_feedback_folder(out, items, concepts=CONCEPTS)
    return out


# ------------------------------------------------------------------------------ class map


def test_grow_class_map_appends_concepts_after_their_parents_and_is_idempotent():
    base = ClassMap(["lymphocyte", "neutrophil"])
    grown = grow_class_map(
        base,
        {
            "neutrophil-segmented": "neutrophil",
            "neutrophil-band": "neutrophil",
            "neutrophil-band-early": "neutrophil-band",
        },
    )
    assert grown.names == [
        "lymphocyte",
        "neutrophil",
        "neutrophil-band",
        "neutrophil-band-early",
        "neutrophil-segmented",
    ]
    assert grown.parents["neutrophil-band-early"] == "neutrophil-band"
    assert grow_class_map(grown, {"neutrophil-band": "neutrophil"}).names == grown.names
    with pytest.raises(DataError, match="already in the class map with parent 'neutrophil'"):
        grow_class_map(grown, {"neutrophil-band": "lymphocyte"})
    with pytest.raises(DataError, match="'blast' of concept 'blast-early' is not in the class map"):
        grow_class_map(base, {"blast-early": "blast"})
    # Rows copy from the nearest ancestor the old map holds; a reordered map is refused.
    assert extension_parents(base, grown) == [1, 1, 1]
    with pytest.raises(DataError, match="does not extend"):
        extension_parents(
            base, ClassMap(["neutrophil", "lymphocyte", "neutrophil-band"], {"neutrophil-band": "neutrophil"})
        )


def test_concept_specs_and_concepts_file_errors(tmp_path):
    assert parse_concept_specs(["neutrophil-band=neutrophil:BNE"]) == {"neutrophil-band": "neutrophil:BNE"}
    with pytest.raises(DataError, match="NAME=PARENT"):
        parse_concept_specs(["neutrophil-band"])
    with pytest.raises(DataError, match="'_'"):
        parse_concept_specs(["neutrophil_band=neutrophil"])
    (tmp_path / CONCEPTS_FILE).write_text("[1, 2]")
    with pytest.raises(DataError, match=CONCEPTS_FILE):
        read_concepts_file(tmp_path)


def test_a_concept_folder_without_a_parent_is_an_error_naming_the_folder_and_the_fix(tmp_path):
    (tmp_path / "neutrophil-band" / "align").mkdir(parents=True)
    (tmp_path / "neutrophil" / "align").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        concept_parents(tmp_path, ["neutrophil", "lymphocyte"])
    msg = str(err.value)
    assert str(tmp_path / "neutrophil-band") in msg and CONCEPTS_FILE in msg and "--concept neutrophil-band=" in msg
    assert concept_parents(tmp_path, ["neutrophil"], {"neutrophil-band": "neutrophil"}) == {
        "neutrophil-band": "neutrophil"
    }
    with pytest.raises(DataError, match="parent 'blast' of concept 'neutrophil-band' is not a known class"):
        concept_parents(tmp_path, ["neutrophil"], {"neutrophil-band": "blast"})


# ------------------------------------------------------------------------------ checkpoints


def test_an_old_checkpoint_loads_into_a_grown_map_with_rows_copied_from_the_parent(pretrained):
    ck = find_checkpoint(pretrained)
    old = ck.class_map
    grown = grow_class_map(old, CONCEPTS)
    band, seg, parent = grown.index("neutrophil-band"), grown.index("neutrophil-segmented"), old.index("neutrophil")
    assert (band, seg) == (len(old), len(old) + 1)  # appended: old indices never move

    model = ck.build_model(class_map=grown).eval()
    before = ck.build_model().eval()
    emb = model.unet.class_embedding.weight
    assert emb.shape[0] == len(grown)
    torch.testing.assert_close(emb[: len(old)], before.unet.class_embedding.weight)
    torch.testing.assert_close(emb[band], emb[parent])
    torch.testing.assert_close(emb[seg], emb[parent])
    x, t = torch.randn(2, ck.channels, 16, 16), torch.tensor([10, 60])
    with torch.no_grad():  # a fresh concept generates exactly what its parent does
        torch.testing.assert_close(model(x, t, torch.tensor([band, seg])), before(x, t, torch.tensor([parent] * 2)))

    with pytest.raises(CheckpointError, match="does not extend"):
        ck.build_model(class_map=ClassMap(list(reversed(old.names)) + ["x-y"], {"x-y": old.names[0]}))
    with pytest.raises(CheckpointError, match="no parent among the checkpoint's classes"):
        ck.build_model(class_map=old.grow("orphan"))


# ------------------------------------------------------------------------------ folder layout


def test_feedback_layout_round_trip_and_assign(toy_dir, tmp_path):
    samples = neutrophil_samples(toy_dir, tmp_path / "samples")
    fb = concept_feedback(samples, tmp_path / "fb")
    assert read_concepts_file(fb) == CONCEPTS
    read = read_feedback_folder(fb, 16)
    assert {"neutrophil-band", "neutrophil-segmented", "lymphocyte"} == set(read.classes)
    assert all(v == 1 for c, v in zip(read.classes, read.plausible) if c.startswith("neutrophil-"))

    result = assign(samples, fb, tmp_path / "mod", ["neutrophil", "lymphocyte"])
    assert result.assigned == {"neutrophil-band": 3, "neutrophil-segmented": 3} and result.n == 12
    # File names (the IDs) are kept; manifest.csv declares the concept.
    assert sorted(p.name for p in list_images(result.out)) == sorted(p.name for p in list_images(samples))
    grown = grow_class_map(ClassMap(["lymphocyte", "neutrophil"]), read_concepts_file(result.out))
    ds = ImageFolderDataset(result.out, 16, class_map=grown)
    declared = {p.name: grown.names[y] for p, y in zip(ds.paths, ds.labels)}
    band = {p.name for p in (fb / "neutrophil-band" / "align").iterdir()}
    assert {n for n, c in declared.items() if c == "neutrophil-band"} == band
    assert sum(c == "lymphocyte" for c in declared.values()) == 6

    # An image sampled as another class cannot be assigned to a neutrophil concept.
    lymph = next(p for p in list_images(samples) if p.name.startswith("lymphocyte_"))
    shutil.copyfile(lymph, fb / "neutrophil-band" / "align" / lymph.name)
    with pytest.raises(DataError, match="was sampled as 'lymphocyte'"):
        assign(samples, fb, tmp_path / "mod2", ["neutrophil", "lymphocyte"])


def test_reward_data_learns_a_concept_from_feedback_alone(toy_dir, tmp_path):
    samples = neutrophil_samples(toy_dir, tmp_path / "samples")
    fb = concept_feedback(samples, tmp_path / "fb")
    real = tmp_path / "real"
    for p in list_images(toy_dir):
        (real / p.name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, real / p.name.split("_")[0] / p.name)
    data = load_reward_data(real, fb, image_size=16)
    assert data.class_map.parents["neutrophil-band"] == "neutrophil"
    # The concepts are scored like any class, but real parent images are never their positives or
    # their wrong-class negatives: those pairs are drawn from classes with real images only.
    assert "neutrophil-band" not in data.real_classes and "neutrophil" in data.real_classes
    assert not any("no real images" in w for w in data.warnings)
    band = data.class_map.index("neutrophil-band")
    assert (data.train_feedback.classes == band).sum() == 3
    assert band not in set(data.train_real.classes.tolist())


# ------------------------------------------------------------------------------ finetuning


def test_finetune_grows_the_embedding_and_samples_the_concept(pretrained, toy_dir, tmp_path):
    samples = neutrophil_samples(toy_dir, tmp_path / "samples")
    fb = concept_feedback(samples, tmp_path / "fb")
    mod = assign(samples, fb, tmp_path / "mod", ["neutrophil", "lymphocyte"]).out
    with (mod / "rewards.csv").open("w") as f:
        f.write("ID,rewards\n" + "".join(f"{p.name},0.9\n" for p in list_images(mod)))
    run = tmp_path / "ft"
    argv = [
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
        "--max_steps",
        "3",
        "--lr",
        "1e-2",
    ]
    assert main(argv) == 0
    ck, pre = find_checkpoint(run), find_checkpoint(pretrained)
    cm = ck.class_map
    assert cm.names == pre.class_map.names + ["neutrophil-band", "neutrophil-segmented"]
    assert cm.parents["neutrophil-band"] == "neutrophil"
    assert json.loads((run / "config.json").read_text())["concepts"] == CONCEPTS
    emb = ck.weights(ema=False)["unet.class_embedding.weight"]
    start = pre.weights(ema=True)["unet.class_embedding.weight"]
    parent = pre.class_map.index("neutrophil")
    # The concept rows left the parent's row, and each other: they were trained on their own images.
    band, seg = cm.index("neutrophil-band"), cm.index("neutrophil-segmented")
    assert not torch.allclose(emb[band], start[parent]) and not torch.allclose(emb[band], emb[seg])
    # The existing classes' rows are frozen while the concepts are taught.
    assert torch.equal(emb[: len(pre.class_map)], start)
    # Resuming the finetune (rerun) keeps the grown map.
    assert main([*argv[:-4], "--max_steps", "4", "--lr", "1e-2"]) == 0
    assert find_checkpoint(run).step == 4 and find_checkpoint(run).class_map.names == cm.names

    out = tmp_path / "concept_samples"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run),
                "--num_samples",
                "4",
                "--classes",
                "neutrophil-band,neutrophil-segmented",
                "--sampler",
                "ddim",
                "--steps",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        sorted(p.name.split("_")[0] for p in list_images(out)) == ["neutrophil-band"] * 2 + ["neutrophil-segmented"] * 2
    )
    assert read_concepts_file(out) == CONCEPTS


def test_concept_rows_learn_at_the_concept_lr_scale(pretrained, toy_dir, tmp_path):
    samples = neutrophil_samples(toy_dir, tmp_path / "samples")
    mod = assign(
        samples, concept_feedback(samples, tmp_path / "fb"), tmp_path / "mod", ["neutrophil", "lymphocyte"]
    ).out
    with (mod / "rewards.csv").open("w") as f:
        f.write("ID,rewards\n" + "".join(f"{p.name},1\n" for p in list_images(mod)))
    pre = find_checkpoint(pretrained)
    parent = pre.weights(ema=True)["unet.class_embedding.weight"][pre.class_map.index("neutrophil")]
    moved = {}
    for scale in (1, 25):
        run = tmp_path / f"ft{scale}"
        assert (
            main(
                [
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
                    "--max_steps",
                    "4",
                    "--lr",
                    "1e-4",
                    "--concept_lr_scale",
                    str(scale),
                ]
            )
            == 0
        )
        ck = find_checkpoint(run)
        row = ck.weights(ema=False)["unet.class_embedding.weight"][ck.class_map.index("neutrophil-band")]
        moved[scale] = float((row - parent).norm())
    # AdamW moves a parameter about lr per step whatever its gradient: 25x the lr, ~25x the distance.
    assert moved[25] > 10 * moved[1] > 0


def test_finetune_refuses_a_concept_without_a_parent(pretrained, toy_dir, tmp_path):
    samples = neutrophil_samples(toy_dir, tmp_path / "samples")
    mod = tmp_path / "mod"
    mod.mkdir()
    for p in list_images(samples):
        Image.open(p).save(mod / p.name.replace("neutrophil_", "neutrophil-band_"))
    with (mod / "rewards.csv").open("w") as f:
        f.write("ID,rewards\n" + "".join(f"{p.name},1\n" for p in list_images(mod)))
    argv = [
        "finetune",
        "--resume_checkpoint",
        str(pretrained),
        "--data_pre_dir",
        str(toy_dir),
        "--data_mod_dir",
        str(mod),
        "--run_dir",
        str(tmp_path / "ft"),
        "--batch_size",
        "4",
        "--max_steps",
        "1",
    ]
    with pytest.raises(ClinalignError, match="--concept neutrophil-band=PARENT"):
        from clinalign.cli import build_parser
        from clinalign.training.finetune import finetune

        finetune(build_parser().parse_args(argv))
    assert main([*argv, "--concept", "neutrophil-band=neutrophil"]) == 0
    assert "neutrophil-band" in find_checkpoint(tmp_path / "ft").class_map


# ------------------------------------------------------------------------------ simulated expert


def test_simulated_expert_assigns_plausible_parents_to_the_concept_of_their_subtype(tmp_path):
    from clinalign.data.toy import generate
    from clinalign.expert.simulator import ExpertConfig, simulate

    real = tmp_path / "real"
    generate(real, classes=2, per_class=60, size=16, seed=0)
    samples = tmp_path / "samples"
    samples.mkdir()
    renders = generate(tmp_path / "renders", classes=2, per_class=10, size=16, seed=3)
    for i, p in enumerate(renders):
        shutil.copyfile(p, samples / f"{p.name.split('_')[0]}_{i:06d}.png")
    config = ExpertConfig(image_size=16, width=8, epochs=2, seed=0, label_from="subtype", manifold_k=0)
    res = simulate(
        samples,
        tmp_path / "fb",
        real,
        config=config,
        tau=0.0,
        concepts={"neutrophil-band": "neutrophil:BAND", "neutrophil-segmented": "neutrophil:SEG"},
    )
    fb = res.out
    assert read_concepts_file(fb) == CONCEPTS
    # tau 0: every sample is plausible, so every neutrophil goes to one concept, no lymphocyte does.
    assert not (fb / "neutrophil").exists()
    assert sum(res.counts.get(c, {}).get("align", 0) for c in CONCEPTS) == 10
    assert res.counts["lymphocyte"]["align"] == 10
    rows = (fb / "judgements.csv").read_text().splitlines()
    assert (
        rows[0].endswith(",concept")
        and sum(r.endswith((",neutrophil-band", ",neutrophil-segmented")) for r in rows[1:]) == 10
    )
    with pytest.raises(DataError, match="no label 'neutrophil:BNE'"):
        simulate(samples, tmp_path / "fb2", real, config=config, concepts={"neutrophil-band": "neutrophil:BNE"})


def test_evaluation_judges_concept_samples_as_their_parent(toy_dir, tmp_path):
    from clinalign.evaluate.run import read_samples

    samples = tmp_path / "s"
    samples.mkdir()
    for i, p in enumerate(list_images(toy_dir)):
        name = p.name.split("_")[0]
        name = "neutrophil-band" if name == "neutrophil" and i % 2 else name
        shutil.copyfile(p, samples / f"{name}_{i:06d}.png")
    base = ClassMap(sorted({p.name.split("_")[0] for p in list_images(toy_dir)}))
    with pytest.raises(DataError, match="not in the run's class map"):
        read_samples(samples, 16, 3, base, False)
    (samples / CONCEPTS_FILE).write_text(json.dumps({"eosinophil-x": "eosinophil"}))
    with pytest.raises(DataError, match="no parent is recorded"):
        read_samples(samples, 16, 3, base, False)
    (samples / CONCEPTS_FILE).write_text(json.dumps({"neutrophil-band": "neutrophil"}))
    s = read_samples(samples, 16, 3, base, False)
    assert set(s.classes) == set(base.names) and np.sum(np.array(s.classes) == "neutrophil") == 6


# ------------------------------------------------------------------------------ concept accuracy


def test_concept_accuracy_cli_with_a_subtype_oracle_independent_of_the_expert(tmp_path, capsys):
    from clinalign.evaluate.data import HALF_ORACLE, half_of

    from .test_concepts_toy_run import write_cells

    write_cells(tmp_path / "real", 300, seed=0)
    fresh = tmp_path / "fresh"
    write_cells(fresh, 20, seed=9)
    samples = tmp_path / "samples"  # "requested as neutrophil-one": fresh cells of each subtype, known truth
    samples.mkdir()
    for p in list_images(fresh):
        if p.name.startswith("neutrophil_"):
            concept = "neutrophil-one" if "_ONE_" in p.name else "neutrophil-two"
            shutil.copyfile(p, samples / f"{concept}_{p.name.split('_')[2]}")
    assert (
        main(
            [
                "concepts",
                "accuracy",
                "--real",
                str(tmp_path / "real"),
                "--samples",
                str(samples),
                "--parent",
                "neutrophil",
                "--concept",
                "neutrophil-one=ONE",
                "--concept",
                "neutrophil-two=TWO",
                "--image_size",
                "16",
                "--epochs",
                "15",
                "--batch_size",
                "16",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "eval" / "concept_accuracy.json").read_text())
    assert report["oracle"]["arch"] == "vgg" and report["oracle"]["half"] == HALF_ORACLE
    assert report["groups"]["neutrophil-one"]["accuracy"] >= 0.9
    assert report["groups"]["neutrophil-two"]["accuracy"] >= 0.9
    meta = json.loads(next((tmp_path / "eval" / "models").glob("*/concept_oracle.json")).read_text())
    assert all(half_of(i) == HALF_ORACLE for i in meta["info"]["train_ids"])  # never the expert's half


def test_simulated_reviewer_names_concepts_in_the_review_app_and_the_export_carries_them(tmp_path):
    from clinalign.evaluate.data import ImageSet
    from clinalign.expert.reviewer import review_queue
    from clinalign.expert.simulator import ExpertConfig, ExpertSimulator
    from clinalign.review.db import Store
    from clinalign.review.export import export_feedback
    from clinalign.review.ingest import add_batch, add_concept, add_user

    from .test_concepts_toy_run import write_cells

    write_cells(tmp_path / "real", 150, seed=0)
    write_cells(tmp_path / "fresh", 6, seed=5)
    samples = tmp_path / "samples"
    samples.mkdir()
    truth = {}
    for i, p in enumerate(list_images(tmp_path / "fresh")):
        name = f"{p.name.split('_')[0]}_{i:06d}.png"
        shutil.copyfile(p, samples / name)
        truth[name] = p.name.split("_")[1]
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(url)
    add_batch(store, samples, per_image=1, name="b1")
    add_user(store, "sim", "reviewer")
    add_concept(store, "b1", "neutrophil-one", "neutrophil")
    add_concept(store, "b1", "neutrophil-two", "neutrophil")
    store.dispose()
    expert = ExpertSimulator.fit(
        ImageSet.from_folder(tmp_path / "real", 16),
        ExpertConfig(image_size=16, width=16, epochs=15, batch_size=16, label_from="subtype", manifold_k=0),
    )
    result = review_queue(
        url, "sim", expert, tau=0.0, concepts={"neutrophil-one": "neutrophil:ONE", "neutrophil-two": "neutrophil:TWO"}
    )
    assert result.n == 12
    store = Store(url, create=False)
    try:
        export_feedback(store, tmp_path / "fb")
    finally:
        store.dispose()
    assert read_concepts_file(tmp_path / "fb") == {"neutrophil-one": "neutrophil", "neutrophil-two": "neutrophil"}
    assigned = {p.name: p.parent.parent.name for p in (tmp_path / "fb").glob("neutrophil-*/align/*.png")}
    assert len(assigned) == 6  # every neutrophil got a concept, and the expert named its subtype
    assert sum(assigned[n] == f"neutrophil-{truth[n].lower()}" for n in assigned) >= 5
