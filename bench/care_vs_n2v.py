"""Benchmark: CARE (supervised, noisy/clean pairs) against Noise2Void (self-supervised, noisy images alone)
on the same data at an equal budget.

    python bench/care_vs_n2v.py [--data ../shared/data/nuclei_dsb2018] [--seed 0] [--quick]
                                [--care-option=--residual ...] [--n2v-option=... ...]

Data: the 84 images of `nuclei_dsb2018` (2D uint8, split by its `index.csv`: 56 train / 14 val / 14
test) with Gaussian noise of sigma 25 on the 0-255 scale (float32, one generator seeded with `--seed`, no
clipping), written into a scratch folder under the results folder (never into the repository).

- N2V: `python -m training.denoise` on the 56 noisy train images (its own validation images come from
  those), `--clean` the clean train images.
- CARE: `python -m training.care` on `low/` (noisy) and `high/` (clean) pairs of the 56 train and 14 val
  images, split by DSB's own train/val assignment (an `index.csv` without the test images).
- Both: the N2V network size (depth 2, 32 filters), patch 64, batch 64, 10 epochs x 50 steps, `--seed`,
  no export; every other option at the task's default (the defaults that differ are read back from each
  run's `config.json` and reported).

Each run then restores the 14 noisy test images through `python -m training.predict`; each output is
scored against its clean image with `training.restoration.image_quality` (PSNR and SSIM on the clean
image's range). Reports per-image and mean PSNR/SSIM of the noisy input, N2V and CARE, each run's
training wall time (sum of `epoch_seconds` in `history.csv`) and median `step_ms`. Prints a Markdown
table and writes `summary.json` into `bench/results/care-vs-n2v-TIME/`.

`--quick` (2 epochs x 2 steps, batch 8) only checks that the script works end to end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nuclei_dsb2018"
SIGMA = 25.0
# Options compared: each run's config.json value is reported where the two tasks differ.
COMPARED_OPTIONS = (
    "learning_rate",
    "lr_schedule",
    "plateau_patience",
    "average_steps",
    "loss",
    "residual",
    "batch_norm",
    "val_patches",
    "monitor",
    "tta",
    "precision",
)


def budget(args: argparse.Namespace) -> list[str]:
    epochs, steps, batch = (2, 2, 8) if args.quick else (10, 50, 64)
    return [
        "--depth", "2", "--base-filters", "32", "--patch-size", "64",
        "--batch-size", str(batch), "--epochs", str(epochs), "--steps-per-epoch", str(steps),
        "--seed", str(args.seed), "--no-export",
    ]  # fmt: skip


def make_noisy(data: Path, scratch: Path, seed: int) -> dict[str, str]:
    """Noisy float32 copies of all images (clean + N(0, SIGMA^2), one seeded generator, no clipping) and
    float32 clean copies, laid out for both tasks: `n2v/{noisy,clean}` (train images), `pairs/{low,high}`
    with `pairs/index.csv` (train + val), `test/{noisy,clean}`. Returns each image's split."""
    with open(data / "index.csv", newline="") as f:
        split = {row["name"]: row["split"] for row in csv.DictReader(f)}
    folders = {
        "train": [scratch / "n2v" / "noisy", scratch / "n2v" / "clean", scratch / "pairs" / "low",
                  scratch / "pairs" / "high"],
        "val": [None, None, scratch / "pairs" / "low", scratch / "pairs" / "high"],
        "test": [scratch / "test" / "noisy", scratch / "test" / "clean", None, None],
    }  # fmt: skip
    for group in folders.values():
        for folder in group:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in sorted(split):  # a fixed order, so the noise of each image depends on the seed alone
        clean = tifffile.imread(data / "images" / f"{name}.tif").astype(np.float32)
        noisy = (clean + rng.normal(0.0, SIGMA, clean.shape)).astype(np.float32)
        noisy_dir, clean_dir, low_dir, high_dir = folders[split[name]]
        for folder, image in ((noisy_dir, noisy), (clean_dir, clean), (low_dir, noisy), (high_dir, clean)):
            if folder is not None:
                tifffile.imwrite(folder / f"{name}.tif", image)
    with open(scratch / "pairs" / "index.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "split"])
        writer.writerows(sorted((n, s) for n, s in split.items() if s in ("train", "val")))
    return split


def run(command: list[str], log: Path) -> None:
    """Run a project command in a fresh process, its output to `log` (and its tail on failure)."""
    print("$", " ".join(command), flush=True)
    with open(log, "w") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        print(log.read_text()[-4000:])
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(command)}")


def history(run_dir: Path) -> dict:
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [float(r["step_ms"]) for r in rows if r.get("step_ms")]
    return {
        "epochs": len(rows),
        "train_seconds": float(sum(float(r["epoch_seconds"]) for r in rows)),
        "median_step_ms": float(np.median(steps)) if steps else None,
        "loss": [float(r["loss"]) for r in rows],
        "val_loss": [float(r["val_loss"]) for r in rows if r.get("val_loss")],
    }


def score(test: Path, predicted: Path | None, suffix: str) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of each test image's prediction (or of the noisy input) against its clean image."""
    from training.restoration import image_quality

    scores = {}
    for clean_path in sorted((test / "clean").glob("*.tif")):
        clean = tifffile.imread(clean_path)[..., None]
        if predicted is None:
            image = tifffile.imread(test / "noisy" / clean_path.name)[..., None]
        else:
            image = np.squeeze(tifffile.imread(predicted / f"{clean_path.stem}{suffix}"))[..., None]
        if image.shape != clean.shape:
            raise SystemExit(f"{clean_path.stem}: prediction shape {image.shape} != {clean.shape}")
        scores[clean_path.stem] = image_quality(clean, image.astype(np.float32))
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="nuclei_dsb2018 folder")
    parser.add_argument("--seed", type=int, default=0, help="noise and both trainings")
    parser.add_argument("--quick", action="store_true", help="2 epochs x 2 steps, batch 8: a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--care-option", action="append", default=[], help="extra option for training.care (repeatable)"
    )
    parser.add_argument(
        "--n2v-option", action="append", default=[], help="extra option for training.denoise (repeatable)"
    )
    args = parser.parse_args()
    if not (args.data / "index.csv").is_file():
        parser.error(f"{args.data}: no index.csv (the shared data folder is not here)")
    out = (args.out / f"care-vs-n2v-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    scratch = out / "data"
    split = make_noisy(args.data.resolve(), scratch, args.seed)
    print(
        f"noisy copies (sigma {SIGMA}, seed {args.seed}) in {scratch}: "
        + ", ".join(f"{sum(s == k for s in split.values())} {k}" for k in ("train", "val", "test"))
    )

    python = sys.executable
    runs = {
        "n2v": (
            [python, "-m", "training.denoise", "--data", str(scratch / "n2v" / "noisy"),
             "--clean", str(scratch / "n2v" / "clean"), *args.n2v_option],
            "_denoised.tif",
        ),
        "care": (
            [python, "-m", "training.care", "--data", str(scratch / "pairs"), *args.care_option],
            "_restored.tif",
        ),
    }  # fmt: skip
    results: dict = {}
    for name, (command, suffix) in runs.items():
        run_dir = out / "runs" / name
        start = time.perf_counter()
        run(
            [*command, *budget(args), "--out-dir", str(run_dir.parent), "--run-name", name],
            out / f"{name}-train.log",
        )
        wall = time.perf_counter() - start
        predicted = out / "predicted" / name
        run(
            [python, "-m", "training.predict", str(run_dir), str(scratch / "test" / "noisy"),
             "--out", str(predicted)],
            out / f"{name}-predict.log",
        )  # fmt: skip
        config = json.loads((run_dir / "config.json").read_text())
        results[name] = {
            "command": " ".join(command[1:]),
            "process_seconds": wall,
            **history(run_dir),
            "config": {k: config.get(k) for k in COMPARED_OPTIONS},
            "images": score(scratch / "test", predicted, suffix),
        }
        print(f"{name}: trained in {results[name]['train_seconds']:.0f} s", flush=True)
    noisy = score(scratch / "test", None, "")

    rows = {"noisy input": noisy, "N2V": results["n2v"]["images"], "CARE": results["care"]["images"]}
    means = {
        k: {m: float(np.mean([s[m] for s in v.values()])) for m in ("psnr", "ssim")} for k, v in rows.items()
    }
    names = sorted(noisy)
    lines = [
        "| image | " + " | ".join(f"{k} PSNR" for k in rows) + " | " + " | ".join(f"{k} SSIM" for k in rows)
        + " |",
        "| --- |" + " --- |" * (2 * len(rows)),
    ]  # fmt: skip
    for image in names:
        lines.append(
            f"| {image[:12]} | "
            + " | ".join(f"{v[image]['psnr']:.2f}" for v in rows.values())
            + " | "
            + " | ".join(f"{v[image]['ssim']:.3f}" for v in rows.values())
            + " |"
        )
    lines.append(
        "| **mean** | "
        + " | ".join(f"**{means[k]['psnr']:.2f}**" for k in rows)
        + " | "
        + " | ".join(f"**{means[k]['ssim']:.3f}**" for k in rows)
        + " |"
    )
    lines += ["", "| run | training (s) | median step (ms) | " + " | ".join(COMPARED_OPTIONS) + " |"]
    lines.append("| --- |" + " --- |" * (2 + len(COMPARED_OPTIONS)))
    for key, label in (("n2v", "N2V"), ("care", "CARE")):
        r = results[key]
        lines.append(
            f"| {label} | {r['train_seconds']:.0f} | {r['median_step_ms']:.0f} | "
            + " | ".join(str(r["config"][k]) for k in COMPARED_OPTIONS)
            + " |"
        )
    differing = {
        k: {"n2v": results["n2v"]["config"][k], "care": results["care"]["config"][k]}
        for k in COMPARED_OPTIONS
        if results["n2v"]["config"][k] != results["care"]["config"][k]
    }
    print("\n" + "\n".join(lines))
    print(f"\nCARE - N2V: {means['CARE']['psnr'] - means['N2V']['psnr']:+.2f} dB PSNR, "
          f"{means['CARE']['ssim'] - means['N2V']['ssim']:+.3f} SSIM")  # fmt: skip
    print("defaults that differ:", json.dumps(differing))

    summary = {
        "benchmark": "care_vs_n2v",
        "command": " ".join(["python", "bench/care_vs_n2v.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_count": os.cpu_count(),
        "data": str(args.data.resolve()),
        "sigma": SIGMA,
        "seed": args.seed,
        "quick": args.quick,
        "budget": budget(args),
        "means": means,
        "noisy": noisy,
        "runs": results,
        "differing_defaults": differing,
        "table": lines,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(out / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
