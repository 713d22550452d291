"""The model card (``README.md`` of an export, Hugging Face layout) from the run's own records.

Every number comes from a file the run or its evaluation wrote: the checkpoints' meta (steps,
objective, where a finetune started), each stage's ``config.json`` (recipe, data, rewards), the
feedback folders beside the rounds' samples (verdict counts), and ``metrics.json`` (evaluation).
Where a record is missing the card says so instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..training.checkpoint import Checkpoint, find_checkpoint
from .lineage import Stage, lineage, training_data, verdict_counts

#: (row, path in a set's metrics, path of the real-data reference in metrics.json ("*": the first set), better)
EVAL_ROWS = [
    ("FID (domain features)", ("fid",), ("real", "real_test", "fid_vs_train"), "lower"),
    ("plausibility", ("plausibility", "rate"), ("real", "real_test", "plausibility", "rate"), "higher"),
    (
        "TSTR accuracy",
        ("utility", "synthetic_only", "accuracy"),
        ("sets", "*", "utility", "real_only", "accuracy"),
        "higher",
    ),
    ("near copies of training images (features)", ("memorisation", "feature", "near_copy_fraction"), None, "lower"),
    ("near copies of training images (pixels)", ("memorisation", "pixel", "near_copy_fraction"), None, "lower"),
]
METRICS_SEARCH = ("evaluation/metrics.json", "eval/metrics.json")


def lookup(tree: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return float(tree) if isinstance(tree, (int, float)) and not isinstance(tree, bool) else None


def reference_path(ref: tuple[str, ...], names: list[str]) -> tuple[str, ...]:
    return tuple((names[0] if names else "") if key == "*" else key for key in ref)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def find_metrics(run: Path | None, given: str | Path | None) -> Path | None:
    """``given`` (must exist), else the nearest ``evaluation/metrics.json`` in the run folder or two folders up."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"{path}: no such metrics file; pass the metrics.json that clinalign evaluate wrote")
        return path
    if run is None:
        return None
    for folder in (run, run.parent, run.parent.parent):
        for rel in METRICS_SEARCH:
            if (folder / rel).is_file():
                return folder / rel
    return None


def read_metrics(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: not readable as JSON ({exc}); pass the metrics.json that clinalign evaluate wrote"
        ) from None


@dataclass
class CardFacts:
    ck: Checkpoint
    stages: list[Stage]
    broken: str | None
    data: dict[str, Any]
    metrics_path: Path | None
    metrics: dict | None
    rounds: list[dict[str, Any]] = field(default_factory=list)


def gather(ck: Checkpoint, metrics: str | Path | None = None) -> CardFacts:
    stages, broken = lineage(ck)
    run = stages[-1].run
    path = find_metrics(run, metrics)
    facts = CardFacts(ck, stages, broken, training_data(stages[0], ck), path, read_metrics(path))
    for k, stage in enumerate(s for s in stages if s.is_finetune):
        facts.rounds.append({"round": k + 1, "stage": stage, **verdict_counts(stage)})
    return facts


def model_card(ck: Checkpoint | str | Path, metrics: str | Path | None = None) -> str:
    """The card's markdown for checkpoint ``ck`` (a run directory resolves to its latest checkpoint)."""
    ck = ck if isinstance(ck, Checkpoint) else find_checkpoint(ck)
    facts = gather(ck, metrics)
    parts = [
        front_matter(facts),
        summary(facts),
        classes_section(facts),
        data_section(facts),
        training_section(facts),
        feedback_section(facts),
        evaluation_section(facts),
        usage_section(facts),
        limitations_section(),
    ]
    return "\n".join(parts)


def front_matter(facts: CardFacts) -> str:
    tags = ["diffusers", "clinalign", "class-conditional", "medical-imaging", "synthetic-data"]
    lines = ["---", "library_name: diffusers", "pipeline_tag: unconditional-image-generation", "tags:"]
    return "\n".join(lines + [f"- {t}" for t in tags] + ["---", ""])


def summary(facts: CardFacts) -> str:
    ck, model = facts.ck, facts.ck.model
    n_rounds = len(facts.rounds)
    feedback = f"{n_rounds} round(s) of expert feedback" if n_rounds else "no expert feedback yet"
    conditional = f"class-conditional ({len(ck.class_map)} classes)" if model.class_cond else "unconditional"
    return (
        f"# clinalign diffusion model, step {ck.step}\n\n"
        f"A {conditional} diffusion model of {model.image_size}x{model.image_size} images with {ck.channels} "
        f"channel(s), trained with clinalign (pretraining, then {feedback}). The denoiser is a diffusers "
        f"`UNet2DModel`; `pipeline_clinalign.py` samples it by class. Exported from `{ck.path}`.\n"
    )


def classes_section(facts: CardFacts) -> str:
    ck = facts.ck
    if not ck.model.class_cond:
        return "## Classes\n\nNone: the model is unconditional.\n"
    counts = facts.data.get("class_counts") or {}
    lines = ["## Classes", "", "| id | class | parent (concepts) | training images |", "| --- | --- | --- | --- |"]
    for i, name in enumerate(ck.class_map.names):
        parent = ck.class_map.parents.get(name) or ""
        lines.append(f"| {i} | {name} | {parent} | {counts.get(name, 'not recorded')} |")
    return "\n".join(lines) + "\n\n`class_map.json` holds the same map (names, ids, parents).\n"


def data_section(facts: CardFacts) -> str:
    d = facts.data
    lines = [
        "## Training data",
        "",
        f"- folder: `{d.get('data_dir') or 'not recorded'}`",
        f"- images: {d.get('n_images', 'not recorded')}",
        f"- fingerprint (SHA-256 of file names, classes and decoded pixels): "
        f"`{d.get('fingerprint') or 'not recorded'}`",
    ]
    if d.get("note"):
        lines.append(f"- {d['note']}")
    return "\n".join(lines) + "\n"


def training_section(facts: CardFacts) -> str:
    lines = [
        "## Training",
        "",
        "| stage | run | steps | objective | lr | batch | details |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage in facts.stages:
        train = stage.config.get("train", {})
        lines.append(
            f"| {stage.label} | `{stage.run}` | {stage.step} | {stage.objective} | {train.get('lr', 'n/a')} "
            f"| {train.get('batch_size', 'n/a')} | {stage.details()} |"
        )
    if facts.broken:
        lines += ["", facts.broken]
    ck = facts.ck
    diff, model = ck.diffusion, ck.model
    variance = "learned range" if model.learn_sigma else ("fixed small" if model.sigma_small else "fixed large")
    lines += [
        "",
        f"Process: T = {diff.diffusion_steps} diffusion steps, {diff.noise_schedule} schedule, predicts "
        f"{'x_0' if diff.predict_xstart else 'the noise'}, variance {variance}. Architecture: "
        f"{model.num_channels} base channels, {model.num_res_blocks} residual block(s) per level, attention at "
        f"{model.attention_resolutions} px. Weights: the EMA of the last step ({', '.join(ck.ema_rates) or 'none'}).",
    ]
    return "\n".join(lines) + "\n"


def feedback_section(facts: CardFacts) -> str:
    if not facts.rounds:
        return "## Expert feedback\n\nNone: this model is pretrained only.\n"
    total = sum(r["verdicts"] or 0 for r in facts.rounds)
    lines = [
        "## Expert feedback",
        "",
        f"{len(facts.rounds)} round(s); {total} expert verdicts in the feedback folders found.",
        "",
        "| round | synthetic images | verdicts | plausible | implausible | feedback folder |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in facts.rounds:
        n = r["stage"].config.get("n_synthetic", "n/a")
        verdicts = "not found" if r["verdicts"] is None else r["verdicts"]
        lines.append(
            f"| {r['round']} | {n} | {verdicts} | {r['plausible'] if r['verdicts'] is not None else 'n/a'} "
            f"| {r['implausible'] if r['verdicts'] is not None else 'n/a'} | `{r['folder']}` |"
        )
    return "\n".join(lines) + "\n"


def evaluation_section(facts: CardFacts) -> str:
    data_dir = facts.data.get("data_dir") or "REAL_DIR"
    run = facts.stages[-1].run or facts.ck.path
    produce = (
        f"`clinalign sample --checkpoint {run} --sampler dpm++ --num_samples 800 --out samples/` then "
        f"`clinalign evaluate --real {data_dir} --samples samples/ --out evaluation/` "
        "(and export again with `--metrics evaluation/metrics.json`)"
    )
    if facts.metrics is None:
        return (
            "## Evaluation\n\nNo evaluation of this model was found (looked for `evaluation/metrics.json` in the "
            f"run folder and the two folders above it). To produce one: {produce}.\n"
        )
    sets = facts.metrics.get("sets") or {}
    names = list(sets)
    lines = [
        "## Evaluation",
        "",
        f"From `{facts.metrics_path}`. Its columns are the sample sets it judged (`--samples`, `--baseline`); "
        "check that `--samples` was drawn from this checkpoint. The real-test column is what held-out real "
        "images score (for TSTR: a classifier trained on real images).",
        "",
        "| metric | " + " | ".join(names) + " | real test images | better |",
        "| --- | " + " | ".join("---" for _ in names) + " | --- | --- |",
    ]
    for label, path, ref, better in EVAL_ROWS:
        cells = [fmt(lookup(sets[n], path)) for n in names]
        reference = fmt(lookup(facts.metrics, reference_path(ref, names))) if ref else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {reference} | {better} |")
    command = facts.metrics.get("command")
    how = (
        f"Command: `{command}`."
        if command
        else f"Written by `clinalign evaluate` (or the loop); to redo it: {produce}."
    )
    return "\n".join(lines) + "\n\n" + how + " Definitions: `docs/evaluation.md` of clinalign.\n"


def usage_section(facts: CardFacts) -> str:
    names = facts.ck.class_map.names[:2] if facts.ck.model.class_cond else []
    labels = f"class_labels={names!r}" if names else "batch_size=4"
    return f"""## How to use

```python
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER", trust_remote_code=True)  # loads pipeline_clinalign.py
pipe.set_sampler("dpm++")  # or "ddim", "ancestral": the same samples as `clinalign sample --sampler ...`
images = pipe({labels}, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images
```

To finetune it with clinalign: `clinalign train --init_from THIS_FOLDER --data_dir DIR --run_dir RUN`.
"""


def limitations_section() -> str:
    return """## Intended use and limitations

- Synthetic cells are for research and data augmentation (more training images for classifiers).
  **Not for diagnosis**, and not a substitute for real patient images in any clinical decision.
- Synthetic cells can look plausible and still be wrong in ways an automated evaluation misses; the
  plausibility above is judged by a classifier trained on the real data, not by a clinician.
- The model reflects its training data (its classes, staining, scanners, population); it says nothing
  about images outside them. Check near copies before sharing samples: a model can reproduce training
  images.
"""
