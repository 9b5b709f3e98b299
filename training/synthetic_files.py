"""The embedded synthetic datasets on disk: images (or volumes) and masks of `training.synthetic`, in the
layout of the real DSB2018 subset (images/, masks/, index.csv), so the demo goes through the same reader
and split as a user's folder."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

from training.synthetic import synthetic_nuclei_image, synthetic_nuclei_volume

_SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}


def _split_names(names: list[str], rng: np.random.Generator) -> dict[str, str]:
    n = len(names)
    n_val = max(1, round(_SPLIT_FRACTIONS["val"] * n))
    n_test = max(1, round(_SPLIT_FRACTIONS["test"] * n))
    order = rng.permutation(n)
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return {names[i]: splits[k] for k, i in enumerate(order)}


def _write_dataset(
    out_dir: Path,
    names: list[str],
    seed: int,
    generate: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    tiff_options: dict,
) -> Path:
    """images/NAME.tif, masks/NAME.tif and index.csv (name,split) of one generated pair per name."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(seed)
    split_seq, images_seq = root.spawn(2)
    for name, child in zip(names, images_seq.spawn(len(names)), strict=True):
        image, mask = generate(np.random.default_rng(child))
        tifffile.imwrite(out_dir / "images" / f"{name}.tif", image, **tiff_options)
        tifffile.imwrite(out_dir / "masks" / f"{name}.tif", mask, **tiff_options)

    split_of = _split_names(names, np.random.default_rng(split_seq))
    with open(out_dir / "index.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "split"])
        for name in names:
            writer.writerow([name, split_of[name]])
    return out_dir


def write_synthetic_dataset(
    out_dir: Path,
    *,
    n_images: int = 32,
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> Path:
    """Write a synthetic nuclei dataset in the same layout as the real DSB2018 subset.

    Creates ``out_dir/images/synth_XXX.tif`` (uint8) and ``out_dir/masks/synth_XXX.tif`` (uint16
    instance labels) with tifffile, plus ``out_dir/index.csv`` with columns ``name,split`` where
    ``name`` is the file stem and ``split`` is ``train`` / ``val`` / ``test`` (~70/15/15, seeded, at
    least one image in each split, so ``n_images`` must be >= 3).

    Deterministic: the same ``seed`` gives byte-identical arrays and the same split. Each image gets
    its own child seed, so image ``i`` does not depend on ``n_images``.

    Returns:
        ``out_dir``.
    """
    if n_images < 3:
        raise ValueError(f"n_images must be >= 3 to fill train/val/test, got {n_images}")
    names = [f"synth_{i:03d}" for i in range(n_images)]
    return _write_dataset(out_dir, names, seed, lambda rng: synthetic_nuclei_image(rng, shape=shape), {})


def write_synthetic_volumes(
    out_dir: Path,
    *,
    n_volumes: int = 12,
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 96, 96),
    anisotropy: float = 2.0,
) -> Path:
    """Write a synthetic nuclei dataset of volumes, laid out like `write_synthetic_dataset`'s.

    Creates ``out_dir/images/synth_vol_XXX.tif`` (uint8) and ``out_dir/masks/synth_vol_XXX.tif``
    (uint16 instance labels), both ImageJ hyperstacks with axes ``ZYX``, xy pixels of 1 um and a z
    spacing of ``anisotropy`` um in their metadata, plus ``out_dir/index.csv`` (``name,split``, at least
    one volume per split, so ``n_volumes`` must be >= 3). Deterministic for a ``seed``, volume ``i``
    independent of ``n_volumes``.

    Returns:
        ``out_dir``.
    """
    if n_volumes < 3:
        raise ValueError(f"n_volumes must be >= 3 to fill train/val/test, got {n_volumes}")
    names = [f"synth_vol_{i:03d}" for i in range(n_volumes)]
    tiff_options = {
        "imagej": True,
        "resolution": (1.0, 1.0),
        "metadata": {"axes": "ZYX", "spacing": float(anisotropy), "unit": "um"},
    }
    return _write_dataset(
        out_dir,
        names,
        seed,
        lambda rng: synthetic_nuclei_volume(rng, shape=shape, anisotropy=anisotropy),
        tiff_options,
    )
