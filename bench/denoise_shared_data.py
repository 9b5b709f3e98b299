"""Benchmark: `python -m training.denoise` with its default settings on the real images of ../shared/data.

    python bench/denoise_shared_data.py [--part cc0|sem|both] [-- extra training options]

- `cc0`: the clean CC0 images of `denoise_clean_cc0` (camera, cell, brick, gravel, grass) with Gaussian
  noise of sigma 25 on the 0-255 scale (seeded) form one noisy folder; one N2V model is trained on all of
  them and each image's PSNR/SSIM before and after is measured against its clean original.
- `sem`: the real noisy SEM crop of `noisy_sem_n2v`. There is no clean image; the folder holds the output
  of a published Noise2Void model ("N2V SEM Demo") on the same crop, so the script reports how close the
  noisy input and our output each come to that output (Pearson correlation, PSNR), a reference but not
  the truth.

Prints a table and writes `summary.json` into the benchmark's folder under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def train(data: Path, out: Path, extra: list[str], clean: Path | None = None) -> tuple[dict, float]:
    from training.denoise import main

    argv = ["--data", str(data), "--out-dir", str(out.parent), "--run-name", out.name, *extra]
    start = time.perf_counter()
    if main(argv + (["--clean", str(clean)] if clean else [])):
        raise SystemExit(f"training failed: {' '.join(argv)}")
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - start


def cc0(out: Path, extra: list[str], sigma: float, seed: int) -> dict:
    import imageio.v3 as iio

    rng = np.random.default_rng(seed)
    for kind in ("noisy", "clean"):
        (out / kind).mkdir(parents=True)
    for path in sorted((DATA / "denoise_clean_cc0").glob("*.png")):
        clean = iio.imread(path).astype(np.float32)
        tifffile.imwrite(out / "clean" / f"{path.stem}.tif", clean)
        tifffile.imwrite(out / "noisy" / f"{path.stem}.tif", clean + rng.normal(0, sigma, clean.shape))
    metrics, seconds = train(out / "noisy", out / "run", extra, clean=out / "clean")
    print(f"\n{'image':10}{'noisy PSNR':>12}{'denoised':>10}{'gain':>8}{'SSIM':>16}")
    for image in metrics["images"]:
        print(
            f"{image['name']:10}{image['noisy']['psnr']:>12.2f}{image['denoised']['psnr']:>10.2f}"
            f"{image['psnr_gain_db']:>+8.2f}{image['noisy']['ssim']:>8.3f} ->{image['denoised']['ssim']:.3f}"
        )
    print(f"mean PSNR gain {metrics['mean_psnr_gain_db']:+.2f} dB; {seconds:.0f} s in all")
    return {"sigma": sigma, "seed": seed, "wall_seconds": seconds, "metrics": metrics}


def sem(out: Path, extra: list[str]) -> dict:
    from skimage.metrics import peak_signal_noise_ratio

    folder = DATA / "noisy_sem_n2v"
    noisy = tifffile.imread(folder / "sem_noisy_600x600.tif")
    published = tifffile.imread(folder / "sem_n2v_prediction_600x600.tif")
    metrics, seconds = train(folder / "sem_noisy_600x600.tif", out / "run", extra)
    ours = tifffile.imread(metrics["images"][0]["output"])
    data_range = float(published.max() - published.min())

    def closeness(image: np.ndarray) -> dict:
        return {
            "correlation": float(np.corrcoef(image.ravel(), published.ravel())[0, 1]),
            "psnr": float(peak_signal_noise_ratio(published, image, data_range=data_range)),
        }

    result = {"noisy_vs_published": closeness(noisy), "ours_vs_published": closeness(ours)}
    print("\nagainst the published N2V model's output:")
    for key, value in result.items():
        print(f"  {key:20} correlation {value['correlation']:.3f}, PSNR {value['psnr']:.2f} dB")
    print(f"{seconds:.0f} s in all")
    return {"wall_seconds": seconds, **result, "output": metrics["images"][0]["output"]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("cc0", "sem", "both"), default="both")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("extra", nargs="*", help="options passed on to python -m training.denoise")
    args = parser.parse_args()
    if not DATA.is_dir():
        parser.error(f"{DATA}: the shared data folder is not here")
    out = args.out / f"denoise-shared-{time.strftime('%Y%m%d-%H%M%S')}"
    summary: dict = {
        "benchmark": "denoise_shared_data",
        "command": " ".join(["python", "bench/denoise_shared_data.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
    }
    if args.part in ("cc0", "both"):
        summary["cc0"] = cc0(out / "cc0", args.extra, args.sigma, args.seed)
    if args.part in ("sem", "both"):
        summary["sem"] = sem(out / "sem", args.extra)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(out / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
