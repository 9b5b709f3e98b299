"""Equal-budget comparison with the reference Noise2Void implementation, juglab's `n2v` 0.3.3.

    python bench/n2v_compare.py [--image cell] [--steps 500] [--ref-venv DIR]

Both train the same network size (U-Net depth 2, 32 first-level filters, batch norm) on the same noisy
image (a clean CC0 image from `../shared/data/denoise_clean_cc0`, or scikit-image's copy of it, plus
Gaussian noise of sigma 25 on the 0-255 scale, seeded), with patches of 64x64, batches of 64 and the
same number of steps, one after the other on this machine. Each keeps its own defaults otherwise
(masking, schedule, checkpoint choice). The reference runs in its own virtual environment (TensorFlow
2.15, Keras 2), which this script creates with pip when `--ref-venv` does not hold one yet.

Prints the median training-step time of each (from one step's end to the next, input waits included),
their ratio, and the PSNR/SSIM of each denoised image; writes the same as JSON under `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from worker_common import large_image

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PACKAGES = ["tensorflow==2.15.*", "n2v==0.3.3", "scikit-image<0.25"]
# CAREamics 0.3.5 pins torch<2.14 and torchvision<=0.26, but PyPI's torchvision does not import beside the
# CPU build of torch 2.13 that this machine has; torch 2.14.1 with torchvision 0.29.1 do, and CAREamics
# runs on them (installed without its pins, its other requirements as it states them).
CAREAMICS_STEPS = [
    ["torch==2.14.1", "torchvision==0.29.1"],
    [
        "lightning>=2.2,<=2.6.6,!=2.6.2,!=2.6.3", "bioimageio.core>=0.9,<=0.11.0", "pydantic>=2.11,<2.14",
        "microssim<=0.0.5", "torchmetrics>0.7,<1.9", "zarr>=3,<4", "tifffile<=2026.3.3",
        "scikit-image<=0.26.0", "psutil<=7.2.2", "pyyaml<=6.0.3", "pillow<=13.0.0", "matplotlib<=3.11.2",
        "numpy>=1.21,<=2.4.6",
    ],
    ["--no-deps", "careamics==0.3.5"],
]  # fmt: skip


def clean_image(name: str, folder: Path) -> np.ndarray:
    """A clean grayscale image by name: from `folder` where it is, else from scikit-image's data."""
    path = folder / f"{name}.png"
    if path.is_file():
        import imageio.v3 as iio

        return iio.imread(path).astype(np.float32)
    from skimage import data as skimage_data

    return getattr(skimage_data, name)().astype(np.float32)


def reference_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"creating the reference environment in {venv} ({' '.join(REFERENCE_PACKAGES)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REFERENCE_PACKAGES], check=True)
    return python


def careamics_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"creating the CAREamics environment in {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in CAREAMICS_STEPS:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


def run_ours(noisy: Path, clean: Path, out: Path, budget: dict[str, int], extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", "training.denoise",
        "--data", str(noisy), "--clean", str(clean), "--out-dir", str(out.parent), "--run-name", out.name,
        "--depth", str(budget["depth"]), "--base-filters", str(budget["base_filters"]),
        "--patch-size", str(budget["patch_size"]), "--batch-size", str(budget["batch_size"]),
        "--epochs", str(budget["epochs"]), "--steps-per-epoch", str(budget["steps_per_epoch"]),
        *extra,
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    with (out / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics = json.loads((out / "metrics.json").read_text())["images"][0]
    # The same checkpoint with 8-fold test-time augmentation, as the reference's predict(tta=True).
    predict = [sys.executable, "-m", "training.predict", str(out), str(noisy), "--out", str(out / "tta")]
    subprocess.run([*predict, "--tta"], check=True, cwd=ROOT)
    tta = tifffile.imread(out / "tta" / f"{noisy.stem}_denoised.tif").astype(np.float32).squeeze()
    import keras

    from training.restoration import image_quality  # the measure of the run's own metrics.json

    reference = tifffile.imread(clean).astype(np.float32)

    return {
        "implementation": f"this project (Keras {keras.__version__})",
        "predict_2048": predict_speed(out, noisy, clean),
        "step_ms_median": float(np.median([float(row["step_ms"]) for row in rows])),
        "steps": budget["epochs"] * budget["steps_per_epoch"],
        "train_seconds": float(sum(float(row["epoch_seconds"]) for row in rows)),
        "noisy": metrics["noisy"],
        "denoised": metrics["denoised"],
        "denoised_tta": image_quality(reference[..., np.newaxis], tta[..., np.newaxis]),
        "arguments": extra,
    }


def predict_speed(run_dir: Path, noisy: Path, clean: Path, side: int = 2048) -> dict[str, dict[str, float]]:
    """Seconds to denoise a 2048 x 2048 image (the noisy image tiled) with the run's model, as
    `training.predict` does (normalisation, the run's tiles, mirrored border), through Keras in float32
    and in bfloat16 and through onnxruntime; after a warm-up on the noisy image itself, in this process.
    With each, the PSNR of that warm-up prediction against the clean image (the cost of bfloat16)."""
    from training.engines import predictor
    from training.predict import load_run
    from training.restoration import image_quality, read_normalization, restore_image

    _, config, model = load_run(run_dir, "last")
    stats = read_normalization(run_dir)
    image = tifffile.imread(noisy).astype(np.float32)
    reference = tifffile.imread(clean).astype(np.float32)[..., np.newaxis]
    big = large_image(image, side)[..., np.newaxis]
    measured = {}
    for engine, precision in (("keras", "float32"), ("keras", "bfloat16"), ("onnx", "float32")):
        runner = predictor(model, engine, precision)
        denoised = restore_image(
            model, image[..., None], stats=stats, tile_size=config.tile_size, tta=config.tta, runner=runner
        )
        start = time.perf_counter()
        restore_image(model, big, stats=stats, tile_size=config.tile_size, tta=config.tta, runner=runner)
        measured[f"{engine} {precision}"] = {
            "seconds": time.perf_counter() - start,
            "psnr": image_quality(reference, denoised)["psnr"],
        }
    return measured


def run_reference(
    python: Path,
    noisy: Path,
    clean: Path,
    out: Path,
    budget: dict[str, int],
    worker: str = "n2v_reference_worker.py",
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(python), str(ROOT / "bench" / worker),
        "--noisy", str(noisy), "--clean", str(clean), "--out", str(out),
        *(arg for key, value in budget.items() for arg in (f"--{key.replace('_', '-')}", str(value))),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    # Its own environment only: none of this project's (KERAS_BACKEND and the like) leaks in.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KERAS", "PYTHON"))}
    subprocess.run(command, check=True, env=env)
    return json.loads((out / "result.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", default="cell", help="clean image name (default: cell)")
    parser.add_argument("--clean-dir", type=Path, default=ROOT.parent / "shared/data/denoise_clean_cc0")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=500, help="training steps of each (default: 500)")
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--ref-venv", type=Path, default=ROOT / "bench/results/n2v-0.3.3-venv")
    parser.add_argument("--careamics-venv", type=Path, default=ROOT / "bench/results/careamics-venv")
    parser.add_argument("--no-careamics", action="store_true", help="skip the CAREamics run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument(
        "--ours",
        action="append",
        default=None,
        help="options of one run of ours (repeatable; default: one run in float32 and one with "
        "--precision mixed_bfloat16, which CPUs with AVX512-BF16 or AMX run natively)",
    )
    args = parser.parse_args()
    if args.steps % args.steps_per_epoch:
        parser.error(f"--steps {args.steps} is not a multiple of --steps-per-epoch {args.steps_per_epoch}")
    budget = {
        "epochs": args.steps // args.steps_per_epoch,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": 64,
        "patch_size": 64,
        "depth": 2,
        "base_filters": 32,
    }
    python = reference_python(args.ref_venv)
    out = args.out / f"n2v-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "data").mkdir(parents=True)
    clean = clean_image(args.image, args.clean_dir)
    noise = np.random.default_rng(args.seed).normal(0.0, args.sigma, clean.shape).astype(np.float32)
    tifffile.imwrite(out / "data" / "noisy.tif", clean + noise)
    tifffile.imwrite(out / "data" / "clean.tif", clean)
    noisy_path, clean_path = out / "data" / "noisy.tif", out / "data" / "clean.tif"

    variants = [v.split() for v in args.ours] if args.ours else [[], ["--precision", "mixed_bfloat16"]]
    ours = [
        run_ours(noisy_path, clean_path, out / f"ours-{i}", budget, variant)
        for i, variant in enumerate(variants)
    ]
    reference = run_reference(python, noisy_path, clean_path, out / "reference", budget)
    peers = [reference]
    if not args.no_careamics:
        care = careamics_python(args.careamics_venv)
        peers.append(
            run_reference(
                care, noisy_path, clean_path, out / "careamics", budget, worker="careamics_worker.py"
            )
        )
    fastest = min(peers, key=lambda peer: peer["step_ms_median"])
    for run in ours:
        run["step_speedup"] = fastest["step_ms_median"] / run["step_ms_median"]
        run["psnr_difference_db"] = run["denoised"]["psnr"] - max(p["denoised"]["psnr"] for p in peers)
    summary = {
        "benchmark": "n2v_compare",
        "command": " ".join(["python", "bench/n2v_compare.py", *sys.argv[1:]]),
        "image": args.image,
        "sigma": args.sigma,
        "budget": budget,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "ours": ours,
        "reference": reference,
        "peers": peers,
        "fastest_peer": fastest["implementation"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    header = f"{'step (ms)':>10}{'speed-up':>9}{'train (s)':>10}{'PSNR (dB)':>10}{'SSIM':>7}{'PSNR TTA':>9}"
    print(f"\n{'':36}{header}")
    noisy = reference["noisy"]
    print(f"{'noisy input':36}{'':>29}{noisy['psnr']:>10.2f}{noisy['ssim']:>7.3f}")
    for run in [*ours, *peers]:
        label = run["implementation"] + (f" {' '.join(run['arguments'])}" if run.get("arguments") else "")
        print(
            f"{label[:35]:36}{run['step_ms_median']:>10.0f}{run.get('step_speedup', 1.0):>8.2f}x"
            f"{run['train_seconds']:>10.0f}{run['denoised']['psnr']:>10.2f}{run['denoised']['ssim']:>7.3f}"
            f"{run['denoised_tta']['psnr']:>9.2f}"
        )
    print(f"\nspeed-ups against the faster peer, {fastest['implementation']}")
    print("prediction of a 2048 x 2048 image (seconds):")
    for peer in peers:
        print(f"  {peer['implementation']}: {peer['predict_2048_seconds']:.1f}")
    ref_seconds = reference["predict_2048_seconds"]
    for run in ours:
        for engine, measured in run["predict_2048"].items():
            seconds = measured["seconds"]
            print(
                f"  this project trained with {run['arguments'] or 'defaults'}, {engine}: {seconds:.2f} "
                f"({ref_seconds / seconds:.2f}x faster than n2v; PSNR on the image {measured['psnr']:.2f})"
            )
    print(out / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
