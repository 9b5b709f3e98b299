"""Reduced precision against float32: the same trainings, seed for seed, in both precisions.

    python bench/precision.py [--task denoise|segment|both] [--seeds 0 1 2] [--segment-epochs 20]

- `denoise`: N2V at the standard size (depth 2, 32 filters, batch 64, patches of 64^2, 500 steps) on
  scikit-image's `cell` with Gaussian noise of sigma 25, as `bench/n2v_compare.py`; PSNR of the denoised
  image against the clean one.
- `segment`: the U-Net of `bench/segment_dsb2018.py` on the DSB2018 subset of `../shared/data`, with
  fewer epochs (`--segment-epochs`); F1 at IoU 0.5 on its test split.

Each seed runs once in float32 and once with `--precision mixed_bfloat16`. With one seed the two runs
draw the same patches, masks and initial weights, so their difference is the precision's (and the
chaotic growth of rounding differences during training). The control (off with `--no-control`) runs
each seed a third time in float32 with `TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow's Eigen kernels instead of
oneDNN's, the same arithmetic summed in another order. Its difference from float32 is how far one
training reproduces itself at all, the yardstick for bfloat16's. Prints each seed and the mean, standard
deviation and mean magnitude of both differences; writes `summary.json` into the benchmark's folder
under `--out`.
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
# arm: (--precision, environment)
ARMS = {
    "float32": ("float32", {}),
    "mixed_bfloat16": ("mixed_bfloat16", {}),
    "float32_eigen": ("float32", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
}
DENOISE_ARGS = [
    "--depth", "2", "--base-filters", "32", "--patch-size", "64", "--batch-size", "64",
    "--epochs", "10", "--steps-per-epoch", "50",
]  # fmt: skip


def _train(task: str, data_args: list[str], run_dir: Path, extra: list[str], env: dict) -> dict:
    command = [
        sys.executable, "-m", f"training.{task}", *data_args,
        "--out-dir", str(run_dir.parent), "--run-name", run_dir.name, "--no-export", *extra,
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, **env})
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
    parser.add_argument(
        "--no-control", action="store_true", help="skip the float32 run under Eigen's kernels"
    )
    args = parser.parse_args()
    arms = [a for a in ARMS if not (args.no_control and a == "float32_eigen")]
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
            for arm in arms:
                precision, env = ARMS[arm]
                run_dir = out / f"{task}-{seed}-{arm}"
                start = time.perf_counter()
                flags = ["--seed", str(seed), "--precision", precision]
                pair[arm] = _score(task, _train(task, data[task], run_dir, flags, env))
                pair[f"{arm}_seconds"] = round(time.perf_counter() - start, 1)
            pair["difference"] = pair["mixed_bfloat16"] - pair["float32"]
            if "float32_eigen" in pair:
                pair["control_difference"] = pair["float32_eigen"] - pair["float32"]
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
        print(f"{task}: {measure[task]} by seed: float32, bfloat16 and control (each minus float32)")
        for p in pairs:
            line = (
                f"  seed {p['seed']}: {p['float32']:.4f}, {p['mixed_bfloat16']:.4f} ({p['difference']:+.4f})"
            )
            if "float32_eigen" in p:
                line += f", {p['float32_eigen']:.4f} ({p['control_difference']:+.4f})"
            print(line)
        for name in ("difference", "control_difference"):
            values = np.array([p[name] for p in pairs if name in p])
            if not len(values):
                continue
            stats = {
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "mean_magnitude": float(np.abs(values).mean()),
            }
            summary[f"{task}_{name}"] = stats
            print(
                f"  {name}: mean {stats['mean']:+.4f}, sd {stats['sd']:.4f}, mean magnitude "
                f"{stats['mean_magnitude']:.4f} over {len(values)} seeds"
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(out / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
