"""Quality per sampling step: FID and plausibility of one trained model under each sampler, as JSON.

    OMP_NUM_THREADS=1 python bench/sampler_quality.py --checkpoint RUN_OR_STEP_DIR --pools POOLS_DIR \
        --test ../shared/data/pbc_64/test --out /tmp/samplers

Every sampler draws ``--per_class`` images per class of the same model (EMA weights) from the
same seeds and is judged by one evaluator (the oracle and FID features trained on pool O, FID
against the test split; ``--pools`` is a folder written by ``clinalign data pools`` or by the
feedback bench). clinalign's own samplers run through ``clinalign.sampling``; diffusers'
schedulers (UniPC, DPM-Solver++ 3M) run through the exported model (``clinalign export``) and
``ClinalignPipeline``, exactly as a user of the export would sample. The reference is ancestral
sampling with every training step; ``fid_vs_reference`` is each sampler's FID over the
reference's. Writes OUT/sampler_quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinalign.data.pools import read_pools  # noqa: E402
from clinalign.pipeline.compare import CompareConfig, Pools, make_evaluator  # noqa: E402
from clinalign.sampling.sample import SampleConfig, sample_folder  # noqa: E402
from clinalign.training.checkpoint import find_checkpoint  # noqa: E402

# name -> (backend, sampler or diffusers scheduler, steps); steps 0 = every training step.
SAMPLERS = {
    "ancestral (all steps)": ("clinalign", "ancestral", 0),
    "ddim 50": ("clinalign", "ddim", 50),
    "ddim 20": ("clinalign", "ddim", 20),
    "ddim 10": ("clinalign", "ddim", 10),
    "dpm++ 2M 20": ("clinalign", "dpm++", 20),
    "dpm++ 2M 10": ("clinalign", "dpm++", 10),
    "unipc 20 (diffusers)": ("diffusers", "unipc", 20),
    "unipc 10 (diffusers)": ("diffusers", "unipc", 10),
    "dpm++ 3M 10 (diffusers)": ("diffusers", "dpm3m", 10),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--pools", type=Path, required=True, help="a folder with G/, E/, O/ and pools.json")
    p.add_argument("--test", type=Path, required=True, help="the real test split (FID reference)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma list of: " + ", ".join(SAMPLERS))
    p.add_argument("--per_class", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def diffusers_pipeline(checkpoint: Path, out: Path, scheduler: str):
    """The exported model in ``ClinalignPipeline`` with a diffusers scheduler, as a user would load it."""
    import diffusers

    from clinalign.interop.export import export_diffusers
    from clinalign.interop.pipeline_clinalign import ClinalignPipeline

    folder = out / "export"
    if not (folder / "model_index.json").exists():
        export_diffusers(checkpoint, folder)
    index = json.loads((folder / "model_index.json").read_text())
    config = diffusers.DDPMScheduler.load_config(folder / "scheduler")
    clip = {"thresholding": True, "sample_max_value": 1.0}  # x_0 clipped to [-1, 1], as clinalign samples
    if scheduler == "unipc":
        sched = diffusers.UniPCMultistepScheduler.from_config(config, **clip)
    else:
        sched = diffusers.DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=3, **clip
        )
    return ClinalignPipeline(
        unet=diffusers.UNet2DModel.from_pretrained(folder / "unet").eval(),
        scheduler=sched,
        rescale_timesteps=index["rescale_timesteps"],
        class_names=index["class_names"],
    )


def sample_with_diffusers(checkpoint: Path, folder: Path, scheduler: str, steps: int, args) -> None:
    if folder.exists() and any(folder.glob("*.png")):
        return
    pipe = diffusers_pipeline(checkpoint, args.out, scheduler)
    pipe.set_progress_bar_config(disable=True)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(pipe.config.class_names)
    labels = [c for c in names for _ in range(args.per_class)]
    for k, start in enumerate(range(0, len(labels), args.batch_size)):
        batch = labels[start : start + args.batch_size]
        g = torch.Generator().manual_seed(args.seed * 1000 + k)
        images = pipe(class_labels=batch, num_inference_steps=steps, generator=g, output_type="np").images
        for i, (c, im) in enumerate(zip(batch, images)):
            Image.fromarray(np.round(im * 255).astype(np.uint8)).save(folder / f"{c}_{start + i:05d}.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ck = find_checkpoint(args.checkpoint)
    record = read_pools(args.pools)
    pools = Pools(args.pools / "G", args.pools / "E", args.pools / "O", args.test, record)
    judge = make_evaluator(pools, ck.model.image_size, dataclasses.replace(CompareConfig(), utility=False), args.out)
    rows = []
    for name in args.samplers.split(","):
        backend, sampler, steps = SAMPLERS[name]
        folder = args.out / "samples" / name.replace(" ", "_").replace("(", "").replace(")", "")
        t0 = time.perf_counter()
        if backend == "clinalign":
            cfg = SampleConfig(
                num_samples=args.per_class * len(ck.class_map),
                sampler=sampler,
                steps=steps,
                batch_size=args.batch_size,
                seed=args.seed,
            )
            sample_folder(ck, folder, cfg, progress=True)
        else:
            sample_with_diffusers(args.checkpoint, folder, sampler, steps, args)
        seconds = time.perf_counter() - t0
        m = judge.judge(folder).samples.metrics
        rows.append(
            {
                "sampler": name,
                "steps": steps or ck.diffusion.diffusion_steps,
                "fid": m["fid"],
                "plausibility": m["plausibility"]["rate"],
                "checklist": m["checklist"]["all"],
                "precision": m["prdc"]["precision"],
                "recall": m["prdc"]["recall"],
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    ref = next((r["fid"] for r in rows if r["sampler"].startswith("ancestral")), None)
    for r in rows:
        r["fid_vs_reference"] = r["fid"] / ref if ref else None
    summary = {"bench": "sampler_quality", "checkpoint": str(args.checkpoint), "step": ck.step, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampler_quality.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
