"""The feedback loop and the demo, end to end on tiny sizes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from clinalign.data.naming import list_images
from clinalign.pipeline.rounds import AwaitingFeedback, FeedbackSource, RoundConfig, run_loop, split_feedback
from clinalign.training.checkpoint import find_checkpoint

TINY_ROUND = RoundConfig(
    samples_per_class=4,
    sampler="ddim",
    steps=4,
    sample_batch=16,
    reward_epochs=2,
    finetune_steps=3,
    finetune_batch=4,
    seed=0,
    device="cpu",
)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    """Enough cells per class that both halves of the expert/oracle split hold every class."""
    from clinalign.data.toy import generate

    out = tmp_path_factory.mktemp("toy20")
    generate(out, classes=4, per_class=20, size=16, seed=0)
    return out


def test_one_round_with_the_simulated_expert_then_rerun_resumes(pretrained, toy_dir, tmp_path):
    out = tmp_path / "loop"
    results = run_loop(pretrained, toy_dir, out, rounds=1, cfg=TINY_ROUND)
    r = results[0]
    assert len(list_images(r.samples)) == 16
    assert (r.samples / "rewards.csv").read_text().startswith("ID,rewards\n")
    assert (r.feedback / "judgements.csv").exists()
    assert (r.reward / "reward.safetensors").exists()
    ck = find_checkpoint(r.checkpoint)
    assert ck.step == 3 and ck.meta["objective"] == "reward-weighted"
    assert 0.0 <= r.mean_reward <= 1.0 and r.expert_plausible_rate is not None
    # rejection sampling with this round's reward model: everything passes a 0 bar, nothing a 1.01 bar
    from clinalign.sampling.rejection import reward_acceptor
    from clinalign.sampling.sample import SampleConfig, sample_folder

    accept_all = reward_acceptor(str(r.reward), 0.0, str(r.checkpoint))
    cfg = SampleConfig(num_samples=4, sampler="ddim", steps=2, batch_size=4)
    kept = sample_folder(r.checkpoint, tmp_path / "rs_all", cfg, accept=accept_all)
    assert kept.written == 4 and kept.acceptance_rate == 1.0
    rows = (tmp_path / "rs_all" / "manifest.csv").read_text().splitlines()
    assert all(row.split(",")[-1] for row in rows[1:]), "the reward of each kept sample is recorded"
    # a bar per class: one class kept whole, the others not at all
    classes = find_checkpoint(r.checkpoint).sample_classes
    per_class = {c: (0.0 if c == classes[0] else 1.01) for c in classes}
    only_first = sample_folder(
        r.checkpoint,
        tmp_path / "rs_first",
        dataclasses.replace(cfg, max_draw_factor=1),
        accept=reward_acceptor(str(r.reward), per_class, str(r.checkpoint)),
    )
    assert only_first.per_class == {c: int(c == classes[0]) for c in classes}
    from clinalign.errors import ConfigError

    with pytest.raises(ConfigError, match=f"no reward bar for class.*{classes[-1]}"):
        reward_acceptor(str(r.reward), {classes[0]: 0.0}, str(r.checkpoint))
    accept_none = reward_acceptor(str(r.reward), 1.01, str(r.checkpoint))
    none = sample_folder(
        r.checkpoint, tmp_path / "rs_none", dataclasses.replace(cfg, max_draw_factor=2), accept=accept_none
    )
    assert none.written == 0 and none.drawn == 8
    # a rerun finds every step complete and does no work again
    again = run_loop(pretrained, toy_dir, out, rounds=1, cfg=TINY_ROUND)
    assert again[0].checkpoint == r.checkpoint
    assert again[0].expert_plausible_rate is None  # not re-judged
    # a rerun with other round settings would report the old round under the new name: refused
    blind = dataclasses.replace(TINY_ROUND, blind_control="shuffled", sample_batch=8)
    with pytest.raises(
        ConfigError, match=r"round_1: settings disagree.*--blind_control 'shuffled' \(round.json has ''\)"
    ):
        run_loop(pretrained, toy_dir, out, rounds=1, cfg=blind)
    assert find_checkpoint(r.checkpoint).step == 3  # nothing lost
    run_loop(pretrained, toy_dir, out, rounds=1, cfg=dataclasses.replace(TINY_ROUND, sample_batch=8, device="cpu"))


def test_a_non_positive_lr_decay_is_refused_before_any_work(pretrained, toy_dir, tmp_path):
    from clinalign.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--finetune_lr_decay 0.0: give a factor above 0"):
        run_loop(pretrained, toy_dir, tmp_path / "loop", cfg=dataclasses.replace(TINY_ROUND, finetune_lr_decay=0.0))
    assert not (tmp_path / "loop").exists()


def test_feedback_folder_pauses_until_the_judgements_exist(pretrained, toy_dir, tmp_path):
    out = tmp_path / "loop"
    judged = tmp_path / "judged"
    with pytest.raises(AwaitingFeedback, match="judge the samples"):
        run_loop(pretrained, toy_dir, out, rounds=1, cfg=TINY_ROUND, source=FeedbackSource(folder=judged))
    samples = out / "round_1" / "samples"
    assert len(list_images(samples)) == 16, "sampling finished before the pause"
    # an expert judges: half plausible, half not
    for i, p in enumerate(list_images(samples)):
        cls = p.name.split("_")[0]
        dest = judged / cls / ("align" if i % 2 else "notalign")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / p.name).write_bytes(p.read_bytes())
    results = run_loop(pretrained, toy_dir, out, rounds=1, cfg=TINY_ROUND, source=FeedbackSource(folder=judged))
    assert find_checkpoint(results[0].checkpoint).step == 3


def test_review_database_asks_for_reviewers_then_loads_the_batch_and_times_out_cleanly(pretrained, toy_dir, tmp_path):
    from clinalign.cli import main
    from clinalign.review.db import Store
    from clinalign.review.stats import dashboard

    out = tmp_path / "loop"
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    source = FeedbackSource(db=db, per_image=2, qc_share=0.25, review_timeout_s=0.01)
    with pytest.raises(AwaitingFeedback, match="has 0 reviewer.*needs 2.*add-reviewer"):
        run_loop(pretrained, toy_dir, out, rounds=1, cfg=TINY_ROUND, source=source)
    for name in ("ana", "ben"):
        assert main(["review", "add-reviewer", name, "--db", db]) == 0
    with pytest.raises(AwaitingFeedback, match="0 of 32 verdicts"):  # 16 samples x 2 reviewers each
        run_loop(pretrained, toy_dir, out, rounds=1, cfg=TINY_ROUND, source=source)
    with Store(db).read() as s:
        batch = dashboard(s)["batches"][0]
    assert batch["name"] == "round_1" and batch["per_image"] == 2
    assert batch["qc_share"] == 0.25 and batch["samples"] == 16 and batch["qc"] == 5, batch  # 5 of 21 in the queue


def test_split_feedback_is_deterministic(tmp_path):
    fb = tmp_path / "fb"
    for i in range(40):
        d = fb / "neutrophil" / ("align" if i % 2 else "notalign")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"neutrophil_{i:06d}.png").write_bytes(b"x")
    train, val = split_feedback(fb, 0.25)
    n_val = len(list(val.rglob("*.png")))
    assert len(list(train.rglob("*.png"))) + n_val == 40 and 2 <= n_val <= 20
    names = {p.name for p in val.rglob("*.png")}
    assert not names & {p.name for p in train.rglob("*.png")}


@pytest.mark.slow
def test_demo_smallest_size_compares_feedback_with_equal_cost_controls(tmp_path):
    from clinalign.pipeline.demo import DemoConfig, format_table, run_demo

    cfg = DemoConfig(
        out=str(tmp_path / "demo"),
        minutes=0.2,
        rounds=2,
        classes=3,
        real_per_class=10,
        expert_per_class=40,
        oracle_per_class=40,
        test_per_class=12,
        image_size=16,
        samples_per_class=8,
        eval_per_class=8,
        batch_size=8,
        finetune_lr_decay=0.5,
        utility=True,
        device="cpu",
    )
    summary = run_demo(cfg, progress=False)
    out = Path(cfg.out)
    assert Path(summary["report"]).stat().st_size > 10_000
    flat = json.dumps(json.loads((out / "evaluation" / "metrics.json").read_text())).lower()
    for key in ("fid", "precision", "recall", "plausib", "checklist", "tstr", "memoris", "pools"):
        assert key in flat, key
    assert {k: summary["pools"][k]["n"] for k in ("G", "E", "O")} == {"G": 30, "E": 120, "O": 120}
    assert len(summary["rounds"]) == 2
    for rnd in summary["rounds"]:
        columns = rnd["columns"]
        # equal cost: the control has processed as many training images as the feedback run
        assert columns["no feedback (equal images)"]["train_images"] == columns["feedback"]["train_images"]
        assert columns["no feedback (equal steps)"]["train_images"] * 2 == columns["feedback"]["train_images"]
        assert rnd["metrics"]["plausibility"]["feedback"]["value"] is not None
    steps, batch = cfg.scaled(cfg.finetune_steps), cfg.batch_size
    base = cfg.scaled(cfg.pretrain_steps)
    control = [json.loads(x) for x in (out / "control" / "metrics.jsonl").read_text().splitlines()]
    feedback = [json.loads(x) for x in (out / "round_1" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    # images seen per step: the control 1 batch, the feedback 2 (real + synthetic), at the same real batch
    assert control[-1]["step"] == base + 2 * 2 * steps
    assert feedback[-1]["images_seen"] == steps * 2 * batch
    assert (control[-1]["step"] - base) * batch == 2 * feedback[-1]["images_seen"]
    # round 2 finetunes at half round 1's lr, and the control's second segment trains at it too
    second = [json.loads(x) for x in (out / "round_2" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert feedback[-1]["lr"] == pytest.approx(cfg.finetune_lr) and second[-1]["lr"] == pytest.approx(
        cfg.finetune_lr / 2
    )
    lr_at = {row["step"]: row["lr"] for row in control if "lr" in row}
    assert lr_at[base + 2 * steps] == pytest.approx(cfg.finetune_lr) and lr_at[base + 4 * steps] == pytest.approx(
        cfg.finetune_lr / 2
    )
    printed = format_table(summary)
    assert "plausibility by round" in printed
    sharp = summary["rounds"][-1]["metrics"]["sharpness (real test = 1)"]
    assert all(0 < sharp[c]["value"] < 10 for c in sharp) and "sharpness (real test = 1)" in printed
    real = summary["real_test"]  # the judge's ceiling: what it passes of real test images
    assert 0.0 <= real["plausibility"] <= min(real["class-consistent"], real["on-manifold"], real["clinical checklist"])
    assert f"plausibility {real['plausibility']:.3f}" in printed and "ceiling" in (out / "compare.md").read_text()


def test_reward_model_sees_real_and_synthetic_images_at_the_generators_resolution(tmp_path):
    """Real files at 32 px, a 16 px generator: the reward model must train and score at 16 px, so that
    sharpness alone (real downscaled from 32 px vs synthetic drawn at 16 px) cannot tell them apart."""
    from clinalign.cli import main
    from clinalign.data.toy import generate
    from clinalign.reward import RewardModel

    from .conftest import TINY_DIFFUSION, TINY_MODEL

    real = tmp_path / "real32"
    generate(real, classes=2, per_class=20, size=32, seed=0)
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
                "4",
                "--max_steps",
                "2",
            ]
        )
        == 0
    )
    assert find_checkpoint(pre).model.image_size == 16
    r = run_loop(pre, real, tmp_path / "loop", rounds=1, cfg=TINY_ROUND)[0]
    reward = RewardModel.load(r.reward)
    assert reward.image_size == 16, "real images must be downscaled to the generator's size, not kept at 32 px"
    report = json.loads((r.reward / "report.json").read_text()) if (r.reward / "report.json").exists() else {}
    assert report.get("data", {}).get("image_size", 16) == 16


def test_a_guidance_loop_shows_the_expert_the_unguided_samples(pretrained, toy_dir, tmp_path):
    """The rejected class learns what the model draws unguided; users still sample guided."""
    import csv

    cfg = dataclasses.replace(TINY_ROUND, objective="guidance", guidance_scale=2.0)
    results = run_loop(pretrained, toy_dir, tmp_path / "loop", rounds=2, cfg=cfg)
    first = find_checkpoint(results[0].checkpoint)
    assert first.guidance and first.meta["guidance_scale"] == 2.0
    with (results[1].samples / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {r["guidance"] for r in rows} == {"0.0"}  # judged unguided
    assert {r["class"] for r in rows} == set(first.sample_classes)
    assert cfg.sample_config(4, 0).guidance == -1.0  # what evaluation draws: the model's own strength


def test_a_round_with_reward_draws_trains_on_what_the_filter_keeps_of_them(pretrained, toy_dir, tmp_path):
    """The reward model judges the draws at the expert's per-class share; the finetune sees them all."""
    import csv

    from clinalign.data.naming import label_of
    from clinalign.pipeline.bars import expert_shares
    from clinalign.training.finetune import read_rewards_csv

    cfg = dataclasses.replace(TINY_ROUND, reward_draws_per_class=6)
    r = run_loop(pretrained, toy_dir, tmp_path / "loop", rounds=1, cfg=cfg)[0]
    rdir = r.samples.parent
    draws = list_images(rdir / "draws")
    assert len(draws) == 24 and len(list_images(r.samples)) == 16
    assert not {p.read_bytes() for p in draws} & {p.read_bytes() for p in list_images(r.samples)}
    rewards = read_rewards_csv(rdir / "finetune_rewards_with_draws.csv")
    kept = {n: v for n, v in rewards.items() if "_draw" in n}
    assert len(kept) == 24 and set(kept.values()) <= {0.0, 1.0}
    shares = expert_shares(r.feedback)
    for cls in {label_of(n) for n in kept}:
        n_kept = sum(v for n, v in kept.items() if label_of(n) == cls)
        assert n_kept == max(round(shares[cls] * 6), 1), (cls, shares[cls], n_kept)
    verdicts = {p.name: 1.0 for p in r.feedback.rglob("align/*")} | {
        p.name: 0.0 for p in r.feedback.rglob("notalign/*")
    }
    assert all(rewards[n] == v for n, v in verdicts.items())  # the expert's own verdicts unchanged
    with (rdir / "finetune_data" / "manifest.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 40
    config = json.loads((rdir / "finetune" / "config.json").read_text())
    assert config["n_synthetic"] == 40 and config["data_mod_dir"].endswith("finetune_data")
    assert "draws" in r.seconds
    # rejection sampling draws from the base: its bars are set on the base's own draws (here the
    # round-1 draws, which are the base's), not on the round's samples
    import shutil
    from types import SimpleNamespace

    from clinalign.pipeline.compare import Comparison, judged_folder

    compare = SimpleNamespace(out=tmp_path / "compare")
    shutil.copytree(rdir / "draws", judged_folder(compare.out, "pretrained"))
    bars = Comparison.base_bars(compare, 1, r)
    for n, v in kept.items():
        original = n.replace("_draw", "_", 1)
        assert v == float(read_rewards_csv(rdir / "draws" / "rewards.csv")[original] >= bars[label_of(n)])


def test_blind_controls_keep_the_counts_and_drop_the_experts_choice():
    from clinalign.errors import ConfigError
    from clinalign.pipeline.rounds import blind_rewards

    rewards = {f"{c}_{i:03d}.png": float(i % 3 == 0) for c in ("eosinophil", "monocyte") for i in range(30)}
    shuffled = blind_rewards(rewards, "shuffled", seed=1)
    assert shuffled.keys() == rewards.keys() and shuffled != rewards
    for cls in ("eosinophil", "monocyte"):  # as many accepted per class, other images
        assert sum(v for k, v in shuffled.items() if k.startswith(cls)) == 10
    assert blind_rewards(rewards, "shuffled", seed=1) == shuffled  # seeded
    assert set(blind_rewards(rewards, "all-rejected").values()) == {0.0}
    with pytest.raises(ConfigError, match="blind control"):
        blind_rewards(rewards, "random")


def test_demo_label_noise_on_given_data_mislabels_g(tmp_path):
    from clinalign.data.naming import declared_classes, list_images
    from clinalign.data.toy import generate
    from clinalign.pipeline.demo import DemoConfig, prepare_pools

    data = tmp_path / "data"
    generate(data / "train", classes=2, per_class=12, size=16, seed=0)
    generate(data / "test", classes=2, per_class=2, size=16, seed=1)
    pools = prepare_pools(DemoConfig(out=str(tmp_path / "demo"), data=str(data), real_per_class=4, label_noise=0.5))
    assert pools.summary["label_noise"] == 0.5 and pools.summary["mislabelled_per_class"] == 2
    g = list_images(pools.generator)
    classes = declared_classes(g)
    assert len(set(classes)) == 2 and all(classes.count(c) == 4 for c in classes)
    assert sum(p.name.split("_")[1] in classes for p in g) == 4  # 2 per class under the other's name


def test_demo_table_says_when_the_training_labels_were_made_noisy():
    from clinalign.pipeline.demo import format_table

    cols = ("pretrained", "feedback", "no feedback (equal images)", "no feedback (equal steps)")
    rnd = {"round": 1, "metrics": {"plausibility": {c: {"value": 0.5} for c in cols}}, "feedback_minus_control": {}}
    assert "LABEL NOISE: 25% of the generator's training cells" in format_table(
        {"config": {"label_noise": 0.25}, "rounds": [rnd]}
    )
    assert "LABEL NOISE" not in format_table({"config": {"label_noise": 0.0}, "rounds": [rnd]})


def test_demo_table_prints_each_part_of_the_bar_with_its_interval():
    from clinalign.pipeline.demo import format_table

    cols = ("pretrained", "feedback", "no feedback (equal images)", "no feedback (equal steps)")
    diffs = {
        "plausibility": {"difference": 0.099, "ci": [0.021, 0.167]},
        "FID (domain features)": {"difference": 1.398, "ci": [-1.301, 4.18]},
        "FID at the samples' class mix": {"difference": -0.5, "ci": [-2.25, 1.0]},
        "near copies of G (features)": {"difference": -0.042, "ci": [-0.08, -0.005]},
    }
    rnd = {
        "round": 3,
        "metrics": {"plausibility": {c: {"value": 0.5} for c in cols}},
        "feedback_minus_control": {"no feedback (equal images)": diffs},
    }
    text = format_table({"config": {}, "rounds": [rnd]})
    assert "feedback - no feedback, plausibility: +0.099 (95% CI +0.021 .. +0.167)" in text
    assert "feedback - no feedback, FID (domain features): +1.398 (95% CI -1.301 .. +4.180)" in text
    assert "feedback - no feedback, FID at the samples' class mix: -0.500 (95% CI -2.250 .. +1.000)" in text
    assert "feedback - no feedback, near copies of G (features): -0.042 (95% CI -0.080 .. -0.005)" in text


def test_every_finetune_option_a_round_shares_reaches_the_finetune(tmp_path, monkeypatch):
    """A RoundConfig option named like a FinetuneConfig one must be passed on, or the round would
    silently finetune at the default (as --guidance_accepted_weight once did)."""
    import clinalign.training.finetune as finetune_module
    from clinalign.pipeline import rounds
    from clinalign.training.config import FinetuneConfig

    shared = {f.name for f in dataclasses.fields(FinetuneConfig)} & {f.name for f in dataclasses.fields(RoundConfig)}
    assert {"guidance_accepted_weight", "guidance_scale", "beta", "objective"} <= shared
    # every shared number and flag moved off its default, so a dropped one shows as the default
    changes = {}
    for f in dataclasses.fields(RoundConfig):
        if f.name in shared and isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            changes[f.name] = f.default + 1 if isinstance(f.default, int) else f.default * 0.5 + 0.125
    cfg = dataclasses.replace(TINY_ROUND, **changes)
    captured = {}
    monkeypatch.setattr(finetune_module, "finetune", lambda spec, progress=False: captured.update(spec))
    monkeypatch.setattr(rounds, "finetune_rewards", lambda *a: tmp_path / "rewards.csv")
    monkeypatch.setattr(rounds, "latest_checkpoint", lambda run: None if not captured else type("C", (), {"path": run}))
    rounds.finetune_on_feedback(tmp_path / "ck", tmp_path, tmp_path, tmp_path, tmp_path / "run", cfg, 0, tmp_path)
    for name in shared - set(_RENAMED):
        assert name in captured and captured[name] == getattr(cfg, name), name
    for round_name, finetune_name in _RENAMED.items():
        assert captured[finetune_name] == getattr(cfg, round_name)


#: RoundConfig names whose FinetuneConfig field is called otherwise (a round holds several steps).
_RENAMED = {"finetune_steps": "max_steps", "finetune_lr": "lr", "finetune_batch": "batch_size"}


def test_rejection_sampling_matches_the_experts_acceptance_in_every_class(tmp_path):
    """The reward model's scale differs by class; one bar for all would starve the class it scores lowest."""
    from clinalign.pipeline.bars import matched_bars

    samples, feedback = tmp_path / "samples", tmp_path / "feedback"
    samples.mkdir()
    rows = ["ID,rewards"]
    verdict = {"eosinophil": [1, 1, 0, 0], "monocyte": [1, 0, 0, 0], "neutrophil": [0, 0, 0, 0]}
    scale = {"eosinophil": 0.9, "monocyte": 0.1, "neutrophil": 0.5}
    for label, marks in verdict.items():
        for i, ok in enumerate(marks):
            name = f"{label}_{i:06d}.png"
            rows.append(f"{name},{scale[label] + 0.01 * i}")
            folder = feedback / label / ("align" if ok else "notalign")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x")
    (samples / "rewards.csv").write_text("\n".join(rows) + "\n")
    bars = matched_bars(samples, feedback)
    scores = {label: [scale[label] + 0.01 * i for i in range(4)] for label in verdict}
    for label, marks in verdict.items():
        kept = sum(v >= bars[label] for v in scores[label])
        # the expert's share of the class; a class rejected whole keeps its best-scored sample
        assert kept == max(sum(marks), 1), (label, bars[label])


def test_a_rejection_column_short_of_a_class_says_so_beside_its_figures():
    from clinalign.pipeline.compare import rejection_line

    assert rejection_line({"acceptance": 0.5, "short": {}}) == "Rejection sampling kept 50.0% of its draws."
    line = rejection_line({"acceptance": 0.366, "short": {"monocyte": 28}})
    assert "monocyte 28" in line and "FID" in line
    from clinalign.pipeline.demo import format_table

    cols = ("pretrained", "feedback", "no feedback (equal images)", "rejection sampling")
    rnd = {"round": 1, "metrics": {"plausibility": {c: {"value": 0.5} for c in cols}}, "feedback_minus_control": {}}
    rnd["columns"] = {"rejection sampling": {"acceptance": 0.366, "short": {"monocyte": 28}}}
    assert line in format_table({"config": {}, "rounds": [rnd]})


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"synthetic_min_t": 1.0}, "--synthetic_min_t 1.0"), ({"synthetic_share": 0.001}, "--synthetic_share 0.001")],
)
def test_a_bad_finetune_setting_fails_the_round_before_any_work(tmp_path, setting, message):
    """The loop checks the finetune's settings at the round's start, not after sampling and judging."""
    from clinalign.errors import ConfigError
    from clinalign.pipeline.rounds import run_round

    with pytest.raises(ConfigError, match=message):
        run_round(1, tmp_path / "no_checkpoint", tmp_path / "real", None, tmp_path / "out", RoundConfig(**setting))
    assert not (tmp_path / "out").exists()


def test_carry_state_with_guidance_needs_a_model_that_has_its_rejected_classes(pretrained, tmp_path):
    """Round 1 of guidance adds the rejected classes, which have no optimizer state to carry."""
    from clinalign.errors import ConfigError
    from clinalign.pipeline.rounds import run_round

    cfg = dataclasses.replace(TINY_ROUND, objective="guidance", carry_state=True)
    with pytest.raises(ConfigError, match="run round 1 without --carry_state"):
        run_round(1, pretrained, tmp_path / "real", None, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_synthetic_share_splits_each_step_and_keeps_its_size():
    assert RoundConfig().finetune_batches() == (32, 32)
    assert RoundConfig(synthetic_share=0.25).finetune_batches() == (48, 16)
    assert RoundConfig(finetune_batch=4, synthetic_share=0.3).finetune_batches() == (6, 2)


def test_control_batch_sets_the_controls_steps_at_equal_images():
    from clinalign.errors import ConfigError
    from clinalign.pipeline.compare import CompareConfig

    rcfg = RoundConfig(finetune_steps=600, finetune_batch=16)
    assert CompareConfig().control_steps(rcfg) == (1200, 600)  # two control steps per finetuning step
    assert CompareConfig(control_batch=32).control_steps(rcfg) == (600, 600)  # equal images and equal steps
    assert CompareConfig(control_batch=48).control_steps(rcfg) == (400, 600)
    with pytest.raises(ConfigError, match="--control_batch 7"):
        CompareConfig(control_batch=7).control_steps(rcfg)


def test_every_rounds_control_points_are_saved_before_a_later_round_needs_them():
    """At the default batch round 3's equal-steps point (base + 3 x 100) comes before round 2's
    equal-images point (base + 4 x 100): round 2 must save it on its way (the demo once crashed)."""
    from clinalign.pipeline.compare import CompareConfig

    ccfg, rcfg = CompareConfig(rounds=3), RoundConfig(finetune_steps=100, finetune_batch=4)
    segments = [ccfg.control_segment(rcfg, 2000, k) for k in (1, 2, 3)]
    assert [t for t, _ in segments] == [2200, 2400, 2600]
    assert segments[1][1] == [2100, 2200, 2300, 2400]
    for k, (target, saved) in enumerate(segments, start=1):
        needed = {2000 + k * 100, 2000 + k * 200}  # this round's equal steps and equal images
        assert needed <= set(saved) and max(saved) == target
    assert CompareConfig(rounds=3, control_batch=8).control_segment(rcfg, 0, 3) == (300, [100, 200, 300])
