"""The feedback loop: sample -> expert feedback -> reward model -> finetune, K rounds.

Each round keeps its artefacts in ``OUT/round_k/`` as ordinary files, so any step can be
inspected, replaced (e.g. real pathologists' feedback instead of the simulated expert) or
resumed: a step whose output is complete is skipped when the command is rerun.

    round_k/samples/          LABEL_000123.png, manifest.csv, rewards.csv (scored by this round's reward model)
    round_k/feedback/train/   CLASS/align|notalign/ (judgements used to train the reward model)
    round_k/feedback/val/     the held-out share (early stopping and calibration of the reward)
    round_k/reward/           the reward model
    round_k/finetune/         the finetuning run (its latest checkpoint starts round k+1)
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.layouts import ALIGN, NOTALIGN
from ..diffusion.samplers import SAMPLERS
from ..errors import ConfigError, DataError
from ..expert.simulator import CRITERIA_MODES
from ..sampling.sample import SampleConfig
from ..training.checkpoint import find_checkpoint, latest_checkpoint
from ..training.config import OBJECTIVES, REWARD_TRANSFORMS, FinetuneConfig, check_synthetic_min_t
from ..utils.config import mismatches, option
from ..utils.fileio import write_json_atomic
from ..utils.splits import hash01

log = logging.getLogger(__name__)


REWARD_SOURCES = ("verdicts", "reward_model")
BLIND_CONTROLS = ("", "shuffled", "all-rejected")


@dataclass
class RoundConfig:
    """One round's settings (``clinalign loop`` flags; the demo builds one too)."""

    samples_per_class: int = option(64, "samples drawn per class for the expert to judge")
    sampler: str = option("dpm++", "sampler for the samples the expert judges", choices=SAMPLERS)
    steps: int = option(20, "denoising steps per sample")
    sample_batch: int = option(64, "images per sampling forward pass")
    tau: float = option(0.9, "simulated expert's strictness (at 0.5 a small expert accepts nearly everything)")
    noise: float = option(0.0, "simulated expert's label-noise rate")
    expert_criteria: str = option("classifier", "what the simulated expert's verdicts rest on", choices=CRITERIA_MODES)
    val_share: float = option(0.2, "share of the feedback held out to calibrate / early-stop the reward model")
    reward_epochs: int = option(15, "reward model training epochs")
    reward_image_size: int = option(
        0,
        "reward model input size (0 = the generator's image size, so that real and "
        "synthetic images reach it at the same native resolution)",
    )
    finetune_steps: int = option(300, "finetuning steps per round")
    # Measured (docs/feedback.md): the loop's finetune sees a full real batch at beta 1 beside a
    # full batch of scored samples, at 5x the pretraining lr of the seed, with thresholded rewards;
    # the seed's image_finetuned.py keeps the published beta 0.3 and raw rewards.
    finetune_lr: float = option(5e-4, "finetuning learning rate")
    finetune_lr_decay: float = option(
        1.0,
        "each round finetunes at the previous round's lr times this (the no-feedback control follows the "
        "same schedule, segment by segment)",
    )
    finetune_batch: int = option(32, "real and synthetic images per finetuning step (each, at --synthetic_share 0.5)")
    # The control of equal images sees twice the real cells a half-and-half finetune does; a smaller
    # synthetic part narrows that (on PBC it left FID where it was: docs/feedback.md).
    synthetic_share: float = option(
        0.5,
        "share of each finetuning step's 2 x finetune_batch images that are scored samples, the rest real "
        "(the samples' loss is a mean over them, so a smaller share weighs as much in all)",
    )
    beta: float = option(1.0, "weight of the real-data loss in the finetune")
    reward_transform: str = option("threshold", "how rewards become loss weights", choices=REWARD_TRANSFORMS)
    synthetic_min_t: float = option(
        FinetuneConfig.synthetic_min_t,
        "the samples train only at timesteps t >= this share of the schedule; detail comes from real images alone",
    )
    # The reward model as a filter beat every finetune by ~20 points on PBC (docs/feedback.md);
    # training on what it keeps from many draws is how the finetune can learn that filter.
    reward_draws_per_class: int = option(
        0,
        "more samples per class drawn each round for the reward model alone to judge: it keeps, per class, "
        "the share the expert accepted, and the finetune trains on them beside the expert's (0: none)",
    )
    rewards_from: str = option(
        "verdicts",
        "the finetune's rewards: the expert's own verdicts for the images it judged (the reward model scores any "
        "others), or the reward model's scores for all (the published pipeline)",
        choices=REWARD_SOURCES,
    )
    objective: str = option(
        FinetuneConfig.objective,
        "reward-weighted (the paper's), Diffusion-KTO on the expert's likes/dislikes, or guidance away "
        "from the rejected samples",
        choices=OBJECTIVES,
    )
    kto_beta: float = option(FinetuneConfig.kto_beta, "KTO's scale on the loss difference to the start model")
    guidance_scale: float = option(FinetuneConfig.guidance_scale, "--objective guidance: the sampling strength")
    guidance_accepted_weight: float = option(
        FinetuneConfig.guidance_accepted_weight,
        "--objective guidance: loss weight of the accepted samples under their own class (0: the classes "
        "learn from real images only)",
    )
    # The rejected class learns what the model gets wrong unguided, since guidance measures the
    # step away from it against the unguided prediction; judging guided samples instead makes the
    # rejected class chase the guided output round after round (measured: docs/feedback.md).
    judge_guidance: float = option(
        0.0,
        "guidance strength of the samples the expert judges (0 = the model's unguided output; -1 = as "
        "users sample); evaluation always samples as users do",
    )
    # Where a gain comes from: the same loop with the expert's choice of images taken away.
    blind_control: str = option(
        "",
        "a control without the expert's eye: 'shuffled' permutes the verdicts within each class (as many "
        "rejected per class, chosen blind), 'all-rejected' rejects every sample",
        choices=BLIND_CONTROLS,
    )
    ema_rate: str = option("0.999", "EMA rate of the finetune")
    carry_state: bool = option(
        FinetuneConfig.carry_state,
        "each round's finetune continues the previous model's training (raw weights, EMA, optimizer) "
        "instead of restarting from its EMA weights; the first round needs a base saved with its state",
    )
    use_fp16: bool = option(False, "bf16 autocast for sampling and finetuning")
    seed: int = option(0, "seeds sampling, the expert, the reward model and the finetune")
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, mps")

    def round_lr(self, k: int) -> float:
        """Round ``k``'s finetune lr (1-based)."""
        if not self.finetune_lr_decay > 0:
            raise ConfigError(
                f"--finetune_lr_decay {self.finetune_lr_decay}: give a factor above 0 (1 keeps the lr; 0.5 halves it "
                "each round)"
            )
        return self.finetune_lr * self.finetune_lr_decay ** (k - 1)

    def finetune_batches(self) -> tuple[int, int]:
        """(real, synthetic) images per finetuning step: 2 x finetune_batch split by synthetic_share."""
        total = 2 * self.finetune_batch
        synthetic = round(total * self.synthetic_share)
        if not 0 < synthetic < total:
            raise ConfigError(
                f"--synthetic_share {self.synthetic_share}: of {total} images per step that leaves {synthetic} "
                "samples; give a share that keeps at least one real image and one sample (0.5: half each)"
            )
        return total - synthetic, synthetic

    def sample_config(self, num_samples: int, seed: int, guidance: float = -1.0) -> SampleConfig:
        return SampleConfig(
            num_samples=num_samples,
            guidance=guidance,
            sampler=self.sampler,
            steps=self.steps,
            batch_size=self.sample_batch,
            seed=seed,
            device=self.device,
            use_fp16=self.use_fp16,
        )


@dataclass
class RoundResult:
    round: int
    samples: Path
    feedback: Path
    reward: Path
    checkpoint: Path
    expert_plausible_rate: float | None = None
    mean_reward: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class FeedbackSource:
    """Where a round's verdicts come from.

    ``folder``: judgements a user puts in ``CLASS/align|notalign`` (one round); ``db``: the review
    app's database, each image judged by ``per_image`` reviewers, ``qc_share`` of the queue blind real
    images, the loop waiting ``review_timeout_s`` (0 = until done); neither: the simulated expert,
    trained on ``expert_real`` (real images the generator never saw; default its own training images).
    """

    folder: Path | None = None
    db: str = ""
    per_image: int = 1
    qc_share: float = 0.1
    review_timeout_s: float = 0.0
    expert_real: Path | None = None
    expert_dir: Path | None = None


def _val_member(file_id: str, share: float) -> bool:
    """Deterministic split by file name, so a rerun holds out the same images."""
    return hash01("clinalign-feedback-val", file_id) < share


def split_feedback(folder: Path, share: float) -> tuple[Path, Path]:
    """Move part of ``folder/CLASS/align|notalign`` into a held-out copy (train/ and val/ beside)."""
    train, val = folder / "train", folder / "val"
    if train.exists() and val.exists():
        return train, val
    tmp = folder / ".split"
    shutil.rmtree(tmp, ignore_errors=True)
    for cls_dir in sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in ("train", "val")
    ):
        for sub in (ALIGN, NOTALIGN):
            for img in sorted((cls_dir / sub).glob("*")) if (cls_dir / sub).is_dir() else []:
                part = "val" if _val_member(img.name, share) else "train"
                dest = tmp / part / cls_dir.name / sub
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(img, dest / img.name)
    for part in ("train", "val"):
        (tmp / part).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder / part, ignore_errors=True)
        (tmp / part).rename(folder / part)
    shutil.rmtree(tmp, ignore_errors=True)
    return train, val


class AwaitingFeedback(Exception):
    """The round needs judgements that are not there yet; rerun the command once they are."""


def review_feedback(
    source: FeedbackSource, batch: str, samples: Path, reference: Path, out: Path, poll_s: float = 10.0
) -> Path:
    """Load ``samples`` into the review app as ``batch`` (once), wait until every image is judged,
    then export the majority verdicts into ``out`` (CLASS/align|notalign)."""
    from ..review.db import Store
    from ..review.export import export_feedback
    from ..review.ingest import add_batch
    from ..review.stats import dashboard

    store = Store(source.db)
    with store.read() as s:
        board = dashboard(s)
    if batch not in {b["name"] for b in board["batches"]}:
        reviewers = [r["name"] for r in board["reviewers"]]
        if len(reviewers) < source.per_image:
            raise AwaitingFeedback(
                f"{store.safe_url} has {len(reviewers)} reviewer(s) and each image needs {source.per_image}: add "
                f"them with `clinalign review add-reviewer NAME --db URL` (it prints each private link), start "
                "`clinalign review serve --db URL`, then rerun this command"
            )
        add_batch(store, samples, reference=reference, per_image=source.per_image, qc_share=source.qc_share, name=batch)
        log.info(
            "loaded %s into %s as batch %r (%d reviewer(s) per image, %.0f %% of the queue blind real QC); "
            "reviewers %s "
            "judge it through their private links",
            samples,
            store.safe_url,
            batch,
            source.per_image,
            100 * source.qc_share,
            ", ".join(reviewers),
        )
    start = time.monotonic()
    if source.review_timeout_s:  # a short timeout is not outwaited by one long poll
        poll_s = min(poll_s, max(0.2, source.review_timeout_s / 5))
    while True:
        with store.read() as s:
            totals = dashboard(s, batch)["totals"]
        if totals["required"] and totals["done"] >= totals["required"]:
            break
        if source.review_timeout_s and time.monotonic() - start > source.review_timeout_s:
            raise AwaitingFeedback(
                f"batch {batch!r}: {totals['done']} of {totals['required']} verdicts so far; "
                "rerun the command once the experts have finished"
            )
        time.sleep(poll_s)
    export_feedback(store, out, rule="majority", batch=batch, overwrite=True)
    return out


def _timed(seconds: dict[str, float], key: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            seconds[key] = round(time.perf_counter() - self.t, 1)

    return _T()


def run_round(
    k: int,
    checkpoint: Path,
    real_train: Path,
    real_val: Path | None,
    out: Path,
    cfg: RoundConfig,
    source: FeedbackSource | None = None,
    progress: bool = False,
) -> RoundResult:
    """One round; each step is skipped when its output is already complete.

    ``real_train``: the generator's training images (the finetune's anchor and the reward model's
    real images); ``source``: where the verdicts come from (default: the simulated expert).
    """
    from ..sampling.sample import sample_folder

    source = source or FeedbackSource()
    at_lr = replace(cfg, finetune_lr=cfg.round_lr(k))  # bad settings fail before any work
    check_synthetic_min_t(cfg.synthetic_min_t)
    cfg.finetune_batches()
    ck = find_checkpoint(checkpoint)
    if cfg.carry_state and cfg.objective == "guidance" and not ck.guidance:
        raise ConfigError(
            f"--carry_state with --objective guidance: {ck.path} has no rejected classes yet, and the "
            "round that adds them cannot carry the optimizer state; run round 1 without --carry_state"
        )
    rdir = out / f"round_{k}"
    rdir.mkdir(parents=True, exist_ok=True)
    check_round_settings(rdir, cfg)
    secs: dict[str, float] = {}
    n = cfg.samples_per_class * len(ck.sample_classes)

    samples = rdir / "samples"
    with _timed(secs, "sample"):
        scfg = cfg.sample_config(n, cfg.seed + 1000 * k, guidance=cfg.judge_guidance)
        sample_folder(ck, samples, scfg, progress=progress)

    fb = rdir / "feedback"
    with _timed(secs, "feedback"):
        expert_rate = _collect_feedback(k, ck, samples, fb, real_train, out, cfg, source, progress)
    with _timed(secs, "reward"):
        reward_dir = train_and_score(rdir, ck, samples, fb, real_train, real_val, cfg)
    mean_reward = _mean_reward(samples / "rewards.csv")
    draws = None
    if cfg.reward_draws_per_class:
        with _timed(secs, "draws"):
            draws = draw_for_the_filter(k, ck, rdir, reward_dir, cfg, progress)

    with _timed(secs, "finetune"):
        tuned = finetune_on_feedback(
            ck.path, real_train, samples, fb, rdir / "finetune", at_lr, cfg.seed + k, rdir, progress, draws
        )
    result = RoundResult(k, samples, fb, reward_dir, tuned, expert_rate, mean_reward, secs)
    log.info("round %d done: %s", k, {key: v for key, v in asdict(result).items() if key != "seconds"})
    return result


#: Settings that do not change what a round produces (where it runs, how many images per pass).
_RUN_ONLY = ("device", "sample_batch")


def check_round_settings(rdir: Path, cfg: RoundConfig) -> None:
    """Record the round's settings in ``round.json``; ConfigError if the folder was run with others.

    Every step of a round is skipped once its output exists, so a rerun with, say, another
    ``--objective`` or ``--blind_control`` would otherwise report the old round under the new name.
    """
    record = rdir / "round.json"
    now = {k: v for k, v in asdict(cfg).items() if k not in _RUN_ONLY}
    changed = mismatches(json.loads(record.read_text()), now, what="round.json") if record.exists() else []
    if changed:
        raise ConfigError(
            f"{rdir}: settings disagree with the round's: {', '.join(changed)}; rerun with the round's settings "
            f"to resume it, or give a new --out (or delete {rdir}) to run the round again"
        )
    write_json_atomic(record, now)


def _collect_feedback(
    k: int,
    ck,
    samples: Path,
    fb: Path,
    real_train: Path,
    out: Path,
    cfg: RoundConfig,
    source: FeedbackSource,
    progress: bool,
) -> float | None:
    """The round's verdicts in ``fb`` (CLASS/align|notalign): from the review database, a folder the
    user filled, or the simulated expert; returns the expert's plausible rate when it judged."""
    from ..expert.simulator import ExpertConfig, simulate

    if source.db and not fb.exists():
        review_feedback(source, f"round_{k}", samples, real_train, fb)
    elif source.folder is not None and not fb.exists():
        if not source.folder.exists():
            raise AwaitingFeedback(
                f"round {k}: judge the samples in {samples} and put the verdicts in {source.folder} "
                "(CLASS/align/*.png, CLASS/notalign/*.png; keep the sample file names), then rerun the same command"
            )
        check_judged_are_samples(source.folder, samples)
        shutil.copytree(source.folder, fb)
    elif source.folder is None and not source.db and not (fb / "judgements.csv").exists():
        shutil.rmtree(fb, ignore_errors=True)
        expert_cfg = ExpertConfig(image_size=ck.model.image_size, seed=cfg.seed, criteria=cfg.expert_criteria)
        result = simulate(
            samples,
            fb,
            source.expert_real or real_train,
            tau=cfg.tau,
            noise=cfg.noise,
            seed=cfg.seed,
            expert_dir=source.expert_dir or out / "expert",
            config=expert_cfg,
            progress=progress,
        )
        return result.plausible_rate
    return None


def check_judged_are_samples(feedback: Path, samples: Path) -> None:
    """DataError unless every judged image is one of ``samples``, byte for byte (names alone repeat across rounds)."""
    from ..data.naming import list_images

    known = {p.name: p for p in list_images(samples)}
    judged = [p for p in feedback.rglob("*") if p.is_file() and p.parent.name in (ALIGN, NOTALIGN)]
    foreign = [p for p in judged if p.name not in known or p.read_bytes() != known[p.name].read_bytes()]
    if foreign:
        raise DataError(
            f"{feedback}: {len(foreign)} of {len(judged)} judged image(s) are not this round's samples, e.g. "
            f"{foreign[0]} differs from {samples / foreign[0].name}; the verdicts were made on other images. Judge "
            f"the images in {samples} (keep their file names) and put the verdicts in a new folder"
        )


def train_and_score(
    rdir: Path, ck, samples: Path, fb: Path, real_train: Path, real_val: Path | None, cfg: RoundConfig
) -> Path:
    """The round's reward model (real images + the split feedback), at the generator's resolution so that
    real and synthetic images reach it alike, and ``samples/rewards.csv``; each skipped when done."""
    from ..reward.score import score_folder
    from ..reward.train import TrainConfig, train_reward

    fb_train, fb_val = split_feedback(fb, cfg.val_share)
    reward_dir = rdir / "reward"
    if not (reward_dir / "reward.safetensors").exists():
        train_reward(
            TrainConfig(
                train_dir=real_train,
                train_anno_dir=fb_train,
                val_dir=real_val,
                val_anno_dir=fb_val if any(fb_val.iterdir()) else None,
                save_dir=reward_dir,
                epochs=cfg.reward_epochs,
                image_size=cfg.reward_image_size or ck.model.image_size,
                seed=cfg.seed,
                device="cpu" if cfg.device == "cpu" else "auto",
            )
        )
    if not (samples / "rewards.csv").exists():
        score_folder(reward_dir, samples, samples / "rewards.csv")
    return reward_dir


def draw_for_the_filter(k: int, ck, rdir: Path, reward_dir: Path, cfg: RoundConfig, progress: bool = False) -> Path:
    """``rdir/draws``: ``cfg.reward_draws_per_class`` more samples per class from the round's model,
    scored by the round's reward model (``draws/rewards.csv``); each step skipped when done."""
    from ..reward.score import score_folder
    from ..sampling.sample import sample_folder

    draws = rdir / "draws"
    n = cfg.reward_draws_per_class * len(ck.sample_classes)
    # seeds apart from the judged samples' (seed + 1000 k + i for i < samples_per_class * classes)
    scfg = cfg.sample_config(n, cfg.seed + 1000 * k + 500, guidance=cfg.judge_guidance)
    sample_folder(ck, draws, scfg, progress=progress)
    if not (draws / "rewards.csv").exists():
        score_folder(reward_dir, draws, draws / "rewards.csv")
    return draws


def draw_id(name: str) -> str:
    """A draw's ID in the finetune's set, apart from the judged samples' (the class prefix kept)."""
    prefix, _, rest = name.partition("_")
    return f"{prefix}_draw{rest}"


def draw_rewards(draws: Path, feedback: Path) -> dict[str, float]:
    """The draws as the filter judges them (``{draw ID: 1 kept / 0 not}``): per class, the reward model
    keeps the share of its draws that the expert accepted of the round's samples."""
    from ..data.naming import label_of
    from ..training.finetune import read_rewards_csv
    from .bars import expert_shares, share_bars

    scores = read_rewards_csv(draws / "rewards.csv")
    bars = share_bars(scores, expert_shares(feedback))
    return {draw_id(n): float(s >= bars[label_of(n)]) for n, s in scores.items()}


def finetune_set(samples: Path, draws: Path, out: Path) -> Path:
    """``out``: the judged samples and the draws (renamed by :func:`draw_id`) as one folder of links,
    with a manifest of their classes; rebuilt whole, so it never mixes two rounds' files."""
    from ..data.naming import declared_classes, list_images

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = ["ID,class"]
    for folder, rename in ((samples, str), (draws, draw_id)):
        paths = list_images(folder)
        for path, cls in zip(paths, declared_classes(paths, folder)):
            name = rename(path.name)
            _link(path, tmp / name)
            rows.append(f"{name},{cls}")
    (tmp / "manifest.csv").write_text("\n".join(rows) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _link(src: Path, dest: Path) -> None:
    try:
        dest.hardlink_to(src)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, dest)


def finetune_on_feedback(
    checkpoint: Path,
    real_train: Path,
    samples: Path,
    feedback: Path,
    run: Path,
    cfg: RoundConfig,
    seed: int,
    work_dir: Path,
    progress: bool = False,
    draws: Path | None = None,
) -> Path:
    """Finetune ``checkpoint`` on ``samples`` scored in their ``rewards.csv`` (KTO: on the verdicts in
    ``feedback``, written to ``work_dir/verdicts.csv``), and on ``draws`` as the filter judged them;
    skipped when ``run`` is already complete."""
    from ..training.finetune import finetune

    done = latest_checkpoint(run)
    if done is None or done.step < cfg.finetune_steps:
        real_batch, synthetic_batch = cfg.finetune_batches()
        synthetic = samples if draws is None else finetune_set(samples, draws, work_dir / "finetune_data")
        finetune(
            {
                "resume_checkpoint": str(checkpoint),
                "data_pre_dir": str(real_train),
                "data_mod_dir": str(synthetic),
                "objective": cfg.objective,
                "kto_beta": cfg.kto_beta,
                "guidance_scale": cfg.guidance_scale,
                "guidance_accepted_weight": cfg.guidance_accepted_weight,
                "rewards": str(finetune_rewards(feedback, samples, work_dir, cfg, draws)),
                "run_dir": str(run),
                "beta": cfg.beta,
                "reward_transform": cfg.reward_transform,
                "synthetic_min_t": cfg.synthetic_min_t,
                "max_steps": cfg.finetune_steps,
                "lr": cfg.finetune_lr,
                "batch_size": real_batch,
                "synthetic_batch_size": synthetic_batch,
                "ema_rate": cfg.ema_rate,
                "carry_state": cfg.carry_state,
                "use_fp16": cfg.use_fp16,
                "seed": seed,
                "save_interval": max(50, cfg.finetune_steps // 4),
                "log_interval": 25,
                "device": cfg.device,
            },
            progress=progress,
        )
    return latest_checkpoint(run).path


def finetune_rewards(feedback: Path, samples: Path, rdir: Path, cfg: RoundConfig, draws: Path | None = None) -> Path:
    """The rewards the finetune weights samples by (``ID,rewards``), from ``cfg.rewards_from``, and
    the ``draws`` as the filter judged them (:func:`draw_rewards`).

    Where an expert judged an image, its verdict is better information than the reward model's
    estimate of it (measured: on toy cells the round-1 reward model passed 13 % of the samples the
    simulated expert passed 53 % of); the reward model is what extends the expert's judgement to
    samples nobody judged. KTO learns from the verdicts alone.
    """
    from ..training.finetune import read_rewards_csv, write_rewards_csv

    if cfg.objective == "kto":
        path = verdicts_csv(feedback, samples, rdir)
    elif cfg.rewards_from == "reward_model":
        path = samples / "rewards.csv"
    else:
        verdict = _verdicts(feedback)
        merged = {n: float(verdict.get(n, s)) for n, s in read_rewards_csv(samples / "rewards.csv").items()}
        path = write_rewards_csv(rdir / "finetune_rewards.csv", merged)
        log.info(
            "finetune rewards: %d expert verdicts, %d reward-model scores",
            sum(n in verdict for n in merged),
            sum(n not in verdict for n in merged),
        )
    if draws is not None:
        kept = draw_rewards(draws, feedback)
        path = write_rewards_csv(rdir / "finetune_rewards_with_draws.csv", read_rewards_csv(path) | kept)
        log.info("finetune rewards: %d draws, the reward model keeping %d", len(kept), int(sum(kept.values())))
    if not cfg.blind_control:
        return path
    blinded = blind_rewards(read_rewards_csv(path), cfg.blind_control, cfg.seed)
    log.info("blind control %r: the expert's choice of images is not used", cfg.blind_control)
    return write_rewards_csv(rdir / f"finetune_rewards_{cfg.blind_control}.csv", blinded)


def blind_rewards(rewards: dict[str, float], mode: str, seed: int = 0) -> dict[str, float]:
    """The rewards with the expert's choice of images removed: ``shuffled`` permutes them within each
    declared class (the same count accepted per class), ``all-rejected`` sets every one to 0."""
    from ..data.naming import label_of

    if mode == "all-rejected":
        return dict.fromkeys(rewards, 0.0)
    if mode != "shuffled":
        raise ConfigError(f"unknown blind control {mode!r}; choose one of {', '.join(BLIND_CONTROLS[1:])}")
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for cls in sorted({label_of(name) for name in rewards}):
        names = sorted(name for name in rewards if label_of(name) == cls)
        values = [rewards[name] for name in names]
        rng.shuffle(values)
        out.update(zip(names, values))
    return out


def _verdicts(feedback: Path) -> dict[str, int]:
    """``{image ID: 1 plausible / 0 implausible}`` from a feedback folder (CLASS/align|notalign, any depth)."""
    verdict = {p.name: 1 for p in feedback.rglob("align/*") if p.is_file()}
    verdict |= {p.name: 0 for p in feedback.rglob("notalign/*") if p.is_file()}
    return verdict


def verdicts_csv(feedback: Path, samples: Path, rdir: Path) -> Path:
    """The expert's own verdicts as ``ID,rewards`` (1 plausible, 0 not): what KTO learns from.

    Every sample must have been judged; KTO uses the judgements directly, not the reward model.
    """
    from ..data.naming import list_images

    verdict = _verdicts(feedback)
    names = [p.name for p in list_images(samples)]
    missing = [n for n in names if n not in verdict]
    if missing:
        raise DataError(
            f"{feedback}: {len(missing)} sample(s) of {samples} have no verdict, e.g. {missing[0]}; "
            "--objective kto needs every sample judged (or use the reward-weighted objective)"
        )
    from ..training.finetune import write_rewards_csv

    return write_rewards_csv(rdir / "verdicts.csv", {n: verdict[n] for n in names})


def _mean_reward(path: Path) -> float:
    from ..training.finetune import read_rewards_csv

    values = list(read_rewards_csv(path).values())
    return sum(values) / len(values) if values else float("nan")


def run_loop(
    checkpoint: str | Path,
    real_train: str | Path,
    out: str | Path,
    rounds: int = 1,
    real_val: str | Path | None = None,
    cfg: RoundConfig | None = None,
    source: FeedbackSource | None = None,
    progress: bool = False,
) -> list[RoundResult]:
    """K rounds of sample -> feedback -> reward -> finetune, each starting from the previous round's model."""
    cfg = cfg or RoundConfig()
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    source = source or FeedbackSource()
    if source.folder is not None and rounds > 1:
        raise ConfigError(
            "--feedback gives the judgements of one round's samples; run --rounds 1, then the next round with "
            "--checkpoint OUT/round_1/finetune and a new --out and --feedback, or use the review app (--db)"
        )
    out = Path(out)
    current = find_checkpoint(checkpoint).path
    results = []
    for k in range(1, rounds + 1):
        res = run_round(k, current, Path(real_train), Path(real_val) if real_val else None, out, cfg, source, progress)
        results.append(res)
        current = res.checkpoint
    return results


def round_summary(results: list[RoundResult]) -> list[dict[str, Any]]:
    return [
        {
            "round": r.round,
            "expert_plausible_rate": r.expert_plausible_rate,
            "mean_reward": r.mean_reward,
            "checkpoint": str(r.checkpoint),
            **{f"seconds_{k}": v for k, v in r.seconds.items()},
        }
        for r in results
    ]
