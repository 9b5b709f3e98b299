"""Evaluation of segmentation results: pixel IoU per class and instance matching metrics.

Label images are integer arrays with 0 as background; object ids need not be sequential. Every function
works on flattened arrays, so a 3D label volume (or a class volume) is measured exactly like an image,
objects being counted and overlapped in voxels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def _check_pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"shape mismatch: true {true.shape} vs pred {pred.shape}")
    for name, arr in (("true", true), ("pred", pred)):
        # Float inputs are usually probability maps passed by mistake; truncating them would hide that.
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise TypeError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    return true.ravel(), pred.ravel()


def confusion_matrix(true_classes: np.ndarray, pred_classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel confusion matrix of two class maps: (num_classes, num_classes) int64 counts, rows = true class.

    Sum the matrices of several images and pass the total to `iou_from_confusion` for dataset-level IoU.
    """
    true, pred = _check_pair(true_classes, pred_classes)
    for name, arr in (("true", true), ("pred", pred)):
        # An out-of-range class would silently land in another cell of the flattened histogram.
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} classes must lie in [0, {num_classes}), got [{arr.min()}, {arr.max()}]")
    codes = true.astype(np.int64) * num_classes + pred.astype(np.int64)
    counts = np.bincount(codes, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(confusion: np.ndarray) -> list[float]:
    """IoU per class from a confusion matrix (rows = true); NaN for a class absent from both true and pred."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
    return [float(v) for v in iou]


def pixel_iou_per_class(true_classes: np.ndarray, pred_classes: np.ndarray, num_classes: int) -> list[float]:
    """IoU per class of two integer class maps of the same shape (NaN for a class absent from both)."""
    return iou_from_confusion(confusion_matrix(true_classes, pred_classes, num_classes))


def instance_iou_matrix(
    true_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every true object and every predicted object.

    Returns (iou, true_ids, pred_ids) with iou of shape (n_true, n_pred) in float64; background (0) is
    excluded from the ids. Labels need not be sequential. Computed from a joint histogram of paired labels,
    so the cost is one sort of the pixels rather than a loop over object pairs.
    """
    true, pred = _check_pair(true_labels, pred_labels)
    true_ids, true_idx = np.unique(true, return_inverse=True)
    pred_ids, pred_idx = np.unique(pred, return_inverse=True)
    n_t, n_p = len(true_ids), len(pred_ids)
    # Only label pairs that actually co-occur are counted, so memory stays proportional to the overlaps.
    pair_codes, overlap = np.unique(true_idx.astype(np.int64) * n_p + pred_idx, return_counts=True)
    t_area = np.bincount(true_idx, minlength=n_t).astype(np.float64)
    p_area = np.bincount(pred_idx, minlength=n_p).astype(np.float64)
    inter = np.zeros((n_t, n_p), dtype=np.float64)
    inter[pair_codes // n_p, pair_codes % n_p] = overlap
    union = t_area[:, None] + p_area[None, :] - inter
    iou = inter / np.maximum(union, 1.0)  # union >= 1 for any label that occurs
    t_keep, p_keep = true_ids != 0, pred_ids != 0
    return iou[np.ix_(t_keep, p_keep)], true_ids[t_keep], pred_ids[p_keep]


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den > 0 else empty


@dataclass(frozen=True)
class MatchCounts:
    """Matching counts at one IoU threshold; add instances (`a + b`) to accumulate over images.

    Each ratio is 0.0 when its denominator is 0, except when there are neither true nor predicted objects
    (tp = fp = fn = 0): then precision, recall, f1, average_precision and panoptic_quality are 1.0, since an
    empty image predicted empty is perfect, while mean_matched_iou is 0.0 as there is no match to average.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    sum_matched_iou: float

    @property
    def _empty(self) -> float:
        return 1.0 if self.tp == self.fp == self.fn == 0 else 0.0

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, self._empty)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn, self._empty)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self._empty)

    @property
    def average_precision(self) -> float:
        """tp / (tp + fp + fn): the DSB2018 / StarDist "accuracy"."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, self._empty)

    @property
    def mean_matched_iou(self) -> float:
        return _ratio(self.sum_matched_iou, self.tp, 0.0)

    @property
    def panoptic_quality(self) -> float:
        return _ratio(self.sum_matched_iou, self.tp + 0.5 * self.fp + 0.5 * self.fn, self._empty)

    def __add__(self, other: MatchCounts) -> MatchCounts:
        if not isinstance(other, MatchCounts):
            return NotImplemented
        if self.threshold != other.threshold:
            raise ValueError(f"cannot add counts at thresholds {self.threshold} and {other.threshold}")
        return MatchCounts(
            self.threshold,
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.sum_matched_iou + other.sum_matched_iou,
        )


def _match_from_iou(iou: np.ndarray, thresholds: Iterable[float]) -> list[MatchCounts]:
    n_true, n_pred = iou.shape
    results = []
    for thr in thresholds:
        if not 0.0 < thr <= 1.0:
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {thr}")
        valid = iou >= thr
        if valid.any():
            # Count dominates: each valid pair scores 1 plus its IoU scaled so that all IoU terms together
            # stay below 1, hence the assignment maximises the number of matches first and total IoU second.
            score = np.where(valid, 1.0 + iou / (min(n_true, n_pred) + 1), 0.0)
            rows, cols = linear_sum_assignment(score, maximize=True)
            kept = valid[rows, cols]  # the solver also assigns invalid (score 0) pairs; drop them
            tp, matched = int(kept.sum()), float(iou[rows[kept], cols[kept]].sum())
        else:
            tp, matched = 0, 0.0
        results.append(MatchCounts(float(thr), tp, n_pred - tp, n_true - tp, matched))
    return results


def match_instances(
    true_labels: np.ndarray, pred_labels: np.ndarray, thresholds: Iterable[float] = DEFAULT_IOU_THRESHOLDS
) -> list[MatchCounts]:
    """One-to-one matching of true and predicted objects at each IoU threshold, one MatchCounts per threshold.

    Uses the Hungarian assignment (scipy.optimize.linear_sum_assignment) restricted to pairs with
    IoU >= threshold; pairs below the threshold are never matched. Among such matchings it picks one with the
    most matches and, among those, the largest total IoU. For thresholds >= 0.5 the match is unique anyway.
    """
    iou, _, _ = instance_iou_matrix(true_labels, pred_labels)
    return _match_from_iou(iou, thresholds)


def evaluate_instances(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], thresholds: Iterable[float] = DEFAULT_IOU_THRESHOLDS
) -> dict:
    """Dataset-level instance metrics from (true_labels, pred_labels) pairs.

    Counts are summed over all images before the ratios are taken (not averaged per image). Returns a
    JSON-serialisable dict with keys "thresholds", "per_threshold" (a list of dicts with "threshold", "tp",
    "fp", "fn", "precision", "recall", "f1", "average_precision", "mean_matched_iou", "panoptic_quality"),
    "mean_average_precision" (mean of AP over thresholds), "f1_at_0.5" (None when 0.5 is not a threshold),
    "n_true", "n_pred" and "n_images".
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("at least one IoU threshold is required")
    totals: list[MatchCounts] | None = None
    n_true = n_pred = n_images = 0
    for true_labels, pred_labels in pairs:
        iou, true_ids, pred_ids = instance_iou_matrix(true_labels, pred_labels)
        counts = _match_from_iou(iou, thresholds)
        totals = counts if totals is None else [a + b for a, b in zip(totals, counts, strict=True)]
        n_true, n_pred, n_images = n_true + len(true_ids), n_pred + len(pred_ids), n_images + 1
    if totals is None:
        # An empty dataset would otherwise score as perfect, which hides a broken data pipeline.
        raise ValueError("no (true, pred) pairs to evaluate")
    keys = ("precision", "recall", "f1", "average_precision", "mean_matched_iou", "panoptic_quality")
    per_threshold = [
        {"threshold": c.threshold, "tp": c.tp, "fp": c.fp, "fn": c.fn} | {k: getattr(c, k) for k in keys}
        for c in totals
    ]
    f1_05 = [c.f1 for c in totals if np.isclose(c.threshold, 0.5)]
    return {
        "thresholds": thresholds,
        "per_threshold": per_threshold,
        "mean_average_precision": float(np.mean([c.average_precision for c in totals])),
        "f1_at_0.5": f1_05[0] if f1_05 else None,
        "n_true": n_true,
        "n_pred": n_pred,
        "n_images": n_images,
    }


def format_metrics_table(instance_metrics: dict, class_iou: dict[str, float] | None = None) -> str:
    """A plain-text table (fixed width columns, one row per threshold) for printing to the terminal.

    `instance_metrics` is the dict from `evaluate_instances`; `class_iou` optionally maps class names to
    pixel IoU and is listed below the table.
    """
    cols = ("tp", "fp", "fn", "precision", "recall", "f1", "average_precision", "mean_matched_iou")
    cols += ("panoptic_quality",)
    heads = ("thresh", "tp", "fp", "fn", "prec", "recall", "f1", "AP", "mIoU", "PQ")
    lines = ["".join(f"{h:>8}" for h in heads)]
    for row in instance_metrics["per_threshold"]:
        cells = [f"{row['threshold']:>8.2f}"]
        cells += [f"{row[k]:>8d}" if k in ("tp", "fp", "fn") else f"{row[k]:>8.3f}" for k in cols]
        lines.append("".join(cells))
    f1_05 = instance_metrics.get("f1_at_0.5")
    lines.append(
        f"mAP {instance_metrics['mean_average_precision']:.3f}"
        f"  F1@0.5 {'n/a' if f1_05 is None else f'{f1_05:.3f}'}"
        f"  images {instance_metrics['n_images']}"
        f"  true {instance_metrics['n_true']}  pred {instance_metrics['n_pred']}"
    )
    if class_iou:
        width = max(8, *(len(name) for name in class_iou))
        lines.append(f"{'class':<{width}}  {'IoU':>6}")
        lines += [f"{name:<{width}}  {value:>6.3f}" for name, value in class_iou.items()]
    return "\n".join(lines)
