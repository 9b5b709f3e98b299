"""Predict instances with a trained segmentation model and measure them against true masks.

`config` arguments are the segmentation task's options (`training.tasks.segment.SegmentConfig`)."""

from __future__ import annotations

import itertools

import keras
import numpy as np

from training.data import Sample
from training.metrics import confusion_matrix, evaluate_instances, iou_from_confusion
from training.targets import CLASS_NAMES, classes_to_instances
from training.tiling import Predictor, predict_with_geometry
from zoo import Geometry

POSTPROCESSING_KEYS = ("interior_threshold", "foreground_threshold", "min_object_size")
# The DSB2018 nuclei model's best point lay on the edge of narrower grids (foreground 0.7, interior 0.3),
# and the 3D demo's on the edge of these without 0.1 and 0.95, so they reach further: docs/benchmarks.md,
# "The pretrained nuclei model" and "Volumes (3D)".
INTERIOR_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FOREGROUND_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def tune_postprocessing(probabilities: list[np.ndarray], labels: list[np.ndarray], *, config) -> dict:
    """The thresholds of `classes_to_instances` that give the best F1 at IoU 0.5 on these images.

    `probabilities` are the (Y, X, 3) or (Z, Y, X, 3) predictions of the images or volumes whose true
    instance `labels` are given (the validation images). A grid over the interior threshold, the
    foreground threshold and the minimum object size (a third, one and two times the configured one);
    ties go to the higher mean average precision at IoU 0.5 and 0.75, then to the configured values.
    Returns the chosen values under POSTPROCESSING_KEYS, their F1, and the scores of every grid point.
    """
    size = config.min_object_size
    configured = tuple(getattr(config, key) for key in POSTPROCESSING_KEYS)
    candidates = {configured} | set(
        itertools.product(INTERIOR_GRID, FOREGROUND_GRID, sorted({size // 3, size, 2 * size}))
    )
    grid = []
    for interior, foreground, min_size in sorted(candidates):
        instances = (
            classes_to_instances(
                p, interior_threshold=interior, foreground_threshold=foreground, min_size=min_size
            )
            for p in probabilities
        )
        scores = evaluate_instances(list(zip(labels, instances, strict=True)), thresholds=(0.5, 0.75))
        grid.append(
            {
                "interior_threshold": interior,
                "foreground_threshold": foreground,
                "min_object_size": min_size,
                "f1_at_0.5": scores["f1_at_0.5"],
                "mean_average_precision_0.5_0.75": scores["mean_average_precision"],
            }
        )

    def rank(point: dict) -> tuple:
        is_configured = tuple(point[key] for key in POSTPROCESSING_KEYS) == configured
        return point["f1_at_0.5"], point["mean_average_precision_0.5_0.75"], is_configured

    best = max(grid, key=rank)
    return {key: best[key] for key in POSTPROCESSING_KEYS} | {
        "f1_at_0.5": best["f1_at_0.5"],
        "grid": grid,
    }


def predict_segmentation(
    model: Predictor, image: np.ndarray, *, geometry: Geometry, config
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (Y, X, 3) and instance labels (Y, X) of a normalised (Y, X, C) image; `model`
    is a Keras model or a batch predictor of `training.engines`. Volumes (Z, Y, X, C) pass through as far
    as `training.tiling.predict_with_geometry` takes them."""
    probabilities = predict_with_geometry(model, image, geometry, tile_size=config.tile_size)
    instances = classes_to_instances(
        probabilities,
        interior_threshold=config.interior_threshold,
        foreground_threshold=config.foreground_threshold,
        min_size=config.min_object_size,
    )
    return probabilities, instances


def evaluate_segmentation(model: keras.Model, samples: list[Sample], *, geometry: Geometry, config) -> dict:
    """Pixel IoU per class and dataset-level instance metrics over `samples` (images or volumes)."""
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    pairs = []
    for sample in samples:
        probabilities, instances = predict_segmentation(model, sample.image, geometry=geometry, config=config)
        confusion += confusion_matrix(sample.classes, probabilities.argmax(axis=-1), len(CLASS_NAMES))
        pairs.append((sample.labels, instances))
    ious = iou_from_confusion(confusion)
    return {
        "pixel_iou": {
            name: (None if np.isnan(v) else float(v)) for name, v in zip(CLASS_NAMES, ious, strict=True)
        },
        "instances": evaluate_instances(pairs),
        "images": [sample.name for sample in samples],
    }
