"""Segmentation datasets: find image/mask pairs in a folder, split them, read and check every file.

Layouts understood, in this order:
1. `DATA/images/NAME.tif` + `DATA/masks/NAME.tif`, split by a CSV (`--split-csv`, or `DATA/index.csv`) with
   columns `name` and `split` (train / val / test), else by a seeded random split;
2. `DATA/train/{images,masks}`, `DATA/val/...`, `DATA/test/...`: the folders are the split.

Every file is checked before training starts, and all problems are reported together, one line per file,
so a user fixes a folder in one go.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.errors import UserInputError
from training.images import list_images, percentile_normalize, read_image, read_mask
from training.targets import instance_to_classes

SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One image, normalised to (Y, X, C) float32, with its instance labels and class map."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray


@dataclass
class PairSplit:
    """Image/mask file pairs of each split."""

    pairs: dict[str, list[tuple[Path, Path]]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    source: str = "random"

    def as_names(self) -> dict[str, list[str]]:
        return {split: [image.name for image, _ in pairs] for split, pairs in self.pairs.items()}


def _pairs_in(folder: Path) -> list[tuple[Path, Path]]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    for sub in (images_dir, masks_dir):
        if not sub.is_dir():
            raise UserInputError(f"{sub}: folder not found (expected {folder}/images and {folder}/masks)")
    images = {p.stem: p for p in list_images(images_dir)}
    masks = {p.stem: p for p in list_images(masks_dir)}
    problems = [
        f"{images[n]}: image has no mask in {masks_dir}" for n in sorted(images.keys() - masks.keys())
    ]
    problems += [
        f"{masks[n]}: mask has no image in {images_dir}" for n in sorted(masks.keys() - images.keys())
    ]
    if problems:
        raise UserInputError("\n".join(problems))
    if not images:
        raise UserInputError(f"{images_dir}: no images (.tif, .tiff, .png) found")
    return [(images[n], masks[n]) for n in sorted(images)]


def _read_split_csv(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserInputError(f"{path}: unreadable split CSV ({error})") from None
    if not rows or not {"name", "split"} <= set(rows[0]):
        raise UserInputError(f"{path}: split CSV needs the columns 'name' and 'split'")
    bad = sorted({row["split"] for row in rows} - set(SPLITS))
    if bad:
        raise UserInputError(f"{path}: unknown split value(s) {bad}; use train, val or test")
    return {row["name"]: row["split"] for row in rows}


def find_pairs(
    data_dir: Path,
    *,
    split_csv: Path | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> PairSplit:
    """Find the image/mask pairs of `data_dir` and assign each to train, val or test."""
    if not data_dir.is_dir():
        raise UserInputError(f"{data_dir}: data folder not found")
    split = PairSplit()
    if (data_dir / "train").is_dir():
        for name in SPLITS:
            if (data_dir / name).is_dir():
                split.pairs[name] = _pairs_in(data_dir / name)
        split.source = "folders"
    else:
        pairs = _pairs_in(data_dir)
        split_csv = split_csv or (data_dir / "index.csv" if (data_dir / "index.csv").is_file() else None)
        if split_csv is not None:
            assignment = _read_split_csv(split_csv)
            missing = [image.name for image, _ in pairs if image.stem not in assignment]
            if missing:
                raise UserInputError(
                    f"{split_csv}: no split given for {len(missing)} image(s), e.g. {missing[0]}"
                )
            for pair in pairs:
                split.pairs[assignment[pair[0].stem]].append(pair)
            split.source = str(split_csv)
        else:
            split.pairs = _random_split(
                pairs, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
            )
    if not split.pairs["train"]:
        raise UserInputError(f"{data_dir}: no training images after the split ({split.source})")
    if not split.pairs["val"]:
        raise UserInputError(
            f"{data_dir}: no validation images after the split ({split.source}); "
            "validation drives checkpointing and the learning-rate schedule"
        )
    return split


def _random_split(pairs, *, val_fraction: float, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(val_fraction * len(pairs))) if len(pairs) >= 2 else 0
    n_test = round(test_fraction * len(pairs)) if len(pairs) - n_val >= 2 else 0
    n_test = max(1, n_test) if test_fraction > 0 and len(pairs) - n_val >= 2 else n_test
    chosen = [pairs[i] for i in order]
    return {
        "val": sorted(chosen[:n_val]),
        "test": sorted(chosen[n_val : n_val + n_test]),
        "train": sorted(chosen[n_val + n_test :]),
    }


def load_samples(
    pairs: list[tuple[Path, Path]],
    *,
    channel_axis: int | None,
    percentiles: tuple[float, float],
    boundary_width: int,
) -> tuple[list[Sample], list[str]]:
    """Read, check and prepare every pair; return the samples and one problem line per bad file."""
    samples, problems = [], []
    for image_path, mask_path in pairs:
        try:
            image = read_image(image_path, channel_axis=channel_axis)
            labels = read_mask(mask_path)
            if image.shape[:2] != labels.shape:
                raise UserInputError(
                    f"{mask_path}: mask shape {labels.shape} differs from image shape "
                    f"{image.shape[:2]} of {image_path.name}"
                )
        except UserInputError as error:
            problems.append(str(error))
            continue
        samples.append(
            Sample(
                name=image_path.stem,
                image=percentile_normalize(image, *percentiles),
                labels=labels,
                classes=instance_to_classes(labels, boundary_width=boundary_width),
            )
        )
    channels = {s.image.shape[-1] for s in samples}
    if len(channels) > 1:
        problems.append(
            f"images have different numbers of channels {sorted(channels)}: "
            + ", ".join(f"{s.name}={s.image.shape[-1]}" for s in samples[:5])
        )
    return samples, problems
