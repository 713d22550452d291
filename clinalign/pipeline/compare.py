"""Feedback against the same cost without feedback: the method's one claim, measured round by round.

From one pretrained base, K rounds of expert feedback (:func:`clinalign.pipeline.rounds.run_round`)
are compared after every round with:

- **no feedback, equal images**: the base's own training continued on the generator's real
  images (G) until it has processed as many images as the feedback run (a feedback step
  processes a real and a synthetic batch, so twice the steps);
- **no feedback, equal steps**: the same continuation at as many steps as the feedback run;
- **rejection sampling**: the base, keeping only samples the round's reward model accepts
  (``reward >= min_reward``) — the cheapest use of the reward model, paid for in extra draws.

Every column is sampled with the same sampler and seeds and judged by one :class:`Evaluator`:
an oracle trained on pool O (which neither the generator nor the expert saw), FID and the
manifold against O, memorisation against G, the clinical checklist calibrated on O, and 95 %
bootstrap intervals, plus the interval of feedback minus the equal-images control.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..evaluate import bootstrap as bs
from ..evaluate.oracle import OracleConfig
from ..evaluate.run import Evaluator, MetricConfig, SetResult, json_safe, lookup
from ..sampling.sample import sample_folder
from ..training.checkpoint import Checkpoint, find_checkpoint, list_checkpoints
from ..utils.config import option
from ..utils.fileio import write_json_atomic, write_text_atomic
from .bars import matched_bars
from .rounds import FeedbackSource, RoundConfig, run_round

log = logging.getLogger(__name__)

COLUMNS = ("pretrained", "feedback", "no feedback (equal images)", "no feedback (equal steps)", "rejection sampling")

#: (row label, metric path in an evaluation's metrics); lower is better for FID and memorisation.
ROWS = [
    ("plausibility", ("plausibility", "rate")),
    ("  class-consistent", ("plausibility", "oracle_rate")),
    ("  on-manifold", ("plausibility", "manifold_rate")),
    ("clinical checklist", ("checklist", "all")),
    ("FID (domain features)", ("fid",)),
    ("FID at the samples' class mix", ("fid_class_mix",)),
    ("intra-class FID", ("fid_intra",)),
    ("precision", ("prdc", "precision")),
    ("recall", ("prdc", "recall")),
    ("sharpness (real test = 1)", ("sharpness", "relative_to_real")),
    ("near copies of G (features)", ("memorisation", "feature", "near_copy_fraction")),
    ("near copies of G (pixels)", ("memorisation", "pixel", "near_copy_fraction")),
    ("TSTR accuracy", ("utility", "synthetic_only", "accuracy")),
]
BOOTSTRAPPED = {
    ("plausibility", "rate"),
    ("plausibility", "oracle_rate"),
    ("plausibility", "manifold_rate"),
    ("checklist", "all"),
    ("fid",),
    ("fid_class_mix",),
    ("prdc", "precision"),
    ("memorisation", "feature", "near_copy_fraction"),
}


@dataclass
class CompareConfig:
    rounds: int = option(3, "feedback rounds, each judged against its controls")
    eval_per_class: int = option(96, "samples per class every column is judged on")
    eval_seed: int = option(7, "sampling seed of the judged samples (the same for every column)")
    rejection: bool = option(True, "add rejection sampling from the base with each round's reward model")
    min_reward: float = option(
        0.0,
        "rejection sampling keeps samples whose reward is at least this (0: per class, the bar at which the "
        "reward model accepts, of the base's draws of that class, the share the expert accepted of the round's)",
    )
    rejection_draw_factor: int = option(
        50, "rejection sampling gives up on a class after drawing this many times its quota"
    )
    oracle_epochs: int = option(20, "evaluation oracle training epochs (its real held-out accuracy is reported)")
    oracle_width: int = option(32, "evaluation oracle width")
    utility: bool = option(True, "train TSTR classifiers for every column")
    # At its default batch the control takes two optimizer steps per finetuning step; at
    # 2 x finetune_batch it takes as many, on as many images, so steps cannot explain a gap
    # (on PBC they did not: docs/feedback.md).
    control_batch: int = option(
        0,
        "real images per step of the no-feedback control (0: finetune_batch, two steps per finetuning "
        "step at equal images; 2 x finetune_batch: equal images and equal steps at once)",
    )

    def control_batch_size(self, rcfg: RoundConfig) -> int:
        return self.control_batch or rcfg.finetune_batch

    def control_steps(self, rcfg: RoundConfig) -> tuple[int, int]:
        """(equal images, equal steps): the control's steps per round beside one round of finetuning."""
        batch = self.control_batch_size(rcfg)
        images = rcfg.finetune_steps * 2 * rcfg.finetune_batch
        if batch < 1 or images % batch:
            raise ConfigError(
                f"--control_batch {self.control_batch}: a round's {images} finetuning images are not a whole "
                "number of control steps; give a divisor of them (0: --finetune_batch)"
            )
        return images // batch, rcfg.finetune_steps

    def control_segment(self, rcfg: RoundConfig, base_step: int, k: int) -> tuple[int, list[int]]:
        """(the step the control trains to in round ``k``, the comparison points it saves on the way).

        The points are every round's: at the default batch round k's equal-steps point (base + k x
        steps) lies before round k-1's equal-images point (base + 2(k-1) x steps) from round 3 on,
        so it must be saved while an earlier round trains past it."""
        equal_images, equal_steps = self.control_steps(rcfg)
        target = base_step + k * max(equal_images, equal_steps)
        points = {base_step + j * n for j in range(1, self.rounds + 1) for n in (equal_images, equal_steps)}
        return target, sorted(p for p in points if p <= target)


@dataclass
class Pools:
    """Folders of the real pools: G (the generator's), E (the expert's), O (the oracle's), test."""

    generator: Path
    expert: Path
    oracle: Path
    test: Path
    summary: dict[str, Any] = field(default_factory=dict)  # sizes and fingerprints, for the record


def judged_folder(out: str | Path, name: str) -> Path:
    """Where a comparison keeps the samples of the column ``name`` (``"no feedback (equal images) r2"``)."""
    return Path(out) / "judged" / name.replace(" ", "_").replace("(", "").replace(")", "")


def control_checkpoint(run: Path, step: int) -> Checkpoint:
    for path in list_checkpoints(run):
        ck = find_checkpoint(path)
        if ck.step == step:
            return ck
    raise FileNotFoundError(f"{run}: no checkpoint at step {step}")


def continue_training(
    base: Checkpoint,
    data: Path,
    run: Path,
    total_steps: int,
    cfg: RoundConfig,
    save_steps: list[int],
    lr: float,
    batch: int,
    progress: bool = False,
) -> float:
    """The no-feedback control: the base's training continued on real images only, at ``lr`` and
    ``batch``, with a checkpoint at each of ``save_steps`` (the comparison points); returns the
    seconds this call trained."""
    from ..training.pretrain import pretrain

    start = time.perf_counter()
    pretrain(
        {
            "data_dir": str(data),
            "run_dir": str(run),
            "resume_checkpoint": str(base.path),
            "max_steps": total_steps,
            "lr": lr,
            "batch_size": batch,
            "ema_rate": ",".join(base.ema_rates) or "0.999",
            "save_interval": 10**9,
            "log_interval": max(1, (min(save_steps) - base.step) // 4),
            "use_fp16": cfg.use_fp16,
            "seed": cfg.seed,
            "device": cfg.device,
        },
        progress=progress,
        save_steps=save_steps,
    )
    return time.perf_counter() - start


def rejection_line(info: dict[str, Any]) -> str:
    """How much rejection sampling kept, and which classes it left short (their absence is in its FID)."""
    acc, short = info.get("acceptance"), info.get("short") or {}
    text = f"Rejection sampling kept {acc:.1%} of its draws." if acc is not None else ""
    if short:
        missing = ", ".join(f"{c} {n}" for c, n in sorted(short.items()))
        text += f" Short of its quota ({missing}): its FID and recall measure a set missing those."
    return text


def make_evaluator(
    pools: Pools, image_size: int, ccfg: CompareConfig, out: Path, seed: int = 0, progress: bool = False
) -> Evaluator:
    """The one judge of every column: oracle and reference on O, test split, memorisation against G."""
    return Evaluator(
        pools.oracle,
        pools.test,
        generator_data=pools.generator,
        models_dir=Path(out) / "evaluation-models",
        oracle_config=OracleConfig(
            image_size=image_size, epochs=ccfg.oracle_epochs, width=ccfg.oracle_width, seed=seed
        ),
        metric_config=MetricConfig(seed=seed, utility=MetricConfig().utility if ccfg.utility else None),
        pools=pools.summary,
        progress=progress,
    )


class Comparison:
    """Runs the rounds and their controls from one base and judges every column (see the module doc)."""

    def __init__(
        self,
        base: str | Path,
        pools: Pools,
        out: str | Path,
        rcfg: RoundConfig,
        ccfg: CompareConfig,
        progress: bool = False,
        evaluator: Evaluator | None = None,
    ):
        self.base = find_checkpoint(base)
        self.pools, self.out, self.rcfg, self.ccfg, self.progress = pools, Path(out), rcfg, ccfg, progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.evaluator = evaluator or make_evaluator(
            pools, self.base.model.image_size, ccfg, self.out, rcfg.seed, progress
        )
        self.n_classes = len(self.base.sample_classes)
        self.seconds: dict[str, float] = {"feedback": 0.0, "control": 0.0}
        self.results: dict[str, SetResult] = {}
        self.real_ceiling: dict[str, float] | None = None  # what real test images score, once judged

    # -- one column ----------------------------------------------------------------------------

    def judge(self, name: str, checkpoint: Checkpoint, accept=None) -> tuple[SetResult | None, dict[str, Any]]:
        """Sample the column with the shared seed and judge it (None when rejection sampling kept nothing)."""
        folder = judged_folder(self.out, name)
        scfg = self.rcfg.sample_config(self.ccfg.eval_per_class * self.n_classes, self.ccfg.eval_seed)
        if accept is not None:
            scfg = replace(scfg, max_draw_factor=self.ccfg.rejection_draw_factor)
        start = time.perf_counter()
        drawn = sample_folder(checkpoint, folder, scfg, accept=accept, progress=self.progress)
        info = {
            "checkpoint": str(checkpoint.path),
            "step": checkpoint.step,
            "sample_seconds": round(time.perf_counter() - start, 1),
        }
        if accept is not None:
            info.update(
                acceptance=drawn.acceptance_rate, draws_per_kept=1 / max(drawn.acceptance_rate, 1e-9), short=drawn.short
            )
        if not drawn.per_class or not sum(drawn.per_class.values()):
            log.warning("%s: no sample passed; nothing to judge", name)
            return None, info
        full = self.evaluator.judge(folder)
        if self.real_ceiling is None:  # the same real images for every column
            self.real_ceiling = real_ceiling(full.metrics["real"]["real_test"])
        result = full.samples
        result.name = name
        self.results[name] = result
        return result, info

    # -- the rounds ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        rcfg = self.rcfg
        base_step = self.base.step
        table: dict[str, Any] = {
            "oracle_test_accuracy": self.evaluator.models.info.get("test_accuracy"),
            "pools": self.pools.summary,
            "base": {"checkpoint": str(self.base.path), "step": base_step},
            "round_config": asdict(rcfg),
            "compare_config": asdict(self.ccfg),
            "rounds": [],
        }
        self.ccfg.control_steps(rcfg)  # a bad --control_batch fails before any work
        _, base_info = self.judge("pretrained", self.base)
        table["real_test"] = self.real_ceiling
        current = self.base.path
        for k in range(1, self.ccfg.rounds + 1):
            t = time.perf_counter()
            source = FeedbackSource(expert_real=self.pools.expert)
            r = run_round(k, current, self.pools.generator, None, self.out, rcfg, source, self.progress)
            self.seconds["feedback"] += time.perf_counter() - t
            current = r.checkpoint
            self.check_judges_never_saw_g()
            target, points = self.ccfg.control_segment(rcfg, base_step, k)
            self.seconds["control"] += continue_training(
                self.base,
                self.pools.generator,
                self.out / "control",
                target,
                rcfg,
                points,
                rcfg.round_lr(k),  # segment k of the control trains at round k's lr
                self.ccfg.control_batch_size(rcfg),
                self.progress,
            )
            table["rounds"].append(self._round(k, r, base_info))
            self._write(table)
        return table

    def check_judges_never_saw_g(self) -> None:
        """AssertionError if the simulated expert or the oracle trained on an image of G (or the oracle on E)."""
        from ..data.naming import list_images
        from ..evaluate.data import assert_disjoint

        g = [p.name for p in list_images(self.pools.generator)]
        for meta in sorted((self.out / "expert").glob("*/expert.json")):
            assert_disjoint(json.loads(meta.read_text())["info"]["train_ids"], g, f"simulated expert ({meta}) vs G")
        oracle = self.evaluator.models.info["train_ids"]
        assert_disjoint(oracle, g, "evaluation oracle vs G")
        assert_disjoint(oracle, [p.name for p in list_images(self.pools.expert)], "evaluation oracle vs E")

    def _round(self, k: int, r, base_info: dict[str, Any]) -> dict[str, Any]:
        rcfg, steps = self.rcfg, self.rcfg.finetune_steps
        base_step = self.base.step
        info = {"pretrained": {**base_info, "train_images": 0}}
        _, info["feedback"] = self.judge(f"feedback r{k}", find_checkpoint(r.checkpoint))
        info["feedback"].update(
            train_images=k * steps * 2 * rcfg.finetune_batch,
            expert_plausible_rate=r.expert_plausible_rate,
            round_seconds=r.seconds,
        )
        equal_images, equal_steps = self.ccfg.control_steps(rcfg)
        control_batch = self.ccfg.control_batch_size(rcfg)
        for name, extra in (("no feedback (equal images)", equal_images), ("no feedback (equal steps)", equal_steps)):
            ck = control_checkpoint(self.out / "control", base_step + k * extra)
            _, info[name] = self.judge(f"{name} r{k}", ck)
            info[name]["train_images"] = k * extra * control_batch
        names = {
            "pretrained": "pretrained",
            "feedback": f"feedback r{k}",
            "no feedback (equal images)": f"no feedback (equal images) r{k}",
            "no feedback (equal steps)": f"no feedback (equal steps) r{k}",
        }
        if self.ccfg.rejection:
            from ..sampling.rejection import reward_acceptor

            bar = self.ccfg.min_reward or self.base_bars(k, r)
            accept = reward_acceptor(str(r.reward), bar, str(self.base.path))
            kept, info["rejection sampling"] = self.judge(f"rejection sampling r{k}", self.base, accept)
            info["rejection sampling"]["min_reward"] = bar
            if kept is not None:
                names["rejection sampling"] = f"rejection sampling r{k}"
        return {
            "round": k,
            "columns": info,
            "seconds": {k2: round(v, 1) for k2, v in self.seconds.items()},
            "metrics": self._table(names),
            "feedback_minus_control": self._differences(names),
        }

    def base_bars(self, k: int, r) -> dict[str, float]:
        """Round ``k``'s matched bars set on the base's own draws (the pretrained column's samples),
        scored by the round's reward model: rejection sampling draws from the base, and from round 2
        on the round's samples come from the finetuned model, whose scores differ by class."""
        from ..reward.score import score_folder

        scores = self.out / "judged" / f"rejection_bars_r{k}"
        if not (scores / "rewards.csv").exists():
            scores.mkdir(parents=True, exist_ok=True)
            score_folder(r.reward, judged_folder(self.out, "pretrained"), scores / "rewards.csv")
        return matched_bars(scores, r.feedback)

    def _table(self, names: dict[str, str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for label, path in ROWS:
            row = {}
            for column, name in names.items():
                m = self.results[name].metrics
                ci = m.get("ci", {}).get(".".join(path))
                row[column] = {"value": lookup(m, path), "ci": ci}
            out[label] = row
        return out

    def _differences(self, names: dict[str, str]) -> dict[str, Any]:
        """Feedback minus each control, with the bootstrap interval of the difference."""
        fb = self.results[names["feedback"]]
        out: dict[str, Any] = {}
        for column in ("no feedback (equal images)", "no feedback (equal steps)", "rejection sampling"):
            if column not in names:
                continue
            other = self.results[names[column]]
            rows = {}
            for label, path in ROWS:
                if path not in BOOTSTRAPPED or path not in fb.replicates or path not in other.replicates:
                    continue
                d = bs.difference(
                    lookup(fb.metrics, path),
                    fb.replicates[path],
                    lookup(other.metrics, path),
                    other.replicates[path],
                    bias_correct=path in (("fid",), ("fid_class_mix",)),
                )
                rows[label] = {"difference": d.value, "ci": [d.low, d.high]}
            out[column] = rows
        return out

    def _write(self, table: dict[str, Any]) -> None:
        table = json_safe(table)
        write_json_atomic(self.out / "compare.json", table)
        write_text_atomic(self.out / "compare.md", format_markdown(table))


def _cell(entry: dict[str, Any]) -> str:
    v, ci = entry.get("value"), entry.get("ci")
    if v is None:
        return "—"
    text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    if ci and None not in ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]" if abs(v) < 100 else f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return text


def real_ceiling(real_test: dict[str, Any]) -> dict[str, float]:
    """What the judge passes of real held-out images: no model can be shown above it."""
    pl = real_test["plausibility"]
    return {
        "plausibility": pl["rate"],
        "class-consistent": pl["oracle_rate"],
        "on-manifold": pl["manifold_rate"],
        "clinical checklist": pl["checklist_rate"],
    }


def ceiling_line(table: dict[str, Any]) -> str:
    real = table.get("real_test")
    if not real:
        return ""
    return (
        f"real test images (the judge's ceiling): plausibility {real['plausibility']:.3f}, "
        f"class-consistent {real['class-consistent']:.3f}, on-manifold {real['on-manifold']:.3f}, "
        f"clinical checklist {real['clinical checklist']:.3f}"
    )


def format_markdown(table: dict[str, Any]) -> str:
    """One markdown table per round: rows are metrics, columns the models; then feedback minus controls."""
    acc = table.get("oracle_test_accuracy")
    lines = [f"Evaluation oracle (pool O): real held-out accuracy {acc:.3f}." if acc is not None else ""]
    lines += [ceiling_line(table) + ("." if table.get("real_test") else ""), ""]
    for rnd in table["rounds"]:
        judged = next(iter(rnd["metrics"].values()))
        columns = [c for c in COLUMNS if c in judged]
        lines += [
            f"### Round {rnd['round']}",
            "",
            "| metric | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for label, row in rnd["metrics"].items():
            lines.append(f"| {label.strip()} | " + " | ".join(_cell(row[c]) for c in columns) + " |")
        images = [str(rnd["columns"][c].get("train_images", "")) for c in columns]
        lines.append("| training images after the base | " + " | ".join(images) + " |")
        if "rejection sampling" in rnd["columns"]:
            lines += ["", rejection_line(rnd["columns"]["rejection sampling"])]
        lines += ["", "Feedback minus control (95 % bootstrap interval):", ""]
        for column, rows in rnd["feedback_minus_control"].items():
            parts = [
                f"{label.strip()} {d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                for label, d in rows.items()
                if d["difference"] is not None and None not in d["ci"]
            ]
            lines.append(f"- vs {column}: " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines) + "\n"


def read_table(out: str | Path) -> dict[str, Any]:
    return json.loads((Path(out) / "compare.json").read_text())
