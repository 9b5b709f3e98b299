"""Losses, registered as Keras serializables so a saved model loads without custom code."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class WeightedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of softmax outputs against integer class maps, each pixel weighted by its class.

    With the default weights [1, 1, 10] of the classic DL4MIA U-Net exercise, the thin boundary class
    counts ten times as much, so the network does not learn to ignore it.

    Targets are integer class maps of shape (batch, y, x) or (batch, y, x, 1); predictions are
    probabilities of shape (batch, y, x, classes).
    """

    def __init__(
        self, class_weights: Sequence[float] = (1.0, 1.0, 10.0), name: str = "weighted_ce", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        # -log p[true class], with Keras's clipping; picked with take_along_axis rather than through
        # `sparse_categorical_crossentropy`, whose PyTorch gradient fails on the non-contiguous
        # channels-last softmax ("grad_input must be contiguous", torch 2.13 on CPU).
        picked = ops.take_along_axis(y_pred, ops.expand_dims(y_true, -1), axis=-1)[..., 0]
        epsilon = keras.config.epsilon()
        cross_entropy = -ops.log(ops.clip(picked, epsilon, 1.0 - epsilon))
        weights = ops.take(ops.convert_to_tensor(self.class_weights, dtype=cross_entropy.dtype), y_true)
        return weights * cross_entropy

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights}
