"""A float32 copy of a trained model made of Keras's own layers only.

A package must run where this project is not installed: bioimageio.core's Keras adapter, Keras under the
PyTorch backend (from which the TorchScript weights are traced) and tf2onnx know only Keras's own layers.
The project's custom layers have exact equivalents among them at inference time:

- `FusedBatchNormalization` differs from `BatchNormalization` only in how it trains;
- `MaxBlurPool2D` is a 2x2 max pool with stride 1 followed by a fixed 3x3 binomial depthwise
  convolution with stride 2 (zero padding of one pixel on each side);
- `MaxBlurPool3D` is a max pool with stride 1, a zero padding of one voxel on each pooled axis and two
  average pools (window 2, stride 1, then stride 2 on the pooled axes): the Keras layers of the very
  operations its `call` makes;
- `ChannelSlice(c, c + 1)` is a 1x1 convolution whose kernel is the one-hot vector of channel c.

Every layer is also set to float32, so a model trained under mixed precision exports in full precision.
"""

from __future__ import annotations

import keras
import numpy as np

from zoo.layers import ChannelSlice, FusedBatchNormalization, MaxBlurPool2D, MaxBlurPool3D


def _float32_config(layer: keras.layers.Layer) -> dict:
    config = layer.get_config()
    config["dtype"] = "float32"
    return config


def _replacement(layer: keras.layers.Layer) -> keras.layers.Layer:
    """Keras's own layer (or stack of layers) computing what `layer` computes at inference."""
    config = _float32_config(layer)
    if isinstance(layer, FusedBatchNormalization):
        return keras.layers.BatchNormalization.from_config(config)
    if isinstance(layer, MaxBlurPool2D):
        return keras.Sequential(
            [
                keras.layers.MaxPooling2D(2, strides=1, padding="same", dtype="float32"),
                keras.layers.ZeroPadding2D(1, dtype="float32"),
                keras.layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False, dtype="float32"),
            ],
            name=layer.name,
        )
    if isinstance(layer, MaxBlurPool3D):
        pool = layer.pool_size
        return keras.Sequential(
            [
                keras.layers.MaxPooling3D(pool, strides=1, padding="same", dtype="float32"),
                keras.layers.ZeroPadding3D(tuple((p - 1, p - 1) for p in pool), dtype="float32"),
                keras.layers.AveragePooling3D(pool, strides=1, padding="valid", dtype="float32"),
                keras.layers.AveragePooling3D(pool, strides=pool, padding="valid", dtype="float32"),
            ],
            name=layer.name,
        )
    if isinstance(layer, ChannelSlice):
        convolution = keras.layers.Conv3D if len(layer.input.shape) == 5 else keras.layers.Conv2D
        return convolution(
            layer.stop - layer.start, 1, use_bias=False, name=layer.name, dtype="float32", trainable=False
        )
    return layer.__class__.from_config(config)


def _replacement_weights(layer: keras.layers.Layer, channels: int) -> list[np.ndarray]:
    if isinstance(layer, MaxBlurPool2D):
        return [MaxBlurPool2D.blur_kernel(channels)]
    if isinstance(layer, ChannelSlice):
        # A 1x1 (2D) or 1x1x1 (3D) kernel: one-hot along the input channels.
        spatial = (1,) * (len(layer.input.shape) - 2)
        kernel = np.zeros((*spatial, channels, layer.stop - layer.start), np.float32)
        for out, channel in enumerate(range(layer.start, layer.stop)):
            kernel[..., channel, out] = 1.0
        return [kernel]
    raise TypeError(f"{type(layer).__name__} has no replacement weights")


def portable_model(model: keras.Model) -> keras.Model:
    """Float32 copy of a functional `model` with the project's custom layers replaced (see module doc)."""
    clone = keras.models.clone_model(model, clone_function=_replacement)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, (MaxBlurPool2D, ChannelSlice)):
            weights = _replacement_weights(layer, layer.input.shape[-1])
        else:
            weights = [np.asarray(w, np.float32) for w in layer.get_weights()]
        clone.get_layer(layer.name).set_weights(weights)
    return clone
