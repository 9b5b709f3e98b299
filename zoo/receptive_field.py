"""Receptive field, halo and size step of a fully convolutional model, derived from its layers.

Tiled prediction needs to know how far the context of one output pixel reaches (the halo: tiles must
overlap by at least that much to give the same result as the whole image), and how the input size must be
aligned (the step: the product of all down-sampling strides). bioimage.io export declares both.

The walk follows the functional graph and keeps, for every tensor and every spatial axis ((z,) y, x), its
scale (input pixels per pixel of that tensor) and the interval of input offsets that can influence one of
its pixels. Keeping the interval (rather than a symmetric size) matters: even kernels under `same` padding
and up-sampling reach further to one side than to the other. Keeping each axis apart matters for volumes,
whose z axis is often pooled less (anisotropic voxels) and so needs less context than y and x.

A stack of layers used as one layer (`export.portable` replaces each custom layer by one) is walked through
its layers, so a portable copy has the geometry of its model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    keras.layers.SpatialDropout3D,
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


_CONVOLUTIONS = (
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)
_TRANSPOSED_CONVOLUTIONS = (keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_POOLINGS = (
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
_UPSAMPLINGS = (keras.layers.UpSampling2D, keras.layers.UpSampling3D)
_ZERO_PADDINGS = (keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)

# What a layer does along one axis: it reads its input pixels `stride * q + low ... stride * q + high`.
AxisReach = tuple[float, float, int]


@dataclass(frozen=True)
class Footprint:
    """Where the input pixels that influence one pixel of a tensor lie, per spatial axis ((z,) y, x).

    A pixel ``p`` of a tensor at ``scale[i]`` (input pixels per tensor pixel along axis i) depends on the
    input pixels ``p * scale[i] + low[i] ... p * scale[i] + high[i]`` (inclusive) along that axis.
    """

    scale: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


@dataclass(frozen=True)
class Geometry:
    """Spatial facts of a model that tiling and export rely on, one value per spatial axis ((z,) y, x).

    Attributes:
        steps: the input's sizes along each axis must be multiples of it (product of the down-sampling
            strides along that axis).
        receptive_fields: extent along each axis of the input pixels that can influence one output pixel.
        halos: context one output pixel needs on each side, ``max(-low, high)`` in input pixels.
        borders: the halo rounded up so that twice it is a multiple of half the step (at least 1) of the
            same axis. Prediction mirrors this many pixels around an image (so pixels at the edge see
            context like any other), and an exported package declares it as its halo: bioimageio.core's
            tiling then pads and aligns the image exactly as the project's own prediction does.

    The singular properties (`step`, `halo`, ...) give the value all axes share, for code that handles
    square 2D models only; they raise on a model whose axes differ, which must be read per axis.
    """

    steps: tuple[int, ...]
    receptive_fields: tuple[int, ...]
    halos: tuple[int, ...]
    borders: tuple[int, ...]

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 for images, 3 for volumes)."""
        return len(self.steps)

    @property
    def step(self) -> int:
        """The step of every axis; ValueError where they differ."""
        return _shared("step", self.steps)

    @property
    def receptive_field(self) -> int:
        """The receptive field of every axis; ValueError where they differ."""
        return _shared("receptive_field", self.receptive_fields)

    @property
    def halo(self) -> int:
        """The halo of every axis; ValueError where they differ."""
        return _shared("halo", self.halos)

    @property
    def border(self) -> int:
        """The border of every axis; ValueError where they differ."""
        return _shared("border", self.borders)


def _shared(name: str, values: tuple[int, ...]) -> int:
    if len(set(values)) != 1:
        raise ValueError(
            f"the model's {name} differs between its axes ((z,) y, x): {values}; read `{name}s` instead"
        )
    return values[0]


def _conv_reach(kernel: int, dilation: int) -> tuple[int, int]:
    # `same` padding with an even kernel puts the extra pixel on the right/bottom (TensorFlow convention).
    span = (kernel - 1) * dilation
    return -(span // 2), span - span // 2


def _strided(fp: Footprint, reaches: Sequence[AxisReach]) -> Footprint:
    """The footprint after a layer that reads, along each axis, `reaches[i]` of its input."""
    return Footprint(
        tuple(scale * stride for scale, (_, _, stride) in zip(fp.scale, reaches, strict=True)),
        tuple(
            low + reach * scale for low, scale, (reach, _, _) in zip(fp.low, fp.scale, reaches, strict=True)
        ),
        tuple(
            high + reach * scale
            for high, scale, (_, reach, _) in zip(fp.high, fp.scale, reaches, strict=True)
        ),
    )


def _upsampled(fp: Footprint, factors: Sequence[int]) -> Footprint:
    # Output pixel p reads input pixel floor(p / factor): up to (factor - 1) fine pixels to its left.
    scale = tuple(s / f for s, f in zip(fp.scale, factors, strict=True))
    low = tuple(lo - (f - 1) * s for lo, s, f in zip(fp.low, scale, factors, strict=True))
    return Footprint(scale, low, fp.high)


def _custom_reaches(layer: keras.layers.Layer, ndim: int) -> tuple[AxisReach, ...]:
    """A custom layer's own `spatial_footprint()`: one (low, high, stride) for every axis, or one per axis."""
    value = tuple(layer.spatial_footprint())
    if not isinstance(value[0], Sequence):
        return (value,) * ndim
    if len(value) != ndim:
        raise ValueError(
            f"layer {layer.name!r}: spatial_footprint() describes {len(value)} axes, its input has {ndim}"
        )
    return tuple(tuple(axis) for axis in value)


def _layer_footprint(layer: keras.layers.Layer, inputs: list[Footprint], input_shape: tuple) -> Footprint:
    if isinstance(layer, _MERGE):
        scales = {f.scale for f in inputs}
        if len(scales) != 1:
            raise ValueError(f"layer {layer.name!r} merges tensors of different scales {sorted(scales)}")
        return Footprint(
            inputs[0].scale,
            tuple(map(min, *(f.low for f in inputs))),
            tuple(map(max, *(f.high for f in inputs))),
        )
    (fp,) = inputs
    if isinstance(layer, keras.Sequential):
        return _stack_footprint(layer, fp, input_shape)
    return _single_layer_footprint(layer, fp, in_stack=False)


def _single_layer_footprint(layer: keras.layers.Layer, fp: Footprint, *, in_stack: bool) -> Footprint:
    """The footprint after `layer`. Inside a stack (`_stack_footprint`) it may pad and shrink sizes."""
    if isinstance(layer, _POINTWISE):
        return fp
    if hasattr(layer, "spatial_footprint"):
        return _strided(fp, _custom_reaches(layer, len(fp.scale)))
    if isinstance(layer, _TRANSPOSED_CONVOLUTIONS):
        if tuple(layer.kernel_size) != tuple(layer.strides):
            raise NotImplementedError(
                f"layer {layer.name!r}: only transposed convolutions with kernel_size == strides on every "
                "axis are supported"
            )
        return _upsampled(fp, layer.strides)
    if isinstance(layer, _UPSAMPLINGS):
        if getattr(layer, "interpolation", "nearest") != "nearest":
            raise NotImplementedError(
                f"layer {layer.name!r}: only nearest-neighbour up-sampling is supported"
            )
        return _upsampled(fp, layer.size)
    if isinstance(layer, _CONVOLUTIONS):
        if layer.padding == "valid" and in_stack:
            # Output q reads stride*q ... stride*q + (kernel - 1) * dilation.
            spans = [(k - 1) * d for k, d in zip(layer.kernel_size, layer.dilation_rate, strict=True)]
            return _strided(fp, [(0, span, s) for span, s in zip(spans, layer.strides, strict=True)])
        if layer.padding != "same" and max(layer.kernel_size) > 1:
            raise NotImplementedError(f"layer {layer.name!r}: only `same` padding keeps the geometry simple")
        return _strided(
            fp,
            [
                (*_conv_reach(kernel, dilation), stride)
                for kernel, dilation, stride in zip(
                    layer.kernel_size, layer.dilation_rate, layer.strides, strict=True
                )
            ],
        )
    if isinstance(layer, _POOLINGS):
        pools, strides = tuple(layer.pool_size), tuple(layer.strides)
        if in_stack and (layer.padding == "valid" or set(strides) == {1}):
            # `valid`: output q covers stride*q ... stride*q + pool - 1; `same` at stride 1 pads
            # (pool - 1) // 2 before (TensorFlow's convention, which Keras follows on every backend).
            before = [0 if layer.padding == "valid" else (pool - 1) // 2 for pool in pools]
            return _strided(fp, [(-b, p - 1 - b, s) for b, p, s in zip(before, pools, strides, strict=True)])
        if pools != strides:
            raise NotImplementedError(
                f"layer {layer.name!r}: only pooling with pool_size == strides on every axis is supported"
            )
        # Output pixel q covers input pixels stride*q ... stride*q + pool - 1 of the previous tensor.
        return _strided(fp, [(0, pool - 1, pool) for pool in pools])
    if isinstance(layer, _ZERO_PADDINGS) and in_stack:
        # Output pixel p is input pixel p - before.
        return _strided(fp, [(-before, -before, 1) for before, _ in layer.padding])
    raise NotImplementedError(f"receptive field of layer {layer.name!r} ({type(layer).__name__}) is unknown")


def _stack_footprint(stack: keras.Sequential, fp: Footprint, input_shape: tuple) -> Footprint:
    """The footprint after a stack of layers that stands in for one layer (`export.portable` replaces a
    custom layer by one), walked layer by layer.

    Inside a stack, zero padding and `valid` layers may shift and shrink sizes, as long as the stack as a
    whole keeps them as a `same` layer of its stride would: Keras's own shape inference checks that on
    inputs of two multiples of the stride.
    """
    result = fp
    for layer in stack.layers:
        result = _single_layer_footprint(layer, result, in_stack=True)
    strides = [out / scale for out, scale in zip(result.scale, fp.scale, strict=True)]
    for multiple in (3, 4):
        sizes = tuple(multiple * max(round(stride), 1) for stride in strides)
        expected = tuple(round(size / stride) for size, stride in zip(sizes, strides, strict=True))
        spec = stack.compute_output_spec(keras.KerasTensor((1, *sizes, input_shape[-1])))
        if tuple(spec.shape[1:-1]) != expected:
            raise NotImplementedError(
                f"layer {stack.name!r}: an input of sizes {sizes} gives {tuple(spec.shape[1:-1])}, not the "
                f"{expected} of a `same` layer of its strides"
            )
    return result


def walk(model: keras.Model):
    """Yield `(layer, node, input footprints, output footprint)` for every call of a layer in the
    functional graph of `model`, in order (the input layer's call has no input footprints)."""
    footprints: dict[int, Footprint] = {}
    for operation in model.operations:
        for node in operation._inbound_nodes:
            if isinstance(operation, keras.layers.InputLayer):
                ndim = len(node.output_tensors[0].shape) - 2  # less the batch and channel axes
                inputs, result = [], Footprint((1.0,) * ndim, (0.0,) * ndim, (0.0,) * ndim)
            else:
                inputs = [footprints[id(t)] for t in node.input_tensors if id(t) in footprints]
                if not inputs:
                    continue  # a node of this layer that belongs to another model
                result = _layer_footprint(operation, inputs, node.input_tensors[0].shape)
            for tensor in node.output_tensors:
                footprints[id(tensor)] = result
            yield operation, node, inputs, result


def model_geometry(model: keras.Model) -> Geometry:
    """Steps, receptive fields and halos, per spatial axis, of a single-input, single-output functional
    model."""
    max_scale: tuple[float, ...] | None = None
    final = None
    (output,) = model.outputs
    for _, node, _, result in walk(model):
        max_scale = result.scale if max_scale is None else tuple(map(max, max_scale, result.scale))
        if any(t is output for t in node.output_tensors):
            final = result
    if any(scale != 1.0 for scale in final.scale):
        raise ValueError(f"model {model.name!r} output is at scale {final.scale}, not the input's")
    halos = tuple(math.ceil(max(-low, high)) for low, high in zip(final.low, final.high, strict=True))
    steps = tuple(round(max(scale, 1.0)) for scale in max_scale)
    units = tuple(max(step // 2, 1) for step in steps)
    return Geometry(
        steps=steps,
        receptive_fields=tuple(
            round(high - low) + 1 for low, high in zip(final.low, final.high, strict=True)
        ),
        halos=halos,
        borders=tuple(math.ceil(halo / unit) * unit for halo, unit in zip(halos, units, strict=True)),
    )
