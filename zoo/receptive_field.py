"""Receptive field, halo and size step of a fully convolutional model, derived from its layers.

Tiled prediction needs to know how far the context of one output pixel reaches (the halo: tiles must
overlap by at least that much to give the same result as the whole image), and how the input size must be
aligned (the step: the product of all down-sampling strides). bioimage.io export declares both.

The walk follows the functional graph and keeps, for every tensor, its scale (input pixels per pixel of
that tensor) and the interval of input offsets that can influence one of its pixels. Keeping the interval
(rather than a symmetric size) matters: even kernels under `same` padding and up-sampling reach further to
one side than to the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from zoo.layers import ChannelSlice

# Layers that act on each pixel independently (or only along channels) leave the footprint unchanged.
_POINTWISE = (
    keras.layers.InputLayer,
    keras.layers.Activation,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Softmax,
    keras.layers.Rescaling,
    ChannelSlice,
)
# Layers that combine several tensors element by element (export.layout reuses them).
ELEMENTWISE_MERGE = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
)
_MERGE = (keras.layers.Concatenate, *ELEMENTWISE_MERGE)


@dataclass(frozen=True)
class Footprint:
    """Where the input pixels that influence one pixel of a tensor lie.

    A pixel ``p`` of a tensor at ``scale`` (input pixels per tensor pixel) depends on the input pixels
    ``p * scale + low ... p * scale + high`` (inclusive).
    """

    scale: float
    low: float
    high: float


@dataclass(frozen=True)
class Geometry:
    """Spatial facts of a model that tiling and export rely on.

    Attributes:
        step: input height and width must be multiples of it (product of the down-sampling strides).
        receptive_field: side of the square of input pixels that can influence one output pixel.
        halo: context one output pixel needs on each side, ``max(-low, high)`` in input pixels.
        border: the halo rounded up so that twice it is a multiple of the step. Prediction mirrors this
            many pixels around an image (so pixels at the edge see context like any other), and an
            exported package declares it as its halo: bioimageio.core's tiling then pads and aligns the
            image exactly as the project's own prediction does.
    """

    step: int
    receptive_field: int
    halo: int
    border: int


def _conv_reach(kernel: int, dilation: int) -> tuple[int, int]:
    # `same` padding with an even kernel puts the extra pixel on the right/bottom (TensorFlow convention).
    span = (kernel - 1) * dilation
    return -(span // 2), span - span // 2


def _layer_footprint(layer: keras.layers.Layer, inputs: list[Footprint]) -> Footprint:
    if isinstance(layer, _MERGE):
        scales = {f.scale for f in inputs}
        if len(scales) != 1:
            raise ValueError(f"layer {layer.name!r} merges tensors of different scales {sorted(scales)}")
        return Footprint(inputs[0].scale, min(f.low for f in inputs), max(f.high for f in inputs))
    (fp,) = inputs
    if isinstance(layer, _POINTWISE):
        return fp
    custom = getattr(layer, "spatial_footprint", None)
    if custom is not None:
        # A custom layer describes itself as (kernel reach low, high in its input pixels, stride).
        low, high, stride = custom()
        return Footprint(fp.scale * stride, fp.low + low * fp.scale, fp.high + high * fp.scale)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kernel, stride = layer.kernel_size[0], layer.strides[0]
        if (
            kernel != stride
            or layer.strides[0] != layer.strides[1]
            or layer.kernel_size[0] != layer.kernel_size[1]
        ):
            raise NotImplementedError(
                f"layer {layer.name!r}: only square transposed convolutions with "
                "kernel_size == strides are supported"
            )
        return _upsample(fp, stride)
    if isinstance(layer, keras.layers.UpSampling2D):
        if layer.size[0] != layer.size[1]:
            raise NotImplementedError(f"layer {layer.name!r}: only square up-sampling is supported")
        return _upsample(fp, layer.size[0])
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        if layer.padding != "same" and max(layer.kernel_size) > 1:
            raise NotImplementedError(f"layer {layer.name!r}: only `same` padding keeps the geometry simple")
        low, high = _conv_reach(layer.kernel_size[0], layer.dilation_rate[0])
        stride = layer.strides[0]
        return Footprint(fp.scale * stride, fp.low + low * fp.scale, fp.high + high * fp.scale)
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        pool, stride = layer.pool_size[0], layer.strides[0]
        if pool != stride:
            raise NotImplementedError(
                f"layer {layer.name!r}: only pooling with pool_size == strides is supported"
            )
        # Output pixel q covers input pixels stride*q ... stride*q + pool - 1 of the previous tensor.
        return Footprint(fp.scale * stride, fp.low, fp.high + (pool - 1) * fp.scale)
    raise NotImplementedError(f"receptive field of layer {layer.name!r} ({type(layer).__name__}) is unknown")


def _upsample(fp: Footprint, factor: int) -> Footprint:
    # Output pixel p reads input pixel floor(p / factor): up to (factor - 1) fine pixels to its left.
    scale = fp.scale / factor
    return Footprint(scale, fp.low - (factor - 1) * scale, fp.high)


def walk(model: keras.Model):
    """Yield `(layer, node, input footprints, output footprint)` for every call of a layer in the
    functional graph of `model`, in order (the input layer's call has no input footprints)."""
    footprints: dict[int, Footprint] = {}
    for operation in model.operations:
        for node in operation._inbound_nodes:
            if isinstance(operation, keras.layers.InputLayer):
                inputs, result = [], Footprint(1.0, 0.0, 0.0)
            else:
                inputs = [footprints[id(t)] for t in node.input_tensors if id(t) in footprints]
                if not inputs:
                    continue  # a node of this layer that belongs to another model
                result = _layer_footprint(operation, inputs)
            for tensor in node.output_tensors:
                footprints[id(tensor)] = result
            yield operation, node, inputs, result


def model_geometry(model: keras.Model) -> Geometry:
    """Step, receptive field and halo of a single-input, single-output functional model."""
    max_scale = 1.0
    final = None
    (output,) = model.outputs
    for _, node, _, result in walk(model):
        max_scale = max(max_scale, result.scale)
        if any(t is output for t in node.output_tensors):
            final = result
    if final.scale != 1.0:
        raise ValueError(f"model {model.name!r} output is at scale {final.scale}, not the input's")
    halo = math.ceil(max(-final.low, final.high))
    step = round(max_scale)
    unit = max(step // 2, 1)
    return Geometry(
        step=step,
        receptive_field=round(final.high - final.low) + 1,
        halo=halo,
        border=math.ceil(halo / unit) * unit,
    )
