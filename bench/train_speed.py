"""Training and sampling throughput of the real training loop, printed as JSON.

    python bench/train_speed.py                    # eps fp32 (the baseline) beside `clinalign train`'s default recipe
    python bench/train_speed.py --configs A --precisions fp32,bf16,default --steps 23

``--precisions``: fp32 and bf16 train eps-prediction (improved-diffusion's objective); ``default`` is
what a new ``clinalign train`` run uses when no objective flag is typed (clinalign.training.cli.RECIPE).

Config A: --image_size 32 --num_channels 64 --num_res_blocks 2 --diffusion_steps 1000
          --noise_schedule cosine --learn_sigma True --class_cond True --batch_size 16
Config B: the seed's defaults (--image_size 64 --num_channels 128 --num_res_blocks 3
          --diffusion_steps 4000 --noise_schedule linear), batch 4 (the seed trains at 128:
          ``--batch_size 128`` on a GPU).
images/s is the median over the steps after the warm-up, each step timed inside the loop
(metrics.jsonl with --log_interval 1), the way BASELINES.md measured improved-diffusion.

On a GPU, one prepared run answers the speed questions (fp32 vs bf16, torch.compile, memory, MFU):

    python bench/train_speed.py --configs B --batch_size 128 --precisions fp32,bf16 --compile both

``flops_per_image`` is the model's forward + backward FLOPs per training image, counted with
torch.utils.flop_counter on the CPU; ``mfu`` divides the achieved FLOP/s by ``--peak_tflops``
(default: the GPU's dense bf16 peak where known, e.g. 989 for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinalign.data.classmap import ClassMap  # noqa: E402
from clinalign.diffusion import DiffusionConfig, diffusion_from_config  # noqa: E402
from clinalign.models.unet import ModelConfig, build_denoiser, count_parameters  # noqa: E402
from clinalign.training.config import TrainConfig  # noqa: E402
from clinalign.training.loop import TrainSpec, train  # noqa: E402

CONFIGS = {
    "A": dict(
        model=dict(image_size=32, num_channels=64, num_res_blocks=2, learn_sigma=True, class_cond=True),
        diffusion=dict(diffusion_steps=1000, noise_schedule="cosine"),
        batch_size=16,
        classes=4,
    ),
    "B": dict(
        model=dict(image_size=64, num_channels=128, num_res_blocks=3),
        diffusion=dict(diffusion_steps=4000, noise_schedule="linear"),
        batch_size=4,
        classes=1,
    ),
}


def random_stream(batch: int, size: int, classes: int):
    g = torch.Generator().manual_seed(0)
    while True:
        yield (
            torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
            torch.randint(0, classes, (batch,), generator=g),
            torch.ones(batch),
        )


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for the MFU column.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def gpu_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def flops_per_image(model_cfg: ModelConfig, classes: int, batch: int = 2) -> int:
    """Forward + backward FLOPs of one training image (counted on the CPU, so no device is needed)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_denoiser(model_cfg, 3, classes)
    size = model_cfg.image_size
    x, t = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    y = torch.zeros(batch, dtype=torch.long) if model_cfg.class_cond else None
    with FlopCounterMode(display=False) as counter:
        model(x, t, y=y).float().square().mean().backward()
    return counter.get_total_flops() // batch


def bench_train(
    name: str,
    precision: str,
    steps: int,
    warmup: int,
    device: str,
    batch_size: int = 0,
    compile_model: bool = False,
    peak_tflops: float | None = None,
) -> dict:
    from clinalign.training.cli import RECIPE

    conf = dict(CONFIGS[name])
    conf["batch_size"] = batch_size or conf["batch_size"]
    model_cfg = ModelConfig(**conf["model"])
    recipe = precision == "default"
    prediction = RECIPE["prediction"] if recipe else "eps"
    diffusion_cfg = DiffusionConfig(**conf["diffusion"], prediction=prediction)
    train_cfg = TrainConfig(
        batch_size=conf["batch_size"],
        lr=1e-4,
        max_steps=steps,
        log_interval=1,
        save_interval=10**9,
        use_fp16=precision == "bf16" or (recipe and RECIPE["use_fp16"]),
        device=device,
        compile=compile_model,
    )
    class_map = ClassMap.from_labels([f"c{i}" for i in range(conf["classes"])])
    with tempfile.TemporaryDirectory() as tmp:
        spec = TrainSpec(
            run_dir=Path(tmp),
            model=model_cfg,
            diffusion=diffusion_cfg,
            train=train_cfg,
            channels=3,
            class_map=class_map,
            streams=lambda d, s: [random_stream(conf["batch_size"], model_cfg.image_size, conf["classes"])],
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        train(spec)
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records[warmup:]]
    params = count_parameters(build_denoiser(model_cfg, 3, conf["classes"]))
    rate, flops = statistics.median(rates), flops_per_image(model_cfg, conf["classes"])
    out = {
        "bench": "train",
        "config": name,
        "precision": precision,
        "prediction": prediction,
        "batch_size": conf["batch_size"],
        "compile": compile_model,
        "params": params,
        "images_per_s": round(rate, 2),
        "flops_per_image": flops,
        "achieved_tflops": round(rate * flops / 1e12, 3),
        "mfu": round(rate * flops / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "images_per_s_all": [round(r, 2) for r in rates],
        "steps_timed": len(rates),
    }
    out.update(peak_memory())
    return out


def bench_sample(name: str, precision: str, steps: int, device: str, batch: int = 16) -> dict:
    from clinalign.diffusion import sample_images

    conf = CONFIGS[name]
    model_cfg = ModelConfig(**conf["model"])
    model = build_denoiser(model_cfg, 3, conf["classes"]).to(device).eval()
    diffusion = diffusion_from_config(
        DiffusionConfig(**conf["diffusion"]), learn_sigma=model_cfg.learn_sigma, sigma_small=model_cfg.sigma_small
    )
    y = torch.arange(batch) % conf["classes"]
    results = {}
    for sampler in ("ddim", "dpm++"):
        amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with torch.inference_mode(), amp:
            t0 = time.perf_counter()
            sample_images(
                model,
                diffusion,
                (batch, 3, model_cfg.image_size, model_cfg.image_size),
                sampler=sampler,
                steps=steps,
                model_kwargs={"y": y.to(device)} if model_cfg.class_cond else None,
                generator=torch.Generator().manual_seed(0),
            )
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
        results[sampler] = round(batch / elapsed, 3)
    return {
        "bench": "sample",
        "config": name,
        "precision": precision,
        "steps": steps,
        "batch_size": batch,
        "images_per_s": results,
    }


def peak_memory() -> dict:
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="A,B")
    parser.add_argument("--precisions", default="fp32,default", help="fp32, bf16 (eps-prediction) and default")
    parser.add_argument(
        "--steps", type=int, default=23, help="training steps per measurement (first --warmup not timed)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample_steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_sampling", action="store_true")
    parser.add_argument("--batch_size", type=int, default=0, help="override the config's batch (0 = keep)")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off", help="torch.compile the model")
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="the device's bf16 peak for MFU (default: known GPUs)"
    )
    args = parser.parse_args()
    peak = args.peak_tflops or gpu_peak_tflops()
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    env = {
        "bench": "env",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "peak_tflops": peak,
    }
    print(json.dumps(env), flush=True)
    for name in args.configs.split(","):
        for precision in args.precisions.split(","):
            steps = args.steps if name == "A" or args.device != "cpu" else max(args.warmup + 3, args.steps // 3)
            for compiled in compiles:
                result = bench_train(name, precision, steps, args.warmup, args.device, args.batch_size, compiled, peak)
                print(json.dumps(result), flush=True)
    if not args.skip_sampling:
        for precision in args.precisions.split(","):
            amp = "bf16" if precision == "default" else precision
            print(json.dumps(bench_sample("A", amp, args.sample_steps, args.device)), flush=True)


if __name__ == "__main__":
    main()
