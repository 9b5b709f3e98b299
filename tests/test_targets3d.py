"""Tests for training.targets and training.metrics on 3D label volumes (Z, Y, X), with answers by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import evaluate_instances, instance_iou_matrix, match_instances
from training.synthetic import synthetic_nuclei_image, synthetic_nuclei_volume
from training.targets import classes_to_instances, instance_to_classes

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def one_hot(classes: np.ndarray) -> np.ndarray:
    """Perfect (..., 3) probabilities of a class map or volume."""
    return np.eye(3, dtype=np.float32)[classes]


def box_with_shell(shape: tuple[int, ...], box: tuple[slice, ...], shell: tuple[int, ...]) -> np.ndarray:
    """Classes of one box: BOUNDARY in its outer `shell[axis]` layers along each axis, INTERIOR inside."""
    classes = np.zeros(shape, dtype=np.uint8)
    classes[box] = BOUNDARY
    classes[tuple(slice(s.start + t, s.stop - t) for s, t in zip(box, shell, strict=True))] = INTERIOR
    return classes


def touching_cubes() -> np.ndarray:
    """Two 8x8x8 cubes sharing the face between x = 10 and x = 11."""
    labels = np.zeros((12, 14, 22), dtype=np.uint16)
    labels[2:10, 3:11, 3:11] = 1
    labels[2:10, 3:11, 11:19] = 2
    return labels


def touching_balls() -> np.ndarray:
    """Two balls of radius 6 whose centres are 10 voxels apart along x, split halfway."""
    zz, yy, xx = np.mgrid[:18, :18, :30]
    d1 = np.sqrt((zz - 9) ** 2 + (yy - 9) ** 2 + (xx - 10) ** 2)
    d2 = np.sqrt((zz - 9) ** 2 + (yy - 9) ** 2 + (xx - 20) ** 2)
    labels = np.zeros(d1.shape, dtype=np.uint16)
    labels[(d1 <= 6) & (d1 <= d2)] = 1
    labels[(d2 <= 6) & (d2 < d1)] = 2
    return labels


# === instance_to_classes ===


def test_touching_cubes_get_their_shells_as_boundary_including_the_shared_face():
    labels = touching_cubes()
    classes = instance_to_classes(labels, boundary_width=1)
    expected = box_with_shell(labels.shape, np.s_[2:10, 3:11, 3:11], (1, 1, 1))
    expected |= box_with_shell(labels.shape, np.s_[2:10, 3:11, 11:19], (1, 1, 1))
    np.testing.assert_array_equal(classes, expected)
    assert classes[5, 6, 10] == classes[5, 6, 11] == BOUNDARY  # both sides of the shared face


def test_boundary_width_counts_voxels_on_every_axis_without_sampling():
    labels = np.zeros((12, 12, 12), dtype=np.uint16)
    labels[2:10, 2:10, 2:10] = 1
    expected = box_with_shell(labels.shape, np.s_[2:10, 2:10, 2:10], (2, 2, 2))
    np.testing.assert_array_equal(instance_to_classes(labels, boundary_width=2), expected)


def test_sampling_measures_the_boundary_width_in_xy_pixels():
    # z slices twice as thick as xy pixels: a two-pixel rim is two pixels wide in y and x but one slice
    # thick in z, since the second slice in already lies two pixels from the rim.
    labels = np.zeros((12, 12, 12), dtype=np.uint16)
    labels[2:10, 2:10, 2:10] = 1
    classes = instance_to_classes(labels, boundary_width=2, sampling=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(classes, box_with_shell(labels.shape, np.s_[2:10, 2:10, 2:10], (1, 2, 2)))


def test_sampling_needs_one_spacing_per_axis():
    with pytest.raises(ValueError, match="sampling"):
        instance_to_classes(touching_cubes(), sampling=(2.0, 1.0))


def test_a_single_slice_volume_gets_the_classes_of_its_image():
    _, mask = synthetic_nuclei_image(np.random.default_rng(0), shape=(96, 96))
    for width in (1, 2, 3):
        expected = instance_to_classes(mask, boundary_width=width)
        np.testing.assert_array_equal(instance_to_classes(mask[None], boundary_width=width)[0], expected)
        np.testing.assert_array_equal(
            instance_to_classes(mask, boundary_width=width, sampling=(1, 1)), expected
        )


# === classes_to_instances ===


def test_touching_balls_come_back_from_perfect_probabilities():
    labels = touching_balls()
    instances = classes_to_instances(one_hot(instance_to_classes(labels)))
    assert instances.shape == labels.shape and instances.dtype == np.uint32
    assert instances.max() == 2
    (counts,) = match_instances(labels, instances, thresholds=[0.9])
    assert counts.f1 == 1.0


def test_anisotropic_nuclei_come_back_from_perfect_probabilities():
    _, mask = synthetic_nuclei_volume(np.random.default_rng(0), shape=(16, 64, 64))
    classes = instance_to_classes(mask, sampling=(2.0, 1.0, 1.0))
    scores = evaluate_instances([(mask, classes_to_instances(one_hot(classes)))], thresholds=[0.5])
    assert scores["f1_at_0.5"] >= 0.95


def test_interiors_touching_at_an_edge_or_corner_stay_separate_objects():
    # Seeds are face-connected, as in 2D: sharing an edge or a corner does not join two nuclei.
    classes = np.zeros((12, 12, 12), dtype=np.uint8)
    classes[3:7, 3:7, 3:7] = INTERIOR
    classes[7:11, 7:11, 7:11] = INTERIOR  # corner to corner with the first
    classes[3:7, 7:11, 0:3] = INTERIOR  # edge to edge with the first, apart from the second
    instances = classes_to_instances(one_hot(classes))
    assert instances.max() == 3
    for box in (np.s_[3:7, 3:7, 3:7], np.s_[7:11, 7:11, 7:11], np.s_[3:7, 7:11, 0:3]):
        assert len(np.unique(instances[box])) == 1


def test_a_single_slice_volume_gets_the_instances_of_its_image():
    _, mask = synthetic_nuclei_image(np.random.default_rng(1), shape=(96, 96))
    probabilities = one_hot(instance_to_classes(mask))
    probabilities[..., 1] *= np.linspace(0.2, 1.0, 96, dtype=np.float32)  # some interior under 0.5
    expected = classes_to_instances(probabilities)
    np.testing.assert_array_equal(classes_to_instances(probabilities[None])[0], expected)


# === metrics ===


def test_metrics_count_voxels_and_match_objects_in_3d():
    true = np.zeros((8, 8, 16), dtype=np.uint16)
    true[0:4, 0:4, 0:4] = 1
    true[4:8, 4:8, 8:12] = 2
    pred = np.zeros_like(true)
    pred[0:4, 0:4, 0:4] = 7  # exact: IoU 1
    pred[4:8, 4:8, 10:14] = 3  # shifted by 2 in x: overlap 32, union 96, IoU 1/3
    pred[0:2, 6:8, 14:16] = 9  # nothing there
    iou, true_ids, pred_ids = instance_iou_matrix(true, pred)
    assert true_ids.tolist() == [1, 2] and pred_ids.tolist() == [3, 7, 9]
    np.testing.assert_allclose(iou, [[0.0, 1.0, 0.0], [1 / 3, 0.0, 0.0]])
    at_half, at_third = match_instances(true, pred, thresholds=[0.5, 0.3])
    assert (at_half.tp, at_half.fp, at_half.fn) == (1, 2, 1)
    assert at_half.f1 == pytest.approx(2 / 5)  # 2 tp / (2 tp + fp + fn)
    assert (at_third.tp, at_third.fp, at_third.fn) == (2, 1, 0)
    assert at_third.f1 == pytest.approx(4 / 5)
    assert at_third.panoptic_quality == pytest.approx((1 + 1 / 3) / 2.5)


def test_a_volume_is_not_scored_slice_by_slice():
    # One true object spanning four slices, predicted in two halves: per slice each half would match,
    # in 3D each covers half the object and neither reaches IoU 0.5 strictly above.
    true = np.zeros((4, 6, 6), dtype=np.uint16)
    true[:, 1:5, 1:5] = 1
    pred = np.zeros_like(true)
    pred[:2, 1:5, 1:5] = 1
    pred[2:, 1:5, 1:5] = 2
    (counts,) = match_instances(true, pred, thresholds=[0.55])
    assert (counts.tp, counts.fp, counts.fn) == (0, 2, 1)
