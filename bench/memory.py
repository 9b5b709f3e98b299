"""Memory over long runs: does training grow per epoch, and does prediction over many large images stay
bounded?

    python bench/memory.py [--epochs 40] [--images 12] [--size 2048]

1. Trains the default U-Net (`python -m training.segment`, synthetic data, no export) for `--epochs` short
   epochs in a child process, sampling its resident memory (VmRSS, /proc) every 0.2 s, and reads the
   memory at each epoch's end from the samples taken when `history.csv` gained a row. Growth is the slope
   of a straight line through the epochs of the second half (after warm-up), in MiB per epoch.
2. Predicts `--images` synthetic images of `--size` x `--size` pixels with `python -m training.predict`
   (tiled) and reports the peak memory and the memory after each image.

Prints a table and writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class Sampler(threading.Thread):
    """Samples a process's resident memory every `interval` seconds, with a probe of its progress."""

    def __init__(self, process: subprocess.Popen, progress, interval: float = 0.2):
        super().__init__(daemon=True)
        self.process, self.progress, self.interval = process, progress, interval
        self.samples: list[tuple[float, float, int]] = []  # (time, MiB, progress)

    def run(self) -> None:
        start = time.monotonic()
        while self.process.poll() is None:
            rss = _rss_mib(self.process.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - start, rss, self.progress()))
            time.sleep(self.interval)


def _history_rows(run_dir: Path) -> int:
    try:
        with (run_dir / "history.csv").open() as handle:
            return sum(1 for _ in csv.DictReader(handle))
    except (FileNotFoundError, ValueError, csv.Error):
        return 0


def training_memory(out: Path, epochs: int) -> dict:
    run_dir = out / "long"
    command = [
        sys.executable,
        "-m",
        "training.segment",
        "--out-dir",
        str(out),
        "--run-name",
        "long",
        "--epochs",
        str(epochs),
        "--steps-per-epoch",
        "10",
        "--no-export",
        "--no-tune-thresholds",
    ]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    sampler = Sampler(process, lambda: _history_rows(run_dir))
    sampler.start()
    process.wait()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"training failed ({process.returncode})")
    per_epoch: dict[int, float] = {}
    for _, rss, rows in sampler.samples:
        if rows >= 1:
            per_epoch.setdefault(rows, rss)  # the first sample after the epoch's row was written
    epochs_seen = sorted(per_epoch)
    half = [e for e in epochs_seen if e > epochs // 2]
    slope = float(np.polyfit(half, [per_epoch[e] for e in half], 1)[0]) if len(half) >= 3 else float("nan")
    return {
        "epochs": epochs,
        "rss_mib_at_epoch": {str(e): round(per_epoch[e], 1) for e in epochs_seen},
        "growth_mib_per_epoch_second_half": round(slope, 3),
        "rss_first_epoch_mib": round(per_epoch[epochs_seen[0]], 1),
        "rss_last_epoch_mib": round(per_epoch[epochs_seen[-1]], 1),
        "peak_mib": round(max(rss for _, rss, _ in sampler.samples), 1),
        "run_dir": str(run_dir),
    }


def prediction_memory(out: Path, run_dir: Path, images: int, size: int) -> dict:
    import tifffile

    folder = out / "large"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        base = rng.normal(100, 20, (size // 8, size // 8)).astype(np.float32)
        image = np.kron(base, np.ones((8, 8), np.float32)) + rng.normal(0, 5, (size, size)).astype(np.float32)
        tifffile.imwrite(folder / f"large_{i:03d}.tif", image)
    predictions = out / "predictions"
    command = [sys.executable, "-m", "training.predict", str(run_dir), str(folder), "--out", str(predictions)]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    done = lambda: len(list(predictions.glob("*_labels.tif"))) if predictions.is_dir() else 0  # noqa: E731
    sampler = Sampler(process, done)
    sampler.start()
    process.wait()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"prediction failed ({process.returncode})")
    after: dict[int, float] = {}
    for _, rss, count in sampler.samples:
        if count >= 1:
            after.setdefault(count, rss)
    return {
        "images": images,
        "size": size,
        "input_mib_total": round(images * size * size * 4 / 2**20, 1),
        "rss_mib_after_image": {str(k): round(v, 1) for k, v in sorted(after.items())},
        "peak_mib": round(max(rss for _, rss, _ in sampler.samples), 1),
        "seconds": round(sampler.samples[-1][0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        training = training_memory(out, args.epochs)
        prediction = prediction_memory(out, Path(training["run_dir"]), args.images, args.size)
    training.pop("run_dir")
    result = {"training": training, "prediction": prediction}
    print(f"training, {args.epochs} epochs of 10 steps (default U-Net):")
    print(
        f"  RSS after epoch 1 {training['rss_first_epoch_mib']} MiB, after epoch {args.epochs} "
        f"{training['rss_last_epoch_mib']} MiB, growth over the second half "
        f"{training['growth_mib_per_epoch_second_half']} MiB/epoch, peak {training['peak_mib']} MiB"
    )
    rss = prediction["rss_mib_after_image"]
    print(
        f"prediction of {args.images} images of {args.size}x{args.size} "
        f"({prediction['input_mib_total']} MiB):"
    )
    print(
        f"  RSS after the first image {rss.get('1')} MiB, after the last {rss.get(str(args.images))} MiB, "
        f"peak {prediction['peak_mib']} MiB, {prediction['seconds']} s"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {results / 'memory.json'}")


if __name__ == "__main__":
    main()
