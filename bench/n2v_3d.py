"""3D Noise2Void against 2D Noise2Void applied slice by slice, at an equal budget, on noisy volumes with a
known clean reference.

    python bench/n2v_3d.py [--steps 150] [--steps-2d N] [--volumes nuclei unrelated] [--arms 3d 2d]
                           [--sigma 25] [--out bench/results/n2v_3d]

Two volumes of 32 x 128 x 128, each with Gaussian noise of `--sigma` on the 0-255 scale (seeded):
- `nuclei`: a synthetic nuclei volume before the detector's noise (`training.synthetic`, z spacing 2 xy
  pixels): its signal is continuous in z, as in a real confocal stack.
- `unrelated`: 32 crops of the CC0 images (`../shared/data/denoise_clean_cc0`, else scikit-image's copies)
  stacked as slices: no signal is shared between neighbouring slices, so z carries only noise.

Both networks are the N2V U-Net (depth 2, 32 filters) trained for the same number of steps on the same
number of pixels per step: the 3D one on 4 patches of 16 x 64 x 64, the 2D one on 64 patches of 64 x 64
(the volume's slices as images). Prints and writes (JSON) the PSNR of the noisy volume and of each
network's output against the clean volume, and each run's wall time. A 3D step costs more than a 2D
step of as many pixels (3 x 3 x 3 kernels): `--steps-2d` gives the 2D network more steps, to compare at
an equal training time instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAPE = (32, 128, 128)
CC0 = ROOT.parent / "shared" / "data" / "denoise_clean_cc0"


def nuclei_volume() -> np.ndarray:
    from training.synthetic import synthetic_nuclei_volume

    clean, _ = synthetic_nuclei_volume(np.random.default_rng(7), shape=SHAPE, detector=False)
    return (255.0 * clean / clean.max()).astype(np.float32)


def unrelated_volume() -> np.ndarray:
    """Crops of the five CC0 images at seeded places, one per slice."""
    import imageio.v3 as iio
    from skimage import data as skimage_data

    names = ("camera", "cell", "brick", "gravel", "grass")
    images = [
        iio.imread(CC0 / f"{n}.png") if (CC0 / f"{n}.png").is_file() else getattr(skimage_data, n)()
        for n in names
    ]
    rng = np.random.default_rng(11)
    slices = []
    for z in range(SHAPE[0]):
        image = images[z % len(images)]
        y = rng.integers(image.shape[0] - SHAPE[1] + 1)
        x = rng.integers(image.shape[1] - SHAPE[2] + 1)
        slices.append(image[y : y + SHAPE[1], x : x + SHAPE[2]])
    return np.stack(slices).astype(np.float32)


def psnr(clean: np.ndarray, image: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(clean, image, data_range=float(clean.max() - clean.min())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps of each network")
    parser.add_argument("--steps-2d", type=int, help="training steps of the 2D network (default: --steps)")
    parser.add_argument(
        "--volumes", nargs="+", choices=["nuclei", "unrelated"], default=["nuclei", "unrelated"]
    )
    parser.add_argument("--arms", nargs="+", choices=["3d", "2d"], default=["3d", "2d"])
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "n2v_3d")
    args = parser.parse_args()
    from training import api

    args.out.mkdir(parents=True, exist_ok=True)
    epochs = 10
    common = {
        "epochs": epochs,
        "checkpoint_every": 0,
        "export": False,
        "out_dir": str(args.out / "runs"),
        "val_fraction": 0.1,
    }
    steps_2d = args.steps_2d or args.steps
    arms = {
        "3D N2V": {"ndim": 3, "patch_depth": 16, "patch_size": 64, "batch_size": 4},
        f"2D N2V, slice by slice{'' if steps_2d == args.steps else f', {steps_2d} steps'}": {
            "patch_size": 64,
            "batch_size": 64,
        },
    }
    arms = {arm: options for arm, options in arms.items() if arm[:2].lower() in args.arms}
    makers = {"nuclei": nuclei_volume, "unrelated": unrelated_volume}
    results = {}
    for name, make in ((name, makers[name]) for name in args.volumes):
        clean = make()
        noisy = clean + np.random.default_rng(5).normal(0, args.sigma, clean.shape).astype(np.float32)
        folder = args.out / name
        folder.mkdir(exist_ok=True)
        tiff = {"imagej": True, "resolution": (1.0, 1.0)}
        spacing = 2.0 if name == "nuclei" else 1.0
        tiff["metadata"] = {"axes": "ZYX", "spacing": spacing, "unit": "um"}
        tifffile.imwrite(folder / "noisy.tif", noisy, **tiff)
        tifffile.imwrite(folder / "clean.tif", clean, **tiff)
        results[name] = {"noisy_psnr": psnr(clean, noisy)}
        for arm, options in arms.items():
            steps = args.steps if arm.startswith("3D") else steps_2d
            start = time.perf_counter()
            run = api.train(
                api.options(
                    "denoise",
                    data=str(folder / "noisy.tif"),
                    clean=str(folder / "clean.tif"),
                    run_name=f"{name}-{arm.split()[0]}-{steps}",
                    steps_per_epoch=max(steps // epochs, 1),
                    **common,
                    **options,
                )
            )
            seconds = time.perf_counter() - start
            # The 3D run writes one volume; the 2D run one file per slice (noisy_z0000.tif, ...).
            files = sorted((run / "denoised").glob("noisy*.tif"))
            denoised = np.stack([tifffile.imread(f) for f in files]).astype(np.float32).reshape(clean.shape)
            results[name][arm] = {"psnr": psnr(clean, denoised), "seconds": round(seconds, 1)}
            print(f"{name}: {arm}: PSNR {results[name][arm]['psnr']:.2f} dB in {seconds:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n| volume | noisy | {' | '.join(arms)} |")
    print(f"| --- | --- | {' | '.join('---' for _ in arms)} |")
    for name, row in results.items():
        cells = " | ".join(f"{row[a]['psnr']:.2f} dB ({row[a]['seconds']:.0f} s)" for a in arms)
        print(f"| {name} | {row['noisy_psnr']:.2f} dB | {cells} |")


if __name__ == "__main__":
    main()
