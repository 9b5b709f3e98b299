"""Predict instances with a trained segmentation model and measure them against true masks."""

from __future__ import annotations

import keras
import numpy as np

from training.config import SegmentConfig
from training.data import Sample
from training.metrics import confusion_matrix, evaluate_instances, iou_from_confusion
from training.targets import CLASS_NAMES, classes_to_instances
from training.tiling import tiled_predict
from zoo import Geometry


def predict_segmentation(
    model: keras.Model, image: np.ndarray, *, geometry: Geometry, config: SegmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (Y, X, 3) and instance labels (Y, X) of a normalised (Y, X, C) image."""
    probabilities = tiled_predict(
        model, image, step=geometry.step, halo=geometry.halo, tile_size=config.tile_size
    )
    instances = classes_to_instances(
        probabilities,
        interior_threshold=config.interior_threshold,
        foreground_threshold=config.foreground_threshold,
        min_size=config.min_object_size,
    )
    return probabilities, instances


def evaluate_segmentation(
    model: keras.Model, samples: list[Sample], *, geometry: Geometry, config: SegmentConfig
) -> dict:
    """Pixel IoU per class and dataset-level instance metrics over `samples`."""
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
