"""The default demos on every installed Keras backend: wall time, step time, quality, and the package checks.

    python bench/backends.py [--backends tensorflow jax torch] [--tasks segment denoise]

Runs `python -m training.segment` and `python -m training.denoise` with their defaults (the embedded
demos, export included) once per backend, one after the other, each in its own process, and reads what
the run folder holds: the wall time of the whole command (training, evaluation and export), the median
training step of the epochs after the first (`step_ms` of history.csv), F1 at IoU 0.5 (segmentation) or
the PSNR of the denoised image (denoising), and whether the export's checks passed. Prints a table and
writes bench/results/backends.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from base.backend import BACKENDS, installed  # noqa: E402

TASKS = ("segment", "denoise")


def median_step_ms(run_dir: Path) -> float:
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return statistics.median(float(row["step_ms"]) for row in rows[1:] or rows)


def quality(task: str, metrics: dict) -> tuple[str, float]:
    if task == "segment":
        return "F1@0.5", float(metrics["instances"]["f1_at_0.5"])
    return "PSNR dB", float(metrics["mean_psnr"])


def run_demo(task: str, backend: str, scratch: Path) -> dict:
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", f"training.{task}", "--backend", backend, "--out-dir", str(scratch),
         "--run-name", f"{task}-{backend}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    run_dir = scratch / f"{task}-{backend}"
    if not (run_dir / "metrics.json").is_file():
        raise SystemExit(f"{task} on {backend} failed:\n{result.stderr[-3000:]}")
    name, value = quality(task, json.loads((run_dir / "metrics.json").read_text()))
    return {
        "wall_s": wall,
        "step_ms": median_step_ms(run_dir),
        "quality": name,
        "value": value,
        "checks_passed": result.returncode == 0 and "all checks passed" in result.stdout,
        "exit_status": result.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backends", nargs="+", default=[b for b in BACKENDS if installed(b)], choices=BACKENDS
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    args = parser.parse_args()
    results: dict = {}
    lines = [
        "| demo | backend | wall (s) | step (ms) | quality | all checks passed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory(prefix="bkz-backends-") as scratch:
        for task in args.tasks:
            for backend in args.backends:
                measured = run_demo(task, backend, Path(scratch))
                results[f"{task}/{backend}"] = measured
                lines.append(
                    f"| {task} | {backend} | {measured['wall_s']:.0f} | {measured['step_ms']:.0f} | "
                    f"{measured['quality']} {measured['value']:.3f} | "
                    f"{'yes' if measured['checks_passed'] else 'NO'} |"
                )
                print(lines[-1], flush=True)
    print("\n".join(lines))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "backends.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out / 'backends.json'}")


if __name__ == "__main__":
    main()
