"""Tests for the embedded synthetic nuclei dataset (training.synthetic)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from training.synthetic import synthetic_nuclei_image
from training.synthetic_files import write_synthetic_dataset


def _image(seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_nuclei_image(np.random.default_rng(seed), **kwargs)


def _touching_pairs(mask: np.ndarray) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for label in range(1, int(mask.max()) + 1):
        ring = ndi.binary_dilation(mask == label) & (mask != label) & (mask > 0)
        pairs.update((min(label, int(o)), max(label, int(o))) for o in np.unique(mask[ring]))
    return pairs


def test_same_seed_gives_identical_arrays_and_different_seed_differs() -> None:
    image_a, mask_a = _image(7)
    image_b, mask_b = _image(7)
    image_c, mask_c = _image(8)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(mask_a, mask_c)


@pytest.mark.parametrize("seed", range(5))
def test_mask_is_valid_sequential_connected_partition(seed: int) -> None:
    _, mask = _image(seed)
    assert mask.dtype == np.uint16
    labels = np.unique(mask)
    n = int(mask.max())
    assert n > 0
    np.testing.assert_array_equal(labels, np.arange(n + 1))
    sizes = np.bincount(mask.ravel())[1:]
    assert sizes.min() >= 20
    for label in range(1, n + 1):
        _, n_components = ndi.label(mask == label)
        assert n_components == 1, f"label {label} is not connected"


def test_image_dtype_and_shape() -> None:
    image, mask = _image(0, shape=(96, 160), n_nuclei=(5, 10))
    assert image.dtype == np.uint8
    assert image.shape == mask.shape == (96, 160)


@pytest.mark.parametrize("seed", range(5))
def test_nuclei_are_clearly_brighter_than_background(seed: int) -> None:
    image, mask = _image(seed)
    image = image.astype(np.float64)
    assert image[mask > 0].mean() > 1.5 * image[mask == 0].mean()


def test_typical_images_contain_touching_nuclei() -> None:
    counts = [len(_touching_pairs(_image(seed)[1])) for seed in range(4)]
    assert all(c >= 1 for c in counts), counts
    assert sum(counts) >= 10, counts


def test_dataset_writer_writes_matched_files_and_index(tmp_path: Path) -> None:
    out = write_synthetic_dataset(tmp_path / "synth", n_images=10, shape=(64, 64), seed=3)
    assert out == tmp_path / "synth"
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0].keys()) == ["name", "split"]
    assert len(rows) == 10
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    assert sum(row["split"] == "train" for row in rows) >= 6
    for row in rows:
        image = tifffile.imread(out / "images" / f"{row['name']}.tif")
        mask = tifffile.imread(out / "masks" / f"{row['name']}.tif")
        assert image.shape == mask.shape == (64, 64)
        assert image.dtype == np.uint8 and mask.dtype == np.uint16
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        p.name for p in (out / "masks").iterdir()
    )


def test_dataset_writer_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", n_images=4, shape=(64, 64), seed=1)
    b = write_synthetic_dataset(tmp_path / "b", n_images=4, shape=(64, 64), seed=1)
    assert (a / "index.csv").read_text() == (b / "index.csv").read_text()
    for sub in ("images", "masks"):
        for path in sorted((a / sub).glob("*.tif")):
            np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(b / sub / path.name))


def test_dataset_writer_rejects_too_few_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, n_images=2)
