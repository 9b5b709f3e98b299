"""Tests for training.metrics on hand-made label images with answers computed by hand."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    MatchCounts,
    confusion_matrix,
    evaluate_instances,
    format_metrics_table,
    instance_iou_matrix,
    iou_from_confusion,
    match_instances,
    pixel_iou_per_class,
)

DSB_MASKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuclei_dsb2018" / "masks"


def squares_image() -> np.ndarray:
    """Three separated 10x10 objects in a 40x40 image with labels 1, 2, 3."""
    img = np.zeros((40, 40), dtype=np.uint16)
    img[0:10, 0:10] = 1
    img[0:10, 20:30] = 2
    img[25:35, 5:15] = 3
    return img


def strip(intervals: dict[int, tuple[int, int]], width: int = 20) -> np.ndarray:
    """A 1-row label image where label k covers columns [start, stop)."""
    img = np.zeros((1, width), dtype=np.int32)
    for label, (start, stop) in intervals.items():
        img[0, start:stop] = label
    return img


def test_identical_labels_are_perfect_at_all_thresholds():
    img = squares_image()
    for c in match_instances(img, img):
        assert (c.tp, c.fp, c.fn) == (3, 0, 0)
        assert c.average_precision == c.f1 == c.panoptic_quality == c.mean_matched_iou == 1.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint64])
def test_permuted_label_ids_still_match(dtype):
    img = squares_image()
    perm = np.array([0, 3, 1, 2])[img]  # same objects, different ids
    counts = match_instances(img.astype(dtype), perm.astype(dtype))
    assert all((c.tp, c.fp, c.fn) == (3, 0, 0) for c in counts)


def test_shifted_square_has_known_iou():
    # Two 10x10 squares overlapping by 5 columns: intersection 50, union 150, IoU 1/3.
    true = np.zeros((10, 20), dtype=np.uint8)
    pred = np.zeros_like(true)
    true[:, 0:10] = 1
    pred[:, 5:15] = 1
    iou, _, _ = instance_iou_matrix(true, pred)
    assert iou.shape == (1, 1) and iou.dtype == np.float64
    assert iou[0, 0] == pytest.approx(1 / 3)
    (at_05,) = match_instances(true, pred, thresholds=[0.5])
    assert (at_05.tp, at_05.fp, at_05.fn) == (0, 1, 1)
    (at_03,) = match_instances(true, pred, thresholds=[0.3])
    assert (at_03.tp, at_03.fp, at_03.fn) == (1, 0, 0)
    assert at_03.mean_matched_iou == pytest.approx(1 / 3)


def test_threshold_is_inclusive_for_split_halves():
    # One true 10x10 square predicted as two 10x5 halves: each half has IoU 50/100 = 0.5 exactly,
    # so at 0.5 one half matches (IoU >= threshold); just above 0.5 neither does.
    true = np.zeros((10, 10), dtype=np.uint8)
    true[:] = 1
    pred = np.zeros_like(true)
    pred[:, :5], pred[:, 5:] = 1, 2
    at_05, at_051 = match_instances(true, pred, thresholds=[0.5, 0.51])
    assert (at_05.tp, at_05.fp, at_05.fn) == (1, 1, 0)
    assert (at_051.tp, at_051.fp, at_051.fn) == (0, 2, 1)


def test_split_object_gives_one_fn_and_two_fp():
    # True covers columns 0-9 (100 px); halves cover columns 0-3 and 6-9 (40 px each): IoU 40/100 = 0.4.
    true = np.ones((10, 10), dtype=np.uint8)
    pred = np.zeros_like(true)
    pred[:, 0:4], pred[:, 6:10] = 1, 2
    (c,) = match_instances(true, pred, thresholds=[0.5])
    assert (c.tp, c.fp, c.fn) == (0, 2, 1)


def test_hungarian_beats_greedy_at_low_threshold():
    # True A = cols 0-9, B = cols 10-19. Pred a = cols 3-13, b = cols 0-2.
    # IoU(A,a) = 7/14 = 0.5, IoU(A,b) = 3/10 = 0.3, IoU(B,a) = 4/17 ~ 0.235, IoU(B,b) = 0.
    # Greedy takes (A,a) first and leaves B and b unmatched: 1 match, total IoU 0.5.
    # Optimal is (A,b) + (B,a): 2 matches, total IoU 0.3 + 4/17 ~ 0.535.
    true = strip({1: (0, 10), 2: (10, 20)})
    pred = strip({1: (3, 14), 2: (0, 3)})
    iou, _, _ = instance_iou_matrix(true, pred)
    np.testing.assert_allclose(iou, [[0.5, 0.3], [4 / 17, 0.0]])
    (c,) = match_instances(true, pred, thresholds=[0.2])
    assert (c.tp, c.fp, c.fn) == (2, 0, 0)
    assert c.sum_matched_iou == pytest.approx(0.3 + 4 / 17)


def test_threshold_excludes_pairs_before_assignment():
    # Same layout at threshold 0.25: (B,a) = 0.235 is not allowed, so only one of A's pairs can match,
    # and the one with the higher IoU, (A,a) = 0.5, is chosen.
    true = strip({1: (0, 10), 2: (10, 20)})
    pred = strip({1: (3, 14), 2: (0, 3)})
    (c,) = match_instances(true, pred, thresholds=[0.25])
    assert (c.tp, c.fp, c.fn) == (1, 1, 1)
    assert c.sum_matched_iou == pytest.approx(0.5)


def test_more_matches_preferred_over_higher_total_iou():
    # True A = cols 0-9, B = cols 10-19. Pred a = cols 1-10, b = col 0.
    # IoU(A,a) = 9/11, IoU(A,b) = 1/10, IoU(B,a) = 1/19. At threshold 0.05 the single pair (A,a) has the
    # larger total IoU (0.82 vs 0.15), but (A,b) + (B,a) gives two true positives, which is preferred.
    true = strip({1: (0, 10), 2: (10, 20)})
    pred = strip({1: (1, 11), 2: (0, 1)})
    (c,) = match_instances(true, pred, thresholds=[0.05])
    assert c.tp == 2
    assert c.sum_matched_iou == pytest.approx(1 / 10 + 1 / 19)


def test_empty_vs_empty_is_perfect():
    empty = np.zeros((8, 8), dtype=np.uint16)
    for c in match_instances(empty, empty):
        assert (c.tp, c.fp, c.fn) == (0, 0, 0)
        assert c.precision == c.recall == c.f1 == c.average_precision == c.panoptic_quality == 1.0
        assert c.mean_matched_iou == 0.0


def test_empty_prediction_gives_all_false_negatives():
    img = squares_image()
    for c in match_instances(img, np.zeros_like(img)):
        assert (c.tp, c.fp, c.fn) == (0, 0, 3)
        assert c.precision == c.recall == c.f1 == c.average_precision == c.panoptic_quality == 0.0


def test_evaluate_sums_counts_over_images_not_averages():
    # Image 1 perfect (3 tp); image 2 has 3 true and nothing predicted (3 fn).
    # Summed: tp 3, fn 3 -> AP 3/6 = 0.5, recall 0.5. (Averaging per image would also give 0.5 for AP,
    # so precision tells them apart: summed 3/3 = 1.0, per-image mean of 1.0 and 0.0 would be 0.5.)
    img = squares_image()
    result = evaluate_instances([(img, img), (img, np.zeros_like(img))])
    assert (result["n_images"], result["n_true"], result["n_pred"]) == (2, 6, 3)
    for row in result["per_threshold"]:
        assert (row["tp"], row["fp"], row["fn"]) == (3, 0, 3)
        assert row["precision"] == 1.0 and row["recall"] == 0.5 and row["average_precision"] == 0.5
    assert result["mean_average_precision"] == pytest.approx(0.5)
    assert result["f1_at_0.5"] == pytest.approx(2 / 3)
    assert result["thresholds"] == list(DEFAULT_IOU_THRESHOLDS)
    json.dumps(result)  # must be serialisable as is


def test_match_counts_add():
    a = MatchCounts(0.5, tp=2, fp=1, fn=0, sum_matched_iou=1.5)
    b = MatchCounts(0.5, tp=1, fp=0, fn=3, sum_matched_iou=0.75)
    assert a + b == MatchCounts(0.5, 3, 1, 3, 2.25)
    # PQ = 2.25 / (3 + 0.5 + 1.5) = 0.45
    assert (a + b).panoptic_quality == pytest.approx(0.45)
    with pytest.raises(ValueError, match="thresholds"):
        a + MatchCounts(0.6, 0, 0, 0, 0.0)


def test_non_sequential_labels():
    img = np.zeros((20, 20), dtype=np.int64)
    img[0:5, 0:5] = 7
    img[10:15, 10:15] = 1000
    pred = np.zeros_like(img)
    pred[0:5, 0:5] = 42
    iou, true_ids, pred_ids = instance_iou_matrix(img, pred)
    assert list(true_ids) == [7, 1000] and list(pred_ids) == [42]
    np.testing.assert_array_equal(iou, [[1.0], [0.0]])
    (c,) = match_instances(img, pred, thresholds=[0.5])
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)


def test_pixel_iou_per_class_three_classes():
    true = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: true {(0,0),(0,1)}, pred {(0,0),(1,2)} -> 1 / 3
    # class 1: true {(0,2),(1,0)}, pred {(0,1),(0,2),(1,0)} -> 2 / 3
    # class 2: true {(1,1),(1,2)}, pred {(1,1)} -> 1 / 2
    np.testing.assert_allclose(pixel_iou_per_class(true, pred, 3), [1 / 3, 2 / 3, 1 / 2])
    np.testing.assert_array_equal(confusion_matrix(true, pred, 3), [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_pixel_iou_absent_class_is_nan_and_accumulates():
    a = np.array([[0, 1]])
    total = confusion_matrix(a, a, 3) + confusion_matrix(np.array([[1, 1]]), np.array([[0, 1]]), 3)
    # Over both images: class 0 true 1, pred 2, inter 1 -> 1/2; class 1 true 3, pred 2, inter 2 -> 2/3.
    iou = iou_from_confusion(total)
    assert iou[:2] == pytest.approx([1 / 2, 2 / 3]) and math.isnan(iou[2])


def test_class_out_of_range_raises():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)


@pytest.mark.parametrize(
    "func", [instance_iou_matrix, match_instances, lambda t, p: pixel_iou_per_class(t, p, 2)]
)
def test_shape_mismatch_raises(func):
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        func(np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 5), dtype=np.uint8))


def test_float_labels_rejected():
    with pytest.raises(TypeError, match="integer"):
        instance_iou_matrix(np.zeros((4, 4)), np.zeros((4, 4), dtype=np.uint8))


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_invalid_threshold_raises(threshold):
    img = squares_image()
    with pytest.raises(ValueError, match="threshold"):
        match_instances(img, img, thresholds=[threshold])


def test_format_metrics_table_has_one_row_per_threshold():
    img = squares_image()
    table = format_metrics_table(evaluate_instances([(img, img)]), {"background": 0.99, "nucleus": 0.8})
    lines = table.splitlines()
    assert lines[0].split() == ["thresh", "tp", "fp", "fn", "prec", "recall", "f1", "AP", "mIoU", "PQ"]
    assert len({len(line) for line in lines[: 1 + len(DEFAULT_IOU_THRESHOLDS)]}) == 1  # fixed width
    assert lines[1].split()[:4] == ["0.50", "3", "0", "0"]
    assert "mAP 1.000" in table and "nucleus" in table


def test_real_dsb2018_masks_match_themselves():
    if not DSB_MASKS.is_dir():
        pytest.skip(f"DSB2018 masks not found at {DSB_MASKS.resolve()}")
    tifffile = pytest.importorskip("tifffile")
    paths = sorted(DSB_MASKS.glob("*.tif"))[:5]
    if not paths:
        pytest.skip(f"no .tif files in {DSB_MASKS.resolve()}")
    for path in paths:
        mask = tifffile.imread(path)
        n_labels = len(np.unique(mask[mask != 0]))
        for c in match_instances(mask, mask):
            assert c.average_precision == 1.0, path.name
            assert c.tp == n_labels, path.name


@pytest.mark.parametrize("bad", ["true", "pred"])
def test_float_label_error_names_the_offending_input(bad):
    labels = {"true": np.zeros((2, 2), dtype=np.int32), "pred": np.zeros((2, 2), dtype=np.int32)}
    labels[bad] = labels[bad].astype(np.float64)
    with pytest.raises(TypeError, match=rf"^{bad} must be an integer label image, got dtype float64$"):
        instance_iou_matrix(labels["true"], labels["pred"])


@pytest.mark.parametrize(
    ("true", "pred", "message"),
    [
        ([0, 2], [0, 1], r"^true classes must lie in \[0, 2\), got \[0, 2\]$"),
        ([0, 1], [-1, 1], r"^pred classes must lie in \[0, 2\), got \[-1, 1\]$"),
    ],
)
def test_class_out_of_range_error_names_the_offending_input(true, pred, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(true), np.array(pred), 2)


def test_single_pixel_objects_and_classes_have_iou_one():
    # A union of exactly one pixel: the matched 1-pixel objects have IoU 1, so they match even at the
    # strictest threshold 1.0, which is a valid threshold; likewise a 1-pixel class predicted right has IoU 1.
    true = np.array([[1, 0, 2]], dtype=np.uint8)
    pred = np.array([[5, 0, 0]], dtype=np.uint8)
    iou, _, _ = instance_iou_matrix(true, pred)
    np.testing.assert_array_equal(iou, [[1.0], [0.0]])
    (c,) = match_instances(true, pred, thresholds=[1.0])
    assert (c.threshold, c.tp, c.fp, c.fn, c.sum_matched_iou) == (1.0, 1, 0, 1, 1.0)
    # Classes: 0 = {(0,0)} in both -> 1/1; 1: true {(0,1)}, pred {(0,1),(0,2)} -> 1/2; 2: true {(0,2)} -> 0/1.
    true_classes, pred_classes = np.array([[0, 1, 2]]), np.array([[0, 1, 1]])
    confusion = confusion_matrix(true_classes, pred_classes, 3)
    assert confusion.dtype == np.int64
    np.testing.assert_array_equal(confusion, [[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    assert pixel_iou_per_class(true_classes, pred_classes, 3) == [1.0, 0.5, 0.0]


@pytest.mark.filterwarnings("error")  # an absent class is expected, not a numerical accident
def test_iou_from_float32_confusion_is_exact_and_silent_for_absent_class():
    # Class 0: intersection 1, union 1 + 3 - 1 = 3; class 1: intersection 0, union 2; class 2 absent.
    confusion = np.array([[1, 2, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    iou = iou_from_confusion(confusion)
    assert iou[:2] == [1 / 3, 0.0]  # computed in double precision, not float32
    assert math.isnan(iou[2])


def test_evaluate_instances_rejects_empty_thresholds_and_empty_dataset():
    img = squares_image()
    with pytest.raises(ValueError, match=r"^at least one IoU threshold is required$"):
        evaluate_instances([(img, img)], thresholds=[])
    with pytest.raises(ValueError, match=r"^no \(true, pred\) pairs to evaluate$"):
        evaluate_instances([])


def test_format_metrics_table_exact_text():
    # Image 1 perfect, image 2 all missed: tp 3, fp 0, fn 3 at both thresholds. precision 1, recall 1/2,
    # f1 6/9, AP 3/6, mIoU 1, PQ 3 / (3 + 1.5) = 2/3.
    img = squares_image()
    metrics = evaluate_instances([(img, img), (img, np.zeros_like(img))], thresholds=[0.5, 0.9])
    table = format_metrics_table(metrics, {"bg": 0.99, "nucleus": 0.8})

    def row(*cells: str) -> str:
        return "".join(cell.rjust(8) for cell in cells)

    numbers = ("3", "0", "3", "1.000", "0.500", "0.667", "0.500", "1.000", "0.667")
    assert table.splitlines() == [
        row("thresh", "tp", "fp", "fn", "prec", "recall", "f1", "AP", "mIoU", "PQ"),
        row("0.50", *numbers),
        row("0.90", *numbers),
        "mAP 0.500  F1@0.5 0.667  images 2  true 6  pred 3",
        "class        IoU",  # class names padded to at least 8 characters, then a 6-wide IoU column
        "bg         0.990",
        "nucleus    0.800",
    ]


def test_evaluate_sums_false_positives_and_table_without_threshold_0_5():
    # Per image: one true object found exactly plus one spurious prediction -> tp 1, fp 1, fn 0.
    # Two images: tp 2, fp 2 -> precision 1/2, recall 1, f1 4/6, AP 2/4, mIoU 1, PQ 2 / (2 + 1) = 2/3.
    true = strip({1: (0, 4)})
    pred = strip({1: (0, 4), 2: (10, 12)})
    metrics = evaluate_instances([(true, pred), (true, pred)], thresholds=[0.75, 1.0])
    for row in metrics["per_threshold"]:
        assert (row["tp"], row["fp"], row["fn"]) == (2, 2, 0)
        assert (row["precision"], row["recall"], row["average_precision"]) == (0.5, 1.0, 0.5)
        assert row["f1"] == pytest.approx(2 / 3) and row["panoptic_quality"] == pytest.approx(2 / 3)
    assert metrics["f1_at_0.5"] is None
    table = format_metrics_table(metrics, {"cytoplasm": 0.5}).splitlines()
    assert table[3:] == [
        "mAP 0.500  F1@0.5 n/a  images 2  true 2  pred 4",
        "class         IoU",  # a name longer than 8 characters widens the column
        "cytoplasm   0.500",
    ]
