"""Tests for training.targets: instance masks to the three classes and back, on hand-made and real masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from training.metrics import match_instances
from training.targets import classes_to_instances, instance_to_classes

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def one_hot(classes: np.ndarray) -> np.ndarray:
    """Perfect (Y, X, 3) probabilities of a class map."""
    return np.eye(3, dtype=np.float32)[classes]


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
