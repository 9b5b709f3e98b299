"""Floating-point operations of a fully convolutional model, counted from its layers.

A benchmark turns a measured time into a fraction of the machine's ceiling with this count. Only the
convolutions are counted (2 operations per multiply-add), which is where a U-Net spends its arithmetic;
batch norm, activations, pooling and concatenation add a few operations per activation and are left out,
so the fractions are slight underestimates. Max-blur-pooling's fixed blur counts as the depthwise
convolution it is (in 3D it runs as two average pools, but does the same arithmetic).

The spatial size of every tensor follows from its scale relative to the input along each axis (the same
walk as `zoo.receptive_field`), so the count is exact for any input whose sides are multiples of the steps.
"""

from __future__ import annotations

import math

import keras

from zoo.layers import MaxBlurPool2D, MaxBlurPool3D
from zoo.receptive_field import walk

_TRANSPOSED = (keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.Conv3D)


def conv_flops(model: keras.Model, *shape: int) -> int:
    """Operations of one forward pass of an input of spatial `shape` ((depth,) height, width; batch 1),
    counting convolutions."""
    total = 0.0
    for layer, node, inputs, result in walk(model):
        if inputs:
            if len(shape) != len(result.scale):
                raise ValueError(
                    f"model {model.name!r} has {len(result.scale)} spatial axes, got shape {shape}"
                )
            in_pixels = math.prod(n / s for n, s in zip(shape, inputs[0].scale, strict=True))
            out_pixels = math.prod(n / s for n, s in zip(shape, result.scale, strict=True))
            total += _layer_flops(layer, node, in_pixels, out_pixels)
    return round(total)


def _layer_flops(layer, node, in_pixels: float, out_pixels: float) -> float:
    channels_in = node.input_tensors[0].shape[-1]
    channels_out = node.output_tensors[0].shape[-1]
    if isinstance(layer, _TRANSPOSED):
        return 2.0 * in_pixels * math.prod(layer.kernel_size) * channels_in * channels_out
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2.0 * out_pixels * math.prod(layer.kernel_size) * channels_out
    if isinstance(layer, _CONVOLUTIONS):
        return 2.0 * out_pixels * math.prod(layer.kernel_size) * channels_in * channels_out / layer.groups
    if isinstance(layer, MaxBlurPool2D):  # a fixed 3x3 depthwise blur after the max
        return 2.0 * out_pixels * 9 * channels_out
    if isinstance(layer, MaxBlurPool3D):  # [1, 2, 1] along each pooled axis
        return 2.0 * out_pixels * 3 ** sum(p == 2 for p in layer.pool_size) * channels_out
    return 0.0
