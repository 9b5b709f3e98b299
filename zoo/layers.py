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

    @staticmethod
    def blur_kernel(channels: int) -> np.ndarray:
        """The depthwise (3, 3, channels, 1) binomial blur kernel, float32."""
        taps = np.array([1.0, 2.0, 1.0])
        kernel = np.outer(taps, taps) / 16.0
        return np.repeat(kernel[:, :, None, None], channels, axis=2).astype("float32")

    def build(self, input_shape):
        # A constant, not a weight: the blur is part of the architecture, not something to learn.
        self._kernel = self.blur_kernel(input_shape[-1])

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


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class MaxBlurPool3D(keras.layers.Layer):
    """Max-blur-pooling of a volume: `MaxBlurPool2D`'s down-sampling, on the axes of `pool_size` that are 2.

    A max over a `pool_size` window with stride 1, then the [1, 2, 1] / 4 binomial blur with stride 2
    along each pooled axis (output q reads the maxima at 2q - 1, 2q, 2q + 1, zero outside, as in 2D);
    axes with pool size 1 pass through. An anisotropic volume pools z later than y and x, hence
    ``(1, 2, 2)``. Keras has no 3D depthwise convolution on every backend, so the blur is two average
    pools (window 2, stride 1, then window 2, stride 2) after a zero pad of one voxel: their product is the
    binomial, and pooling ops run on every backend and export to ONNX and TorchScript.
    """

    def __init__(self, pool_size: tuple[int, int, int] = (2, 2, 2), **kwargs):
        super().__init__(**kwargs)
        pool_size = tuple(int(p) for p in pool_size)
        if len(pool_size) != 3 or any(p not in (1, 2) for p in pool_size) or max(pool_size) == 1:
            raise ValueError(f"pool_size must be three values of 1 or 2, at least one 2, got {pool_size}")
        self.pool_size = pool_size

    def call(self, inputs):
        x = ops.max_pool(inputs, pool_size=self.pool_size, strides=1, padding="same")
        x = ops.pad(x, [[0, 0], *([p - 1, p - 1] for p in self.pool_size), [0, 0]])
        x = ops.average_pool(x, pool_size=self.pool_size, strides=1, padding="valid")
        return ops.average_pool(x, pool_size=self.pool_size, strides=self.pool_size, padding="valid")

    def compute_output_shape(self, input_shape):
        batch, *spatial, channels = input_shape
        pooled = [
            n if n is None or p == 1 else (n + 1) // 2 for n, p in zip(spatial, self.pool_size, strict=True)
        ]
        return (batch, *pooled, channels)

    def spatial_footprint(self) -> tuple[tuple[int, int, int], ...]:
        """Per axis (z, y, x): input offsets (low, high) that one output voxel reads relative to its index
        times the stride, and the stride. Pooled: output q blurs maxima 2q-1 .. 2q+1, each of input
        voxels p .. p+1; not pooled: the voxel itself."""
        return tuple((-1, 2, 2) if p == 2 else (0, 0, 1) for p in self.pool_size)

    def get_config(self):
        return super().get_config() | {"pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's `BatchNormalization`, trained with TensorFlow's fused kernel where it applies.

    Keras 3 normalises a training batch with separate moment, subtract, scale and cast operations; on a
    CPU these passes over every activation cost about a fifth of a U-Net training step. On the TensorFlow
    backend, in training mode, for a channels-last 4D input without mask or renormalisation, this layer
    calls `FusedBatchNormV3` (oneDNN or cuDNN) instead, which also takes bfloat16/float16 activations
    without casting them. The moving statistics are updated with the same momentum rule. Inference, and
    every other backend, uses the parent's code, so saved models load and export as plain batch norm.
    """

    def call(self, inputs, training=None, mask=None):
        fusable = (
            training
            and self.trainable
            and keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4  # volumes (5D) take the parent's path
            and self.axis in (-1, 3)
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,), "float32")
        beta = self.beta if self.center else tf.zeros((channels,), "float32")
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.cast(gamma, "float32"),
            tf.cast(beta, "float32"),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The fused kernel returns the unbiased batch variance (n / (n - 1)); Keras keeps the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * tf.maximum(count - 1.0, 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class ChannelSlice(keras.layers.Layer):
    """Channels `start` to `stop` (exclusive) of a channels-last tensor: the input of one branch of a
    network that treats its channels independently. Acts on each pixel alone."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= start < stop:
            raise ValueError(f"need 0 <= start < stop, got {start}, {stop}")
        self.start, self.stop = start, stop

    def call(self, inputs):
        return inputs[..., self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return super().get_config() | {"start": self.start, "stop": self.stop}
