"""report.html: one self-contained page (images inlined as base64 PNG, no external resources).

Written for two readers: a clinician (per-class sample grids marked with the oracle's verdict, the
closest copies of training images, per-class plausibility) and an ML reviewer (the metric table
with bootstrap intervals, the before/after comparison, the real-data reference row, every number
of metrics.json, and how each one is defined).
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..utils.fileio import atomic_writer  # noqa: E402
from .run import EvaluationResult, SetResult, json_safe  # noqa: E402

# Grid border colours: plausible / recognised but off the real manifold / not recognised.
GREEN, ORANGE, RED = (46, 160, 67), (230, 140, 20), (210, 40, 40)
SET_COLOURS = {"samples": "#1f77b4", "baseline": "#ff7f0e", "real test": "#7f7f7f"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.4;padding:0 1em}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{background:#f7f7ff;border-left:4px solid #88a;padding:.5em 1em;margin:1em 0}
.warn{background:#fff0f0;border-left:6px solid #c62828;padding:.6em 1em;margin:1em 0;font-size:1.05em}
.muted{color:#777;font-size:.85em}.good{color:#1a7f37}.bad{color:#c62828}
.grid{display:flex;flex-wrap:wrap;gap:1.2em}.grid figure{margin:0}figcaption{font-size:.85em;color:#555}
img.px{image-rendering:pixelated}details{margin:1em 0}code{background:#f4f4f4;padding:0 .2em}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return html.escape(str(v))


def _esc(s: Any) -> str:
    return html.escape(str(s))


def _fig_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _png_uri(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, alt: str, width: int | None = None, pixelated: bool = False) -> str:
    w = f' width="{width}"' if width else ""
    cls = ' class="px"' if pixelated else ""
    return f'<img src="{uri}" alt="{_esc(alt)}"{w}{cls}>'


def _figure(pixels: np.ndarray, alt: str, caption: str) -> str:
    """An image grid (upscaled pixels, so keep them sharp) with an HTML caption."""
    return f"<figure>{_img(_png_uri(pixels), alt, pixelated=True)}<figcaption>{caption}</figcaption></figure>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """Cell content that is already HTML."""


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaf values of nested dicts as ``("a.b.c", value)`` (lists are leaves)."""
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, obj)]


# ---------------------------------------------------------------------------------------------
# Pieces


def _with_ci(m: dict, value: Any, key: str) -> str:
    ci = m.get("ci", {}).get(key)
    if ci is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return _fmt(value)
    return f"{_fmt(value)} <span class='muted'>[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>"


def _get(m: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(m, dict) or part not in m:
            return None
        m = m[part]
    return m


# (label, path in a set's metrics, path in the real-test metrics or None, bootstrapped?)
HEADLINE_ROWS = [
    (
        "plausible (class-consistent AND on-manifold AND checklist)",
        ("plausibility", "rate"),
        ("plausibility", "rate"),
        True,
    ),
    (
        "  class-consistent (oracle recognises the declared class)",
        ("plausibility", "oracle_rate"),
        ("plausibility", "oracle_rate"),
        True,
    ),
    (
        "  on-manifold (inside the real data's k-NN balls)",
        ("plausibility", "manifold_rate"),
        ("plausibility", "manifold_rate"),
        True,
    ),
    ("  clinical checklist: every criterion", ("checklist", "all"), ("checklist", "all"), True),
    ("mean P(declared class)", ("plausibility", "mean_p_declared"), ("plausibility", "mean_p_declared"), True),
    ("FID (domain features)", ("fid",), ("fid_vs_train",), True),
    ("FID, real cells at the samples' class mix", ("fid_class_mix",), None, True),
    ("intra-class FID (mean over classes)", ("fid_intra",), None, False),
    ("FID (Inception-v3)", ("fid_inception",), None, False),
    ("precision", ("prdc", "precision"), ("prdc", "precision"), True),
    ("recall", ("prdc", "recall"), ("prdc", "recall"), False),
    ("density", ("prdc", "density"), ("prdc", "density"), True),
    ("coverage", ("prdc", "coverage"), ("prdc", "coverage"), False),
    ("sharpness (median Laplacian variance)", ("sharpness", "median"), ("sharpness", "median"), False),
    ("near copies (feature space)", ("memorisation", "feature", "near_copy_fraction"), None, True),
    ("near copies (pixel space)", ("memorisation", "pixel", "near_copy_fraction"), None, False),
    ("mean reward", ("reward", "mean"), None, True),
    ("TSTR accuracy: synthetic only", ("utility", "synthetic_only", "accuracy"), None, False),
    ("TSTR accuracy: real + synthetic", ("utility", "real_plus_synthetic", "accuracy"), None, False),
    ("TSTR accuracy: real only (baseline)", ("utility", "real_only", "accuracy"), None, False),
    ("images", ("n",), None, False),
]


def _headline(result: EvaluationResult) -> str:
    real = result.metrics["real"]["real_test"]
    extra_real = {("utility", "synthetic_only", "accuracy"): "real_only", ("n",): "n_test"}
    rows: list[list[Any]] = []
    for label, path, real_path, bootstrapped in HEADLINE_ROWS:
        values = [_get(r.metrics, path) for r in result.sets.values()]
        if all(v is None for v in values):
            continue  # a metric no set has (no reward model, no Inception network, no TSTR)
        cells: list[Any] = [label]
        for r, v in zip(result.sets.values(), values):
            cells.append(_Raw(_with_ci(r.metrics, v, ".".join(path))) if bootstrapped else v)
        if real_path is not None:
            cells.append(_get(real, real_path))
        elif path in extra_real:  # the real column's counterpart lives elsewhere
            first = next(iter(result.sets.values())).metrics
            cells.append(
                result.metrics["real"]["n_test"]
                if path == ("n",)
                else _get(first, ("utility", "real_only", "accuracy"))
            )
        else:
            cells.append(None)
        rows.append(cells)
    return _table(["metric"] + list(result.sets) + ["real test"], rows) + (
        "<p class='muted'>Brackets: 95 % bootstrap interval over samples. The <b>real test</b> column scores "
        "held-out real images the same way: the ceiling a generator can reach for plausibility and the floor for "
        "FID at this sample size. Real-test TSTR is the real-only classifier.</p>"
    )


def _comparison(result: EvaluationResult) -> str:
    comp = result.metrics.get("comparison")
    if not comp:
        return ""
    rows = []
    for key, c in comp.items():
        lo, hi = c.get("ci_low"), c.get("ci_high")
        verdict = ""
        if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
            verdict = "CI excludes 0" if lo > 0 or hi < 0 else "not significant"
        rows.append(
            [key, c.get("samples"), c.get("baseline"), c["difference"], None if lo is None else [lo, hi], verdict]
        )
    return (
        "<h2>Samples vs baseline</h2>"
        + _table(["metric", "samples", "baseline", "difference", "95 % CI", ""], rows)
        + "<p class='muted'>Difference = samples − baseline; intervals resample each set independently "
        "(lower FID and higher plausibility are better).</p>"
    )


def _per_class(result: EvaluationResult) -> str:
    real_pc = result.metrics["real"]["real_test"]["plausibility"]["per_class"]
    names = result.models.class_map.names
    header = ["class"]
    for name in result.sets:
        header += [
            f"{name}: n",
            f"{name}: plausible",
            f"{name}: class-consistent",
            f"{name}: on-manifold",
            f"{name}: checklist",
            f"{name}: FID",
        ]
        if result.sets[name].reward is not None:
            header.append(f"{name}: reward")
    header += ["real test: plausible"]
    rows = []
    for c in names:
        row: list[Any] = [c]
        for r in result.sets.values():
            pc = r.metrics["plausibility"]["per_class"].get(c, {})
            row += [
                pc.get("n", 0),
                _Raw(_with_ci(r.metrics, pc.get("rate"), f"plausibility.per_class.{c}.rate")),
                pc.get("oracle_rate"),
                pc.get("manifold_rate"),
                pc.get("checklist_rate"),
                r.metrics["fid_per_class"].get(c),
            ]
            if r.reward is not None:
                row.append(r.metrics["reward"]["per_class"].get(c))
        row.append(real_pc.get(c, {}).get("rate"))
        rows.append(row)
    return "<h2>Per class</h2>" + _table(header, rows)


def _checklist(result: EvaluationResult) -> str:
    """Pass rate of every clinical criterion, per declared class, for each set and real held-out images."""
    real = result.metrics["real"]["real_test"].get("checklist")
    if real is None:
        return ""
    from .checklist import CRITERIA

    header = ["class", "set", "all"] + list(CRITERIA)
    rows = []
    for c in result.models.class_map.names:
        for name, r in list(result.sets.items()) + [("real test", None)]:
            per = (real if r is None else r.metrics["checklist"])["per_class"].get(c)
            if per:
                rows.append([c, f"{name} (n {per['n']})", per["all"]] + [per[k] for k in CRITERIA])
    return (
        "<h2>Clinical checklist</h2><p class='muted'>Share of images whose feature lies within the range real "
        "cells of the declared class show (the [q, 1 - q] percentiles of the real training images): cell size, "
        "nucleus/cell ratio, nucleus lobes, chromatin brightness, cytoplasm hue, cytoplasm granules. The real "
        "test rows are the ceiling.</p>" + _table(header, rows)
    )


def _bar_per_class(result: EvaluationResult) -> str:
    names = result.models.class_map.names
    real_pc = result.metrics["real"]["real_test"]["plausibility"]["per_class"]
    series = {
        n: [r.metrics["plausibility"]["per_class"].get(c, {}).get("rate", float("nan")) for c in names]
        for n, r in result.sets.items()
    }
    series["real test"] = [real_pc.get(c, {}).get("rate", float("nan")) for c in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 3.2))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (n, vals) in enumerate(series.items()):
        ax.bar(
            x + i * width - 0.4 + width / 2,
            np.nan_to_num(np.asarray(vals, float)),
            width,
            label=n,
            color=SET_COLOURS.get(n),
        )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.2)  # headroom so the legend never hides a bar
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("plausible fraction")
    ax.set_title("Plausibility per declared class")
    ax.legend(fontsize=8, ncol=len(series), loc="upper center")
    return _fig_uri(fig)


def _hist(series: dict[str, np.ndarray], title: str, xlabel: str, vline: float | None = None, vlabel: str = "") -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    finite = [v[np.isfinite(v)] for v in series.values() if len(v)]
    lo = min((v.min() for v in finite if len(v)), default=0.0)
    hi = max((v.max() for v in finite if len(v)), default=1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
    for name, v in series.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.55, density=True, label=f"{name} (n={len(v)})", color=SET_COLOURS.get(name))
    if vline is not None:
        ax.axvline(vline, color="k", ls="--", lw=1, label=vlabel)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    return _fig_uri(fig)


def _fid_per_class(result: EvaluationResult) -> str:
    names = result.models.class_map.names
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 3.2))
    width = 0.8 / max(1, len(result.sets))
    x = np.arange(len(names))
    for i, (n, r) in enumerate(result.sets.items()):
        vals = np.array([r.metrics["fid_per_class"].get(c, np.nan) for c in names], float)
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(vals), width, label=n, color=SET_COLOURS.get(n))
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("FID (domain features)")
    ax.set_title("FID per class (lower is better; small classes are noisy)")
    ax.legend(fontsize=8)
    return _fig_uri(fig)


def _grid(images: np.ndarray, colours: list[tuple[int, int, int]], cols: int = 8, scale: int = 2) -> np.ndarray:
    """Tile images with a 2-px coloured border each (the verdict), upscaled for the eye."""
    n = len(images)
    s, c = images.shape[1], images.shape[3]
    rgb = np.repeat(images, 3, axis=3) if c == 1 else images
    cell = s + 4
    rows = math.ceil(n / cols)
    canvas = np.full((rows * cell, min(n, cols) * cell, 3), 255, np.uint8)
    for i, (img, col) in enumerate(zip(rgb, colours)):
        r, k = divmod(i, cols)
        canvas[r * cell : (r + 1) * cell, k * cell : (k + 1) * cell] = col
        canvas[r * cell + 2 : r * cell + 2 + s, k * cell + 2 : k * cell + 2 + s] = img
    return canvas.repeat(scale, 0).repeat(scale, 1)


def _sample_grids(result: EvaluationResult, per_class: int = 16) -> str:
    parts = [
        "<h2>Samples by declared class</h2><p>Border: <b class='good'>green</b> plausible; "
        "<b style='color:#e68c14'>orange</b> the oracle recognises the class but the image lies off the real "
        "manifold or fails a checklist criterion; <b class='bad'>red</b> the oracle does not recognise the "
        "declared class. Real held-out images of the class are shown first for reference.</p>"
    ]
    ref = result.reference
    for c in result.models.class_map.names:
        figs = []
        real_idx = [i for i, rc in enumerate(ref.test.classes) if rc == c][:8]
        if real_idx:
            grey = [(150, 150, 150)] * len(real_idx)
            figs.append(_figure(_grid(ref.test.images[real_idx], grey), f"real {c}", "real test"))
        for r in result.sets.values():
            idx = [i for i, sc in enumerate(r.samples.classes) if sc == c][:per_class]
            if not idx:
                continue
            j = r.judgement
            colours = [GREEN if j.plausible[i] else ORANGE if j.recognised[i] else RED for i in idx]
            pc = r.metrics["plausibility"]["per_class"][c]
            figs.append(
                _figure(
                    _grid(r.samples.images[idx], colours),
                    f"{r.name} {c}",
                    f"{_esc(r.name)}: {len(idx)} of {pc['n']}, plausible {_fmt(pc['rate'])}",
                )
            )
        if figs:
            parts.append(f"<h3>{_esc(c)}</h3><div class='grid'>{''.join(figs)}</div>")
    return "".join(parts)


def _nearest_pairs(result: EvaluationResult, r: SetResult, count: int = 8) -> str:
    order = np.argsort(r.memorisation.feature.distance)[:count]
    if not len(order):
        return ""
    train = result.reference.generator
    cells = []
    for i in order:
        pair = np.concatenate([r.samples.images[i], train.images[r.memorisation.feature.index[i]]], axis=1)
        flag = " <b class='bad'>near copy</b>" if r.memorisation.near_copy_feature[i] else ""
        caption = (
            f"{_esc(r.samples.ids[i])} | {_esc(train.ids[r.memorisation.feature.index[i]])}"
            f"<br>d = {_fmt(float(r.memorisation.feature.distance[i]))}{flag}"
        )
        cells.append(_figure(pair.repeat(2, 0).repeat(2, 1), "sample and nearest real", caption))
    return (
        f"<h3>{_esc(r.name)}: the {len(order)} samples closest to a training image (left: sample, "
        f"right: nearest real training image)</h3><div class='grid'>{''.join(cells)}</div>"
    )


def _plots(result: EvaluationResult) -> str:
    figs = [(_bar_per_class(result), "plausibility per class"), (_fid_per_class(result), "FID per class")]
    ref = result.reference
    p_real = ref.test_proba[np.arange(len(ref.test)), result.models.class_map.indices(ref.test.classes)]
    series = {n: r.judgement.p_declared for n, r in result.sets.items()} | {"real test": p_real}
    tau = result.metrics["config"]["metrics"]["tau"]
    figs.append(
        (
            _hist(series, "Oracle probability of the declared class", "P(declared class)", tau, f"tau = {tau}"),
            "oracle probability histogram",
        )
    )
    rewards = {n: r.reward for n, r in result.sets.items() if r.reward is not None}
    if rewards:
        figs.append((_hist(rewards, "Reward model score", "reward"), "reward histogram"))
    mem = {n: r.memorisation.feature.distance for n, r in result.sets.items()} | {
        "real test": result.copies.real_nn_feature
    }
    figs.append(
        (
            _hist(
                mem,
                "Distance to the nearest real training image (features)",
                "distance",
                result.copies.threshold_feature,
                "near-copy threshold",
            ),
            "memorisation histogram",
        )
    )
    return (
        "<h2>Plots</h2><div class='grid'>"
        + "".join(f"<figure>{_img(uri, alt)}</figure>" for uri, alt in figs)
        + "</div>"
    )


def _pools_line(pools: dict | None) -> str:
    if not pools:
        return ""
    parts = [
        f"{name} {pools[name]['n']} images (fingerprint {_esc(pools[name]['fingerprint'])})"
        for name in ("G", "E", "O")
        if name in pools
    ]
    return (
        "<p class='muted'>Real pools, disjoint: " + "; ".join(parts) + ". G trains the generator, E the "
        "simulated expert, O the evaluation oracle and the reference; memorisation is measured against G.</p>"
    )


def render_report(result: EvaluationResult, title: str = "clinalign evaluation") -> str:
    m = json_safe(result.metrics)
    real = m["real"]
    oracle = real["oracle"]
    set_names = ", ".join(_esc(f"{n} ({r.metrics['n']})") for n, r in result.sets.items())
    defs = "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in m["definitions"].items())
    intro = (
        f"<p class='muted'>{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} · real data: "
        f"{real['n_train']} training / {real['n_test']} held-out images, {len(real['classes'])} classes, "
        f"{real['image_size']} px · sets: {set_names}"
        "</p>"
        + _pools_line(real.get("pools"))
        + "<div class='note'><b>How plausibility is measured.</b> A classifier alone is easy to fool (it can be "
        "confident on pure noise), so a sample counts as <i>plausible</i> only when the evaluation oracle gives "
        f"its declared class probability ≥ τ = {_fmt(m['config']['metrics']['tau'])} <b>and</b> its features lie "
        f"inside the real data's manifold (k-NN balls, k = {m['config']['metrics']['k']}) <b>and</b> it passes "
        "the clinical checklist (cell size, nucleus/cell ratio, lobes, chromatin, cytoplasm hue, granules within "
        "the class's real range), unless the checklist is turned off. Every part is shown. "
        f"The oracle ({_esc(oracle['arch'])}, seed {oracle['seed']}, trained on real half {_esc(oracle['half'])}, "
        f"{oracle['n_train']} images) reaches real held-out accuracy {_fmt(oracle['test_accuracy'])} "
        f"(balanced {_fmt(oracle['test_balanced_accuracy'])}); it is independent of the simulated expert "
        "(different architecture, seed and half of the real data).</div>"
        "<div class='note'><b>FID uses domain features</b>: "
        f"{_esc(real['feature_extractor'])}, not Inception-v3 (no pretrained weights are downloaded). Values are "
        "comparable between sets scored with the same models, not with published FIDs.</div>"
    )
    warnings = "".join(f"<div class='warn'><b>Warning:</b> {_esc(w)}</div>" for w in real.get("warnings", []))
    body = [
        f"<h1>{_esc(title)}</h1>",
        warnings,
        intro,
        "<h2>Summary</h2>",
        _headline(result),
        _comparison(result),
        _per_class(result),
        _checklist(result),
        _plots(result),
        _sample_grids(result),
        "<h2>Memorisation</h2>",
        "<p>Near copy: closer to its nearest real training image than the "
        f"{_fmt(result.copies.percentile)}st percentile of real held-out → real training distances "
        f"(feature threshold {_fmt(result.copies.threshold_feature)}, pixel threshold "
        f"{_fmt(result.copies.threshold_pixel)}).</p>",
        "".join(_nearest_pairs(result, r) for r in result.sets.values()),
        f"<h2>Definitions</h2><ul>{defs}</ul>",
        "<h2>Every metric</h2><details open><summary>all values of metrics.json</summary>",
        _table(["metric", "value"], [[k, v] for k, v in flatten({k: v for k, v in m.items() if k != "definitions"})]),
        "</details>",
    ]
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(result: EvaluationResult, out_dir: str | Path, title: str = "clinalign evaluation") -> Path:
    path = Path(out_dir) / "report.html"
    with atomic_writer(path, "w") as f:
        f.write(render_report(result, title))
    return path
