"""Custom layers, registered as Keras serializables so saved models load without custom code."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class MaxBlurPool2D(keras.layers.Layer):
    """2x down-sampling by max-blur-pooling (Zhang, ICML 2019), as N2V2 uses instead of max pooling.

    A 2x2 max with stride 1, then a fixed 3x3 binomial blur ([1, 2, 1] x [1, 2, 1] / 16) with stride 2.
    Blurring before sub-sampling removes the aliasing that plain max pooling adds, which N2V2 showed to
    cause checkerboard artefacts in Noise2Void predictions.
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        taps = np.array([1.0, 2.0, 1.0])
        kernel = np.outer(taps, taps) / 16.0
        # A constant, not a weight: the blur is part of the architecture, not something to learn.
        self._kernel = np.repeat(kernel[:, :, None, None], channels, axis=2).astype("float32")

    def call(self, inputs):
        x = ops.max_pool(inputs, pool_size=2, strides=1, padding="same")
        x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        kernel = ops.cast(ops.convert_to_tensor(self._kernel), x.dtype)
        return ops.depthwise_conv(x, kernel, strides=2, padding="valid")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        half = lambda n: None if n is None else (n + 1) // 2  # noqa: E731
        return (batch, half(height), half(width), channels)

    def spatial_footprint(self) -> tuple[int, int, int]:
        """Input offsets (low, high) that one output pixel reads, relative to 2x its index, and the stride.

        Output q blurs max-pooled pixels 2q-1 .. 2q+1, each the max of input pixels p .. p+1."""
        return -1, 2, 2
