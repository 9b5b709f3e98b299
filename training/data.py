"""Datasets of file pairs: find image/mask (or input/target) pairs in a folder, split them, and for
segmentation read and check every file.

Layouts understood, in this order:
1. `DATA/images/NAME.tif` + `DATA/masks/NAME.tif`, split by a CSV (`--split-csv`, else `DATA/index.csv`)
   with columns `name` and `split` (train / val / test);
2. `DATA/train/{images,masks}`, `DATA/val/...`, `DATA/test/...`: the folders are the split;
3. `DATA/images` + `DATA/masks` with no CSV: a seeded random split.
A CSV beside `train/` sub-folders is two splits of one folder, and refused.

Other tasks with pairs of files (CARE: `low/` and `high/`) use the same layouts with their own folder
names (`PairLayout`).

Every file is checked before training starts, and all problems are reported together, one line per file,
so a user fixes a folder in one go.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from base.errors import UserInputError
from base.run_folder import DATA_DIR, SPLIT_FILE, read_record
from training.files import write_json
from training.images import (
    NORMALIZE_EPS,
    percentile_normalize,
    read_image,
    read_mask,
    read_mask_volume,
    read_volume,
)
from training.lazy import LazyClasses, LazyView, image_stem, list_inputs, open_lazy, read_lazily
from training.targets import instance_to_classes

SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One image, normalised to (Y, X, C) float32 (a volume: (Z, Y, X, C)), with its instance labels and
    class map."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True)
class PairLayout:
    """Where the two files of a pair lie in a data folder, and what they are called in messages."""

    inputs: str = "images"
    targets: str = "masks"
    input_noun: str = "image"
    target_noun: str = "mask"


SEGMENTATION_LAYOUT = PairLayout()


@dataclass
class PairSplit:
    """Input/target file pairs of each split, found in `data_dir`."""

    data_dir: Path
    layout: PairLayout = SEGMENTATION_LAYOUT
    pairs: dict[str, list[tuple[Path, Path]]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    source: str = "random"


def _split_record(split: PairSplit, data_dir: Path) -> dict:
    """split.json: the data folder (where it is now), how the split was made and the pairs of each split."""
    return {
        "data_dir": str(data_dir),
        "source": split.source,
        "layout": [split.layout.inputs, split.layout.targets],
        "pairs": {name: [(a.name, b.name) for a, b in split.pairs[name]] for name in SPLITS},
    }


def _split_from_record(record: dict) -> PairSplit:
    """The split of a run, from its split.json (runs of schema 1 have no layout: images and masks)."""
    data_dir = Path(record["data_dir"])
    inputs, targets = record.get("layout", (SEGMENTATION_LAYOUT.inputs, SEGMENTATION_LAYOUT.targets))
    layout = PairLayout(inputs, targets) if (inputs, targets) != ("images", "masks") else SEGMENTATION_LAYOUT
    split = PairSplit(data_dir=data_dir, layout=layout, source=record["source"])
    for name in SPLITS:
        folder = data_dir / name if record["source"] == "folders" else data_dir
        split.pairs[name] = [(folder / inputs / a, folder / targets / b) for a, b in record["pairs"][name]]
    return split


def keep_split(split: PairSplit, run_dir: Path, *, generated: bool) -> None:
    """Record a new run's split in its split.json; `generated` data (an embedded demo, made in a scratch
    folder) moves into the run folder first, so the run can be resumed."""
    data_dir = split.data_dir
    if generated:
        data_dir = Path(shutil.move(data_dir, run_dir / DATA_DIR))
    write_json(run_dir / SPLIT_FILE, _split_record(split, data_dir.resolve()))


def recorded_split(run_dir: Path) -> PairSplit:
    """The split a run recorded (to resume it)."""
    return _split_from_record(read_record(run_dir / SPLIT_FILE, "which files were train, val, test"))


def _pairs_in(folder: Path, layout: PairLayout) -> list[tuple[Path, Path]]:
    inputs_dir, targets_dir = folder / layout.inputs, folder / layout.targets
    for sub in (inputs_dir, targets_dir):
        if not sub.is_dir():
            raise UserInputError(
                f"{sub}: folder not found (expected {folder}/{layout.inputs} and {folder}/{layout.targets})"
            )
    inputs = {image_stem(p): p for p in list_inputs(inputs_dir)}
    targets = {image_stem(p): p for p in list_inputs(targets_dir)}
    problems = [
        f"{inputs[n]}: {layout.input_noun} has no {layout.target_noun} in {targets_dir}"
        for n in sorted(inputs.keys() - targets.keys())
    ]
    problems += [
        f"{targets[n]}: {layout.target_noun} has no {layout.input_noun} in {inputs_dir}"
        for n in sorted(targets.keys() - inputs.keys())
    ]
    if problems:
        raise UserInputError("\n".join(problems))
    if not inputs:
        raise UserInputError(f"{inputs_dir}: no images (.tif, .tiff, .png) found")
    return [(inputs[n], targets[n]) for n in sorted(inputs)]


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
    layout: PairLayout = SEGMENTATION_LAYOUT,
) -> PairSplit:
    """Find the input/target pairs of `data_dir` and assign each to train, val or test: by `split_csv`
    (or `DATA/index.csv`), else by `train/ val/ test/` sub-folders, else at random; a CSV and sub-folders
    together are refused."""
    if not data_dir.is_dir():
        raise UserInputError(f"{data_dir}: data folder not found")
    split = PairSplit(data_dir=data_dir, layout=layout)
    split_csv = split_csv or (data_dir / "index.csv" if (data_dir / "index.csv").is_file() else None)
    if split_csv is not None and (data_dir / "train").is_dir():
        raise UserInputError(
            f"{split_csv}: a split CSV, and {data_dir} also has train/ val/ test/ sub-folders, which split "
            "it otherwise; keep one of the two (move the CSV away, or the sub-folders)"
        )
    if split_csv is None and (data_dir / "train").is_dir():
        for name in SPLITS:
            if (data_dir / name).is_dir():
                split.pairs[name] = _pairs_in(data_dir / name, layout)
        split.source = "folders"
    else:
        pairs = _pairs_in(data_dir, layout)
        if split_csv is not None:
            assignment = _read_split_csv(split_csv)
            missing = [image.name for image, _ in pairs if image_stem(image) not in assignment]
            if missing:
                raise UserInputError(
                    f"{split_csv}: no split given for {len(missing)} image(s), e.g. {missing[0]}"
                )
            for pair in pairs:
                split.pairs[assignment[image_stem(pair[0])]].append(pair)
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


def _lazy_sample(
    image_path: Path, mask_path: Path, *, ndim: int, axes: str | None, percentiles, boundary_width: int,
    anisotropy: float,
) -> Sample:  # fmt: skip
    """A training pair too big to hold, read patch by patch: the image normalised with its exact
    percentiles, the classes computed per patch from the mask (`training.lazy.LazyClasses`)."""
    from training.blockwise import exact_percentiles

    image = open_lazy(image_path, axes=axes if ndim == 3 else None)
    mask = open_lazy(mask_path, axes=axes.replace("C", "") if ndim == 3 and axes else None)
    if len(image.shape) != ndim:
        raise UserInputError(
            f"{image_path}: a {len(image.shape)}D image ({image.axes}) for a {ndim}D network"
        )
    if mask.shape != image.shape or mask.channels != 1 or not np.issubdtype(mask.dtype, np.integer):
        raise UserInputError(
            f"{mask_path}: mask {mask.array.shape} {mask.dtype} ({mask.axes}) is not an integer label image "
            f"of the image's shape {image.shape} ({image_path.name})"
        )
    lower, upper = exact_percentiles(image, list(percentiles))
    sampling = (anisotropy, 1.0, 1.0) if ndim == 3 else None
    return Sample(
        name=image_stem(image_path),  # as the split CSV names it
        image=LazyView(image).normalized(lower, upper - lower + NORMALIZE_EPS),  # as percentile_normalize
        labels=None,
        classes=LazyClasses(mask, boundary_width=boundary_width, sampling=sampling),
    )


def load_samples(
    pairs: list[tuple[Path, Path]],
    *,
    channel_axis: int | None,
    percentiles: tuple[float, float],
    boundary_width: int,
    ndim: int = 2,
    axes: str | None = None,
    anisotropy: float = 1.0,
) -> tuple[list[Sample], list[str]]:
    """Read, check and prepare every pair; return the samples and one problem line per bad file.

    `ndim` 3 reads volumes (Z, Y, X, C) with masks (Z, Y, X), their axes from `axes` (the images'; the
    masks' are the same without C) or the files' metadata; the boundary class is then `boundary_width`
    xy pixels wide, a z slice counting as `anisotropy` of them."""
    samples, problems = [], []
    for image_path, mask_path in pairs:
        try:
            if read_lazily(image_path):
                samples.append(
                    _lazy_sample(image_path, mask_path, ndim=ndim, axes=axes, percentiles=percentiles,
                                 boundary_width=boundary_width, anisotropy=anisotropy)
                )  # fmt: skip
                continue
            if ndim == 3:
                image = read_volume(image_path, axes=axes).data
                labels = read_mask_volume(mask_path, axes=axes and axes.replace("C", ""))
            else:
                image = read_image(image_path, channel_axis=channel_axis)
                labels = read_mask(mask_path)
            if image.shape[:-1] != labels.shape:
                raise UserInputError(
                    f"{mask_path}: mask shape {labels.shape} differs from image shape "
                    f"{image.shape[:-1]} of {image_path.name}"
                )
        except UserInputError as error:
            problems.append(str(error))
            continue
        sampling = (anisotropy, 1.0, 1.0) if ndim == 3 else None
        samples.append(
            Sample(
                name=image_path.stem,
                image=percentile_normalize(image, *percentiles),
                labels=labels,
                classes=instance_to_classes(labels, boundary_width=boundary_width, sampling=sampling),
            )
        )
    channels = {s.image.shape[-1] for s in samples}
    if len(channels) > 1:
        problems.append(
            f"images have different numbers of channels {sorted(channels)}: "
            + ", ".join(f"{s.name}={s.image.shape[-1]}" for s in samples[:5])
        )
    return samples, problems
