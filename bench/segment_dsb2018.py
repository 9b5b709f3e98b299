"""Benchmark: U-Net trained on CPU on the real DSB2018 nuclei subset, evaluated on its held-out test split.

    python bench/segment_dsb2018.py [--data ../shared/data/nuclei_dsb2018] [--out bench/results]

Trains with the split of the data's index.csv (train for fitting, val for checkpointing), evaluates the
best checkpoint on the test images, and prints and writes (JSON) the wall time and the instance metrics.
The target of the segmentation issue: F1 at IoU 0.5 >= 0.85 within 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# The settings measured for the closing note of the segmentation issue; see bench/README.md.
TRAINING_ARGS = [
    "--depth",
    "3",
    "--base-filters",
    "16",
    "--patch-size",
    "128",
    "--batch-size",
    "8",
    "--epochs",
    "60",
    "--steps-per-epoch",
    "50",
    "--lr-schedule",
    "cosine",
    "--learning-rate",
    "0.002",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", type=Path, default=root.parent / "shared" / "data" / "nuclei_dsb2018")
    parser.add_argument("--out", type=Path, default=root / "bench" / "results")
    args = parser.parse_args()
    if not (args.data / "index.csv").is_file():
        parser.error(f"{args.data}: DSB2018 subset not found (expects images/, masks/, index.csv)")

    from training.segment import main as segment_main

    run_name = f"dsb2018-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    status = segment_main(
        ["--data", str(args.data), "--out-dir", str(args.out), "--run-name", run_name, *TRAINING_ARGS]
    )
    seconds = time.perf_counter() - start
    if status:
        return status
    metrics = json.loads((args.out / run_name / "metrics.json").read_text())
    at_05 = metrics["instances"]["per_threshold"][0]
    summary = {
        "benchmark": "segment_dsb2018",
        "command": "python bench/segment_dsb2018.py",
        "training_args": TRAINING_ARGS,
        "wall_seconds_total": round(seconds, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "evaluated_on": metrics["evaluated_on"],
        "n_test_images": len(metrics["images"]),
        "f1_at_0.5": at_05["f1"],
        "precision_at_0.5": at_05["precision"],
        "recall_at_0.5": at_05["recall"],
        "mean_average_precision_0.5_0.9": metrics["instances"]["mean_average_precision"],
        "pixel_iou": metrics["pixel_iou"],
        "run_dir": str(args.out / run_name),
    }
    (args.out / f"{run_name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
