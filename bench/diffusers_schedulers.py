"""clinalign's samplers against diffusers' schedulers on the same model, noise and steps, printed as JSON.

    OMP_NUM_THREADS=1 python bench/diffusers_schedulers.py            # configs A, B, C
    OMP_NUM_THREADS=1 python bench/diffusers_schedulers.py --configs A --batch 8

For each config a model is built with seeded random weights and saved as a clinalign checkpoint;
the diffusers side is what ``clinalign export`` writes (its UNet, its scheduler config, its
``ClinalignPipeline``), so this measures the export as well as the schedulers. Per sampler:
max |x_ours - x_diffusers| over the batch in [-1, 1], and the best of ``--repeats`` wall times
(the two sides alternate, so that load from other processes slows both alike).

diffusers variants of DPM-Solver++(2M):
- "dpm++ (diffusers defaults)": ``DPMSolverMultistepScheduler.from_config(config)``;
- "dpm++ (lu lambdas)": its closest options to ours (logSNR-uniform ``use_lu_lambdas``, 2nd order
  to the end, stopping at sigma_min, x_0 clipped through thresholding with max 1);
- "dpm++ (our timesteps)": those options with clinalign's discrete logSNR-uniform timesteps given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinalign.data.classmap import ClassMap  # noqa: E402
from clinalign.diffusion import DiffusionConfig  # noqa: E402
from clinalign.diffusion.samplers import sample_images  # noqa: E402
from clinalign.interop.diffusers_format import diffusers_unet, scheduler_config  # noqa: E402
from clinalign.interop.pipeline_clinalign import ClinalignPipeline  # noqa: E402
from clinalign.models.unet import ModelConfig, build_denoiser  # noqa: E402
from clinalign.training.checkpoint import find_checkpoint, save_checkpoint  # noqa: E402

CONFIGS = {
    "A": dict(  # the tests' tiny model: 16 px, T = 100 cosine, learned-range variance, ε
        model=dict(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8", num_heads=2),
        diffusion=dict(diffusion_steps=100, noise_schedule="cosine"),
        learn_sigma=True,
        sigma_small=False,
    ),
    "B": dict(  # the demo's size: 32 px, T = 1000 cosine, learned-range variance, ε
        model=dict(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="8", num_heads=2),
        diffusion=dict(diffusion_steps=1000, noise_schedule="cosine"),
        learn_sigma=True,
        sigma_small=False,
    ),
    "C": dict(  # x_0 prediction, linear T = 1000, fixed small variance
        model=dict(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="8", num_heads=2),
        diffusion=dict(diffusion_steps=1000, noise_schedule="linear", predict_xstart=True),
        learn_sigma=False,
        sigma_small=True,
    ),
}
CLASSES = ["a", "b", "c", "d"]


def make_checkpoint(name: str, root: Path):
    spec = CONFIGS[name]
    model_cfg = ModelConfig(**spec["model"], learn_sigma=spec["learn_sigma"], sigma_small=spec["sigma_small"])
    model_cfg.class_cond = True
    diffusion_cfg = DiffusionConfig(**spec["diffusion"])
    torch.manual_seed(0)
    model = build_denoiser(model_cfg, 3, len(CLASSES))
    meta = {
        "step": 1,
        "model": asdict(model_cfg),
        "diffusion": asdict(diffusion_cfg),
        "channels": 3,
        "class_map": ClassMap(CLASSES).to_dict(),
    }
    state = model.state_dict()
    save_checkpoint(root / name, meta, state, {"0.999": state}, {})
    return find_checkpoint(root / name)


def timed_pair(ours, theirs, repeats: int):
    """Both functions' outputs and best wall times, alternating so that a busy machine slows both alike."""
    best = [float("inf"), float("inf")]
    outs = [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((ours, theirs)):
            start = time.perf_counter()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return outs, best


def pipeline_for(ck, scheduler) -> ClinalignPipeline:
    """The exported pipeline with ``scheduler``, or with ``set_sampler(scheduler)`` when it is a name."""
    from diffusers import DDPMScheduler

    named = isinstance(scheduler, str)
    first = DDPMScheduler.from_config(scheduler_config(ck)) if named else scheduler
    pipe = ClinalignPipeline(
        diffusers_unet(ck), first, rescale_timesteps=ck.diffusion.rescale_timesteps, class_names=CLASSES
    )
    if named:
        pipe.set_sampler(scheduler)
    return pipe


def diffusers_variants(ck, steps: dict[str, list[int]]) -> dict[str, tuple]:
    """row name -> (clinalign sampler, steps, scheduler or a ``set_sampler`` name)."""
    from diffusers import DPMSolverMultistepScheduler

    from clinalign.interop.pipeline_clinalign import CLINALIGN_DPM

    cfg = scheduler_config(ck)
    out = {}
    for n in steps["ddim"]:
        out[f"ddim {n}"] = ("ddim", n, "ddim")
    for n in steps["dpm++"]:
        out[f"dpm++ {n} (diffusers defaults)"] = ("dpm++", n, DPMSolverMultistepScheduler.from_config(cfg))
        lu = DPMSolverMultistepScheduler.from_config(cfg, use_lu_lambdas=True, **CLINALIGN_DPM)
        out[f"dpm++ {n} (lu lambdas)"] = ("dpm++", n, lu)
        out[f"dpm++ {n} (set_sampler: our timesteps)"] = ("dpm++", n, "dpm++")
    for n in steps.get("ancestral", []):
        out[f"ancestral {n}"] = ("ancestral", n, "ancestral")
    return out


def run_config(name: str, root: Path, batch: int, repeats: int, steps: dict[str, int]) -> list[dict]:
    ck = make_checkpoint(name, root)
    model = ck.build_model(ema=True).eval()
    diffusion = ck.build_diffusion(timestep_respacing="")
    size = ck.model.image_size
    labels = torch.arange(batch) % len(CLASSES)
    rows = []
    for label, (sampler, n, scheduler) in diffusers_variants(ck, steps).items():

        def ours(sampler=sampler, n=n):
            g = torch.Generator().manual_seed(1)
            with torch.inference_mode():
                x = sample_images(
                    model, diffusion, (batch, 3, size, size), sampler=sampler, steps=n,
                    model_kwargs={"y": labels}, generator=g,
                )  # fmt: skip
            return x.clamp(-1, 1)

        pipe = pipeline_for(ck, scheduler)

        def theirs(pipe=pipe, n=n):
            g = torch.Generator().manual_seed(1)
            pipe.set_progress_bar_config(disable=True)
            return (
                pipe(class_labels=labels.tolist(), generator=g, num_inference_steps=n, output_type="pt").images * 2 - 1
            )

        (a, b), (t_ours, t_theirs) = timed_pair(ours, theirs, repeats)
        rows.append(
            {
                "config": name,
                "sampler": label,
                "max_abs_diff": float((a - b).abs().max()),
                "mean_abs_diff": float((a - b).abs().mean()),
                "seconds_clinalign": round(t_ours, 3),
                "seconds_diffusers": round(t_theirs, 3),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="A,B,C")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ddim_steps", default="50,30", help="comma list (30 does not divide T = 1000 or 100)")
    p.add_argument("--dpm_steps", default="20")
    p.add_argument("--ancestral", default="A", help="configs that also compare ancestral sampling (T and T/2 steps)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            steps = {"ddim": _ints(args.ddim_steps), "dpm++": _ints(args.dpm_steps)}
            if name in args.ancestral.split(","):
                T = CONFIGS[name]["diffusion"]["diffusion_steps"]
                steps["ancestral"] = [T, T // 2]
            rows += run_config(name, Path(tmp), args.batch, args.repeats, steps)
    print(
        json.dumps(
            {"torch": torch.__version__, "threads": 1, "batch": args.batch, "rows": rows, "numpy": np.__version__},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
