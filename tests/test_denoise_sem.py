"""`python -m training.denoise` on a real noisy scanning-electron-microscopy image (../shared/data).

There is no clean SEM image; the folder holds the output of a published Noise2Void model on the same
crop instead. A short training run of ours must already move the image towards that output.
"""

import json

import numpy as np
import pytest
import tifffile

from tests.conftest import DATA_DIR
from training.denoise import main

SEM_DIR = DATA_DIR / "noisy_sem_n2v"


@pytest.fixture
def sem_image():
    path = SEM_DIR / "sem_noisy_600x600.tif"
    if not path.is_file():
        pytest.skip("../shared/data not present (only in the project workspace)")
    return path


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.slow  # about 30 s on 2 cores
def test_short_training_on_real_sem_image_moves_it_towards_the_published_n2v_output(sem_image, tmp_path):
    flags = (
        "--epochs 8 --steps-per-epoch 25 --batch-size 16 --patch-size 64 --base-filters 16 --no-export"
    ).split()
    out = tmp_path / "runs"
    assert main(["--data", str(sem_image), "--out-dir", str(out), "--run-name", "sem", *flags]) == 0
    noisy = tifffile.imread(sem_image)
    denoised = tifffile.imread(out / "sem" / "denoised" / "sem_noisy_600x600.tif")
    published = tifffile.imread(SEM_DIR / "sem_n2v_prediction_600x600.tif")
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32
    assert np.isfinite(denoised).all()
    # Same intensity scale as the input (the run undoes its normalisation): means within 10 %.
    assert abs(denoised.mean() - noisy.mean()) < 0.1 * noisy.mean()
    # Noise removed: lower pixel-to-pixel variation than the input ...
    assert np.abs(np.diff(denoised, axis=1)).mean() < 0.8 * np.abs(np.diff(noisy, axis=1)).mean()
    # ... and the structure kept: closer to the published N2V output than the noisy input is.
    assert _correlation(denoised, published) > _correlation(noisy, published) + 0.05
    metrics = json.loads((out / "sem" / "metrics.json").read_text())
    assert "psnr_gain_db" not in metrics["images"][0]  # no clean reference, so no PSNR claimed
