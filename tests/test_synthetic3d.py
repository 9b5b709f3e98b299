"""Tests for the synthetic nuclei volumes (training.synthetic.synthetic_nuclei_volume and its writer)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from training.synthetic import MIN_OBJECT_VOXELS, synthetic_nuclei_volume
from training.synthetic_files import write_synthetic_volumes

SMALL = (16, 64, 64)


def _volume(seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_nuclei_volume(np.random.default_rng(seed), **kwargs)


def _touching_pairs(mask: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of labels that share a face, along any axis."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(mask.ndim):
        a, b = np.moveaxis(mask, axis, 0)[:-1], np.moveaxis(mask, axis, 0)[1:]
        touching = (a != b) & (a > 0) & (b > 0)
        low, high = np.minimum(a[touching], b[touching]), np.maximum(a[touching], b[touching])
        pairs.update(zip(low.tolist(), high.tolist(), strict=True))
    return pairs


def test_volume_shapes_and_dtypes() -> None:
    volume, mask = _volume(0, shape=(12, 48, 80))
    assert volume.shape == mask.shape == (12, 48, 80)
    assert volume.dtype == np.uint8 and mask.dtype == np.uint16


def test_same_seed_gives_identical_volumes_and_different_seed_differs() -> None:
    volume_a, mask_a = _volume(5, shape=SMALL)
    volume_b, mask_b = _volume(5, shape=SMALL)
    volume_c, mask_c = _volume(6, shape=SMALL)
    np.testing.assert_array_equal(volume_a, volume_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(volume_a, volume_c)
    assert not np.array_equal(mask_a, mask_c)


@pytest.mark.parametrize("seed", range(3))
def test_mask_is_a_sequential_partition_of_face_connected_nuclei(seed: int) -> None:
    _, mask = _volume(seed)
    n = int(mask.max())
    assert n >= 20
    np.testing.assert_array_equal(np.unique(mask), np.arange(n + 1))
    assert np.bincount(mask.ravel())[1:].min() >= MIN_OBJECT_VOXELS
    for label, box in enumerate(ndi.find_objects(mask), start=1):
        _, n_components = ndi.label(mask[box] == label)  # face (6-)connectivity in 3D
        assert n_components == 1, f"label {label} is not connected"


@pytest.mark.parametrize("seed", range(3))
def test_nuclei_are_brighter_than_background(seed: int) -> None:
    volume, mask = _volume(seed)
    volume = volume.astype(np.float64)
    assert volume[mask > 0].mean() > 1.5 * volume[mask == 0].mean()


def test_volumes_contain_touching_nuclei() -> None:
    assert all(len(_touching_pairs(_volume(seed)[1])) >= 10 for seed in range(2))


def test_nuclei_span_fewer_slices_the_coarser_the_z_spacing() -> None:
    def median_depth(anisotropy: float) -> float:
        _, mask = _volume(0, shape=(32, 64, 64), anisotropy=anisotropy)
        return float(np.median([box[0].stop - box[0].start for box in ndi.find_objects(mask)]))

    assert median_depth(1.0) >= 1.5 * median_depth(3.0)


def test_volume_rejects_bad_shapes_and_anisotropy() -> None:
    with pytest.raises(ValueError, match="shape"):
        _volume(0, shape=(64, 64))
    with pytest.raises(ValueError, match="anisotropy"):
        _volume(0, anisotropy=0.0)


def test_writer_writes_imagej_zyx_stacks_with_spacing_and_an_index(tmp_path: Path) -> None:
    out = write_synthetic_volumes(tmp_path / "synth", n_volumes=4, seed=2, shape=SMALL, anisotropy=2.5)
    assert out == tmp_path / "synth"
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {row["split"] for row in rows} == {"train", "val", "test"}
    for row in rows:
        for sub, dtype in (("images", np.uint8), ("masks", np.uint16)):
            with tifffile.TiffFile(out / sub / f"{row['name']}.tif") as tif:
                assert tif.is_imagej
                assert tif.series[0].axes == "ZYX"
                assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)
                assert tif.imagej_metadata["unit"] == "um"
                assert tif.pages[0].resolution == pytest.approx((1.0, 1.0))
                data = tif.asarray()
            assert data.shape == SMALL and data.dtype == dtype
            if sub == "masks":
                assert data.max() > 0, f"no nuclei in {row['name']}"


def test_writer_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_volumes(tmp_path / "a", n_volumes=3, seed=1, shape=SMALL)
    b = write_synthetic_volumes(tmp_path / "b", n_volumes=3, seed=1, shape=SMALL)
    assert (a / "index.csv").read_text() == (b / "index.csv").read_text()
    for sub in ("images", "masks"):
        for path in sorted((a / sub).glob("*.tif")):
            np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(b / sub / path.name))


def test_writer_rejects_too_few_volumes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_volumes"):
        write_synthetic_volumes(tmp_path, n_volumes=2)
