"""Floating-point operations of a fully convolutional model, counted from its layers.

A benchmark turns a measured time into a fraction of the machine's ceiling with this count. Only the
convolutions are counted (2 operations per multiply-add), which is where a U-Net spends its arithmetic;
batch norm, activations, pooling and concatenation add a few operations per activation and are left out,
so the fractions are slight underestimates.

The spatial size of every tensor follows from its scale relative to the input (the same walk as
`zoo.receptive_field`), so the count is exact for any input whose sides are multiples of the step.
"""

from __future__ import annotations

import keras

from zoo.receptive_field import walk


def conv_flops(model: keras.Model, height: int, width: int) -> int:
    """Operations of one forward pass of a (height, width) input (batch 1), counting convolutions."""
    total = 0.0
    for layer, node, inputs, result in walk(model):
        if inputs:
            total += _layer_flops(layer, node, inputs[0].scale, result.scale, height, width)
    return round(total)


def _layer_flops(layer, node, in_scale: float, out_scale: float, height: int, width: int) -> float:
    in_pixels = (height / in_scale) * (width / in_scale)
    out_pixels = (height / out_scale) * (width / out_scale)
    channels_in = node.input_tensors[0].shape[-1]
    channels_out = node.output_tensors[0].shape[-1]
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return 2.0 * in_pixels * kh * kw * channels_in * channels_out
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return 2.0 * out_pixels * kh * kw * channels_out
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return 2.0 * out_pixels * kh * kw * channels_in * channels_out / layer.groups
    if type(layer).__name__ == "MaxBlurPool2D":  # a fixed 3x3 depthwise blur after the max
        return 2.0 * out_pixels * 9 * channels_out
    return 0.0
