"""Reduced precision against float32: the same trainings, seed for seed, in both precisions.

    python bench/precision.py [--task denoise|segment|both] [--seeds 0 1 2] [--segment-epochs 20]

- `denoise`: N2V at the standard size (depth 2, 32 filters, batch 64, patches of 64^2, 500 steps) on
  scikit-image's `cell` with Gaussian noise of sigma 25, as `bench/n2v_compare.py`; PSNR of the denoised
  image against the clean one.
- `segment`: the U-Net of `bench/segment_dsb2018.py` on the DSB2018 subset of `../shared/data`, with
  fewer epochs (`--segment-epochs`); F1 at IoU 0.5 on its test split.

Each seed runs once in float32 and once with `--precision mixed_bfloat16`. With one seed the two runs
draw the same patches, masks and initial weights, so their difference is the precision's (and the
chaotic growth of rounding differences during training). Prints each pair and the mean and standard
deviation of the differences; writes `summary.json` into the benchmark's folder under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from n2v_compare import clean_image
from segment_dsb2018 import TRAINING_ARGS

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "mixed_bfloat16")
DENOISE_ARGS = [
    "--depth", "2", "--base-filters", "32", "--patch-size", "64", "--batch-size", "64",
    "--epochs", "10", "--steps-per-epoch", "50",
]  # fmt: skip


def _train(task: str, data_args: list[str], run_dir: Path, extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", f"training.{task}", *data_args,
        "--out-dir", str(run_dir.parent), "--run-name", run_dir.name, "--no-export", *extra,
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "metrics.json").read_text())


def _score(task: str, metrics: dict) -> float:
    if task == "denoise":
        return float(metrics["images"][0]["denoised"]["psnr"])
    return float(metrics["instances"]["per_threshold"][0]["f1"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=("denoise", "segment", "both"), default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--segment-epochs", type=int, default=20)
    parser.add_argument("--dsb", type=Path, default=ROOT.parent / "shared/data/nuclei_dsb2018")
    parser.add_argument("--clean-dir", type=Path, default=ROOT.parent / "shared/data/denoise_clean_cc0")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    tasks = ("denoise", "segment") if args.task == "both" else (args.task,)
    if "segment" in tasks and not (args.dsb / "index.csv").is_file():
        parser.error(f"{args.dsb}: DSB2018 subset not found (expects images/, masks/, index.csv)")

    out = args.out / f"precision-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "data").mkdir(parents=True)
    clean = clean_image("cell", args.clean_dir)
    noise = np.random.default_rng(0).normal(0.0, 25.0, clean.shape).astype(np.float32)
    tifffile.imwrite(out / "data" / "noisy.tif", clean + noise)
    tifffile.imwrite(out / "data" / "clean.tif", clean)
    data = {
        "denoise": [
            "--data",
            str(out / "data/noisy.tif"),
            "--clean",
            str(out / "data/clean.tif"),
            *DENOISE_ARGS,
        ],
        "segment": ["--data", str(args.dsb), *TRAINING_ARGS, "--epochs", str(args.segment_epochs)],
    }
    measure = {"denoise": "PSNR (dB)", "segment": "F1@0.5"}
    results: dict[str, list[dict]] = {}
    for task in tasks:
        results[task] = []
        for seed in args.seeds:
            pair = {"seed": seed}
            for precision in PRECISIONS:
                run_dir = out / f"{task}-{seed}-{precision}"
                start = time.perf_counter()
                metrics = _train(task, data[task], run_dir, ["--seed", str(seed), "--precision", precision])
                pair[precision] = _score(task, metrics)
                pair[f"{precision}_seconds"] = round(time.perf_counter() - start, 1)
            pair["difference"] = pair["mixed_bfloat16"] - pair["float32"]
            results[task].append(pair)
            print(json.dumps(pair), flush=True)

    summary = {
        "benchmark": "precision",
        "command": " ".join(["python", "bench/precision.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    print()
    for task, pairs in results.items():
        differences = np.array([p["difference"] for p in pairs])
        spread = float(differences.std(ddof=1)) if len(differences) > 1 else float("nan")
        summary[f"{task}_mean_difference"] = float(differences.mean())
        summary[f"{task}_difference_sd"] = spread
        print(f"{task}: {measure[task]}, bfloat16 minus float32, seed by seed")
        for p in pairs:
            low, high = p["float32"], p["mixed_bfloat16"]
            print(f"  seed {p['seed']}: {low:.4f} -> {high:.4f} ({p['difference']:+.4f})")
        print(f"  mean {differences.mean():+.4f}, sd {spread:.4f} over {len(pairs)} seeds")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(out / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
