"""What the peer workers of `bench/n2v_compare.py` share (`n2v_reference_worker.py`,
`careamics_worker.py`). They run in the peers' own virtual environments, so this module needs only
numpy and scikit-image."""

import argparse
from pathlib import Path

import numpy as np

PREDICT_SIDE = 2048


def budget_arguments() -> argparse.Namespace:
    """--noisy, --clean, --out and the equal budget: epochs, steps per epoch, batch, patch, depth,
    first-level filters, seed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--noisy", type=Path, required=True)
    parser.add_argument("--clean", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    for name, default in (
        ("epochs", 10),
        ("steps-per-epoch", 50),
        ("batch-size", 64),
        ("patch-size", 64),
        ("depth", 2),
        ("base-filters", 32),
        ("seed", 0),
    ):
        parser.add_argument(f"--{name}", type=int, default=default)
    return parser.parse_args()


def quality(clean: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (scikit-image) against the clean image, on its intensity range: the measure of the
    project's own metrics (`training.restoration.image_quality`)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    data_range = float(clean.max() - clean.min())
    return {
        "psnr": float(peak_signal_noise_ratio(clean, image, data_range=data_range)),
        "ssim": float(structural_similarity(clean, image, data_range=data_range)),
    }


def large_image(image: np.ndarray, side: int = PREDICT_SIDE) -> np.ndarray:
    """`image` tiled to side x side: the input of the prediction-speed measurement."""
    reps = (side // image.shape[0] + 1, side // image.shape[1] + 1)
    return np.ascontiguousarray(np.tile(image, reps)[:side, :side])
