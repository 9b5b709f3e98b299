"""Tests for training.targets: instance masks to the three classes and back, on hand-made and real masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from training.metrics import match_instances
from training.targets import classes_to_instances, instance_to_classes

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def one_hot(classes: np.ndarray) -> np.ndarray:
    """Perfect (Y, X, 3) probabilities of a class map."""
    return np.eye(3, dtype=np.float32)[classes]


def probabilities_from_interior(interior: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """(Y, X, 3) probabilities from p(interior) and p(background) (0 if absent); boundary takes the rest."""
    interior = np.asarray(interior, dtype=np.float32)
    background = np.zeros_like(interior) if background is None else np.asarray(background, dtype=np.float32)
    return np.stack([background, interior, 1 - background - interior], axis=-1)


def square_mask(side: int, margin: int = 2) -> np.ndarray:
    labels = np.zeros((side + 2 * margin, side + 2 * margin), dtype=np.uint16)
    labels[margin : margin + side, margin : margin + side] = 1
    return labels


def touching_discs() -> np.ndarray:
    """Two discs of radius 9 whose centres are 14 pixels apart, split along the line between them."""
    yy, xx = np.mgrid[:40, :56]
    d1 = np.hypot(yy - 20, xx - 20)
    d2 = np.hypot(yy - 20, xx - 34)
    labels = np.zeros((40, 56), dtype=np.uint16)
    labels[(d1 <= 9) & (d1 <= d2)] = 1
    labels[(d2 <= 9) & (d2 < d1)] = 2
    return labels


# === instance_to_classes ===


def test_square_gets_an_interior_and_a_one_pixel_rim():
    classes = instance_to_classes(square_mask(5), boundary_width=1)
    expected = np.zeros((9, 9), dtype=np.uint8)
    expected[2:7, 2:7] = BOUNDARY
    expected[3:6, 3:6] = INTERIOR
    np.testing.assert_array_equal(classes, expected)
    assert classes.dtype == np.uint8


def test_boundary_width_two_gives_a_two_pixel_rim():
    classes = instance_to_classes(square_mask(7), boundary_width=2)
    expected = np.zeros((11, 11), dtype=np.uint8)
    expected[2:9, 2:9] = BOUNDARY
    expected[4:7, 4:7] = INTERIOR
    np.testing.assert_array_equal(classes, expected)


def test_touching_squares_get_a_boundary_along_the_shared_edge():
    labels = np.zeros((9, 14), dtype=np.uint16)
    labels[2:7, 2:7] = 1
    labels[2:7, 7:12] = 2
    classes = instance_to_classes(labels, boundary_width=1)
    # Both columns at the shared edge (6 of object 1, 7 of object 2) are boundary, so the interiors
    # are apart.
    np.testing.assert_array_equal(classes[2:7, 6:8], BOUNDARY)
    np.testing.assert_array_equal(classes[3:6, 3:6], INTERIOR)
    np.testing.assert_array_equal(classes[3:6, 8:11], INTERIOR)


def test_background_stays_background_and_objects_never_do():
    labels = touching_discs()
    classes = instance_to_classes(labels)
    np.testing.assert_array_equal(classes == BACKGROUND, labels == 0)


def test_empty_mask_is_all_background():
    np.testing.assert_array_equal(instance_to_classes(np.zeros((6, 7), dtype=np.uint16)), 0)


# === classes_to_instances ===


def test_touching_discs_come_back_as_two_objects():
    labels = touching_discs()
    instances = classes_to_instances(one_hot(instance_to_classes(labels)))
    assert instances.max() == 2
    (counts,) = match_instances(labels, instances, thresholds=[0.9])
    assert (counts.tp, counts.fp, counts.fn) == (2, 0, 0)


def test_perfect_probabilities_of_a_small_object_keep_it():
    # A 6x6 nucleus (36 pixels, over min_size) whose two-pixel rim leaves a 2x2 interior: the object
    # is far above min_size, so it must survive, whatever the size of its seed.
    labels = square_mask(6)
    instances = classes_to_instances(one_hot(instance_to_classes(labels, boundary_width=2)), min_size=15)
    np.testing.assert_array_equal(instances, labels)


def test_objects_smaller_than_min_size_are_removed():
    classes = np.zeros((12, 20), dtype=np.uint8)
    classes[2:5, 2:5] = INTERIOR  # 9 pixels
    classes[2:6, 10:14] = INTERIOR  # 16 pixels
    instances = classes_to_instances(one_hot(classes), min_size=15)
    expected = np.zeros((12, 20), dtype=np.uint32)
    expected[2:6, 10:14] = 1
    np.testing.assert_array_equal(instances, expected)


def test_min_size_zero_keeps_every_object():
    classes = np.zeros((12, 20), dtype=np.uint8)
    classes[2:5, 2:5] = INTERIOR
    classes[2:6, 10:14] = INTERIOR
    classes[9, 17] = INTERIOR  # a single pixel
    assert classes_to_instances(one_hot(classes), min_size=0).max() == 3


def test_labels_are_sequential_uint32_after_removal():
    classes = np.zeros((10, 30), dtype=np.uint8)
    classes[2:7, 2:7] = INTERIOR
    classes[2:4, 12:14] = INTERIOR  # too small: removed from between the two others
    classes[2:7, 20:25] = INTERIOR
    instances = classes_to_instances(one_hot(classes), min_size=15)
    assert instances.dtype == np.uint32
    assert set(np.unique(instances)) == {0, 1, 2}


def test_all_background_gives_no_objects():
    instances = classes_to_instances(one_hot(np.zeros((16, 16), dtype=np.uint8)))
    assert instances.shape == (16, 16)
    assert instances.max() == 0


def test_boundary_pixels_go_to_the_neighbouring_object():
    labels = square_mask(5)
    instances = classes_to_instances(one_hot(instance_to_classes(labels, boundary_width=1)), min_size=0)
    np.testing.assert_array_equal(instances, labels)


def test_real_dsb_masks_survive_the_class_round_trip(dsb_dir: Path):
    # Perfect probabilities with the project defaults (boundary width 2, min_size 15) must give the
    # objects back: at most a few percent of the nuclei may be lost or split.
    tp = fp = fn = 0
    for path in sorted((dsb_dir / "masks").glob("*.tif"))[:10]:
        labels = tifffile.imread(path)
        instances = classes_to_instances(one_hot(instance_to_classes(labels)))
        (counts,) = match_instances(labels, instances, thresholds=[0.5])
        tp, fp, fn = tp + counts.tp, fp + counts.fp, fn + counts.fn
    assert tp > 250  # the ten images hold about 300 nuclei
    assert tp / (tp + fp + fn) >= 0.95


@pytest.mark.parametrize("min_size", [0, 15])
def test_touching_cells_are_split_along_the_fall_of_interior_probability(min_size):
    # Two touching cells, all foreground. The left interior (columns 0-2) has a dip to 0.7, still one
    # seed: it must not be split in two. The boundary pixels between the cells (columns 3-5) fade from
    # 0.45 next to the left cell to 0.1 next to the right one: flooding from the most confident interior
    # downwards gives 0.45 and 0.4 to the left cell and only the 0.1 pixel to the right cell. Both cells
    # are 15 pixels, so min_size=15 keeps them and must give the same split.
    row = [0.9, 0.7, 0.9, 0.45, 0.4, 0.1, 0.9, 0.9, 0.9, 0.9]
    instances = classes_to_instances(probabilities_from_interior([row] * 3), min_size=min_size)
    expected = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2]] * 3, dtype=np.uint32)
    np.testing.assert_array_equal(instances, expected)


def test_diagonally_touching_interiors_stay_two_objects():
    # Seeds are 4-connected: two 4x4 interiors meeting only at a corner are two nuclei, not one.
    classes = np.zeros((10, 10), dtype=np.uint8)
    classes[1:5, 1:5] = INTERIOR
    classes[5:9, 5:9] = INTERIOR
    instances = classes_to_instances(one_hot(classes))
    expected = np.zeros((10, 10), dtype=np.uint32)
    expected[1:5, 1:5] = 1
    expected[5:9, 5:9] = 2
    np.testing.assert_array_equal(instances, expected)


def test_probabilities_exactly_at_the_thresholds_are_not_above_them():
    background = np.ones((5, 10), dtype=np.float32)
    interior = np.zeros((5, 10), dtype=np.float32)
    background[1:4, 1:4], interior[1:4, 1:4] = 0.0, 1.0  # a sure interior
    background[1:4, 4] = 0.5  # next to it, 1 - p(background) == 0.5: not foreground, not part of the cell
    background[1:4, 6:9], interior[1:4, 6:9] = 0.0, 0.5  # foreground, but p(interior) == 0.5: no seed
    instances = classes_to_instances(probabilities_from_interior(interior, background), min_size=0)
    expected = np.zeros((5, 10), dtype=np.uint32)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(instances, expected)


def test_seeds_stay_objects_when_the_foreground_threshold_is_stricter():
    # With foreground_threshold 0.9 an interior at p(background) 0.2 is not "foreground", yet a seed is
    # always part of its object. Only the rim pixels above the stricter threshold are added to it.
    background = np.ones((6, 12), dtype=np.float32)
    interior = np.zeros((6, 12), dtype=np.float32)
    background[2:4, 2:4], interior[2:4, 2:4] = 0.2, 0.8  # seed of the first object
    background[1:5, 1] = 0.05  # a confident rim to its left (1 - 0.05 > 0.9): joins it
    background[1:5, 4] = 0.2  # a weak rim to its right (1 - 0.2 < 0.9): stays background
    background[2:4, 8:10], interior[2:4, 8:10] = 0.2, 0.8  # seed of the second object, no rim
    probabilities = probabilities_from_interior(interior, background)
    instances = classes_to_instances(probabilities, foreground_threshold=0.9, min_size=0)
    expected = np.zeros((6, 12), dtype=np.uint32)
    expected[1:5, 1] = 1
    expected[2:4, 2:4] = 1
    expected[2:4, 8:10] = 2
    np.testing.assert_array_equal(instances, expected)


def test_default_min_size_keeps_15_pixel_objects_and_drops_14_pixel_ones():
    classes = np.zeros((6, 26), dtype=np.uint8)
    classes[1:4, 1:6] = INTERIOR  # 15 pixels: kept, label 1
    classes[1:3, 8:15] = INTERIOR  # 14 pixels, alone: removed, its area back to background
    classes[1:4, 18:23] = INTERIOR  # 15 pixels: kept, renumbered from 3 to 2
    instances = classes_to_instances(one_hot(classes))
    expected = np.zeros((6, 26), dtype=np.uint32)
    expected[1:4, 1:6] = 1
    expected[1:4, 18:23] = 2
    np.testing.assert_array_equal(instances, expected)


def test_too_small_fragment_is_merged_into_the_object_it_touches():
    # A 4-pixel interior fragment (label 3 in scan order) touches the second object through a column
    # of boundary pixels; its object is under min_size, so the fragment and the boundary column go to
    # the second object, not to the first one nor to background.
    classes = np.zeros((7, 20), dtype=np.uint8)
    classes[1:6, 1:6] = INTERIOR  # first object, 25 pixels
    classes[1:6, 9:14] = INTERIOR  # second object, 25 pixels
    classes[1:6, 14] = BOUNDARY
    classes[2:4, 15:17] = INTERIOR  # the fragment
    instances = classes_to_instances(one_hot(classes), min_size=15)
    expected = np.zeros((7, 20), dtype=np.uint32)
    expected[1:6, 1:6] = 1
    expected[1:6, 9:15] = 2
    expected[2:4, 15:17] = 2
    np.testing.assert_array_equal(instances, expected)


@pytest.mark.parametrize("boundary_width", [1, 2, 3])
def test_a_patch_inside_one_object_is_all_interior(boundary_width):
    # A training patch cut from inside a large nucleus has no rim: the patch edge is no boundary.
    classes = instance_to_classes(np.full((4, 5), 7), boundary_width=boundary_width)
    np.testing.assert_array_equal(classes, np.ones((4, 5), np.uint8))
