"""Quality floors: the default demos, trained exactly as README's first command trains them, still reach
the quality README states, so that a regression in training, targets, masking, post-processing or
evaluation fails CI instead of only lowering a number nobody reruns.

Each floor lies a little below what the demo gives today on each backend (docs/benchmarks.md, "The
default demos on each backend"): segmentation F1@0.5 0.973-0.983 and mAP 0.86; denoising 20.17 dB noisy
to 36.05-36.31 dB, SSIM 0.92. The floors are far above what a broken step gives: a network that learned
nothing, a swapped boundary class, or N2V trained on unmasked pixels (identity) ends at 20 dB.

Both runs are the real command lines in a child process, seeded as every run is; `--no-export` only
because the package and its checks are tested elsewhere (test_backends, test_export).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

SEGMENTATION_F1_FLOOR = 0.95
SEGMENTATION_MAP_FLOOR = 0.80
DENOISING_PSNR_FLOOR = 35.0
DENOISING_GAIN_FLOOR = 14.0
DENOISING_SSIM_FLOOR = 0.88


def _default_demo(task: str, out_dir: Path) -> dict:
    """Run `python -m training.TASK --out-dir OUT --no-export` (the demo with every default) and return
    its metrics.json."""
    done = subprocess.run(
        [sys.executable, "-m", f"training.{task}", "--out-dir", str(out_dir), "--no-export"],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run,) = [path for path in out_dir.iterdir() if path.is_dir()]
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_the_default_segmentation_demo_finds_the_held_out_nuclei(tmp_path):
    """README's segmentation demo: F1@0.5 >= 0.95 and mAP(0.5:0.95) >= 0.80 on its held-out images, with
    thresholds tuned on validation images."""
    metrics = _default_demo("segment", tmp_path)
    instances = metrics["instances"]
    assert metrics["evaluated_on"] == "test"
    assert instances["n_true"] > 100, "the demo's test images hold over a hundred nuclei"
    assert instances["f1_at_0.5"] >= SEGMENTATION_F1_FLOOR, instances["f1_at_0.5"]
    assert instances["mean_average_precision"] >= SEGMENTATION_MAP_FLOOR, instances["mean_average_precision"]


@pytest.mark.slow
def test_the_default_denoising_demo_removes_most_of_the_noise(tmp_path):
    """README's N2V demo on a noisy `cell` (sigma 25, 20.17 dB): >= 35 dB, a gain of >= 14 dB and SSIM
    >= 0.88 against the clean image, which training never sees."""
    metrics = _default_demo("denoise", tmp_path)
    (image,) = metrics["images"]
    assert image["noisy"]["psnr"] == pytest.approx(20.17, abs=0.01), "the demo's noise changed"
    assert metrics["mean_psnr"] >= DENOISING_PSNR_FLOOR, metrics["mean_psnr"]
    assert metrics["mean_psnr_gain_db"] >= DENOISING_GAIN_FLOOR, metrics["mean_psnr_gain_db"]
    assert metrics["mean_ssim"] >= DENOISING_SSIM_FLOOR, metrics["mean_ssim"]
