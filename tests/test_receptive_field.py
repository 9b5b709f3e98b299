"""Tests for zoo.model_geometry: exact answers on handcrafted models, and on U-Nets the analytic footprint
checked against the gradient of the network itself."""

from __future__ import annotations

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tensorflow_only

import zoo
from zoo.layers import MaxBlurPool2D


def sequential_model(*layers: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input(shape=(None, None, 1), name="input")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def square(step: int, receptive_field: int, halo: int, border: int) -> zoo.Geometry:
    """The geometry of a 2D model whose two axes agree."""
    return zoo.Geometry(
        steps=(step, step),
        receptive_fields=(receptive_field,) * 2,
        halos=(halo, halo),
        borders=(border, border),
    )


# === Handcrafted models with known geometry ===


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (
            [keras.layers.Conv2D(1, 3, padding="same")],
            square(1, 3, 1, 1),
        ),
        (
            [keras.layers.Conv2D(1, 5, padding="same", dilation_rate=2)],
            square(1, 9, 4, 4),
        ),
        (
            [keras.layers.Conv2D(1, 3, padding="same"), keras.layers.Conv2D(1, 3, padding="same")],
            square(1, 5, 2, 2),
        ),
        # An even kernel under `same` padding reads one pixel to the right/bottom only.
        (
            [keras.layers.Conv2D(1, 2, padding="same")],
            square(1, 2, 1, 1),
        ),
        # A 1x1 convolution and pointwise layers see only their own pixel.
        (
            [keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization(), keras.layers.ReLU()],
            square(1, 1, 0, 0),
        ),
        # Output p reads pooled pixel p // 2, which covers input pixels 2 (p // 2) and 2 (p // 2) + 1.
        (
            [keras.layers.MaxPooling2D(2), keras.layers.UpSampling2D(2)],
            square(2, 3, 1, 1),
        ),
        (
            [keras.layers.MaxPooling2D(2), keras.layers.Conv2DTranspose(1, 2, strides=2, padding="same")],
            square(2, 3, 1, 1),
        ),
        (
            [keras.layers.MaxPooling2D(2), keras.layers.MaxPooling2D(2), keras.layers.UpSampling2D(4)],
            square(4, 7, 3, 4),
        ),
        # A stride-2 3x3 convolution reads -1..1 around 2q; up-sampling adds one pixel to the left.
        (
            [keras.layers.Conv2D(1, 3, strides=2, padding="same"), keras.layers.UpSampling2D(2)],
            square(2, 4, 2, 2),
        ),
        # Max-blur-pooling reads input pixels 2q - 1 .. 2q + 2 (its own `spatial_footprint`).
        (
            [MaxBlurPool2D(), keras.layers.UpSampling2D(2)],
            square(2, 5, 2, 2),
        ),
    ],
    ids=[
        "conv3",
        "conv5-dilation2",
        "two-conv3",
        "conv2-even",
        "pointwise",
        "maxpool-upsample",
        "maxpool-transpose",
        "two-maxpool-upsample4",
        "strided-conv-upsample",
        "blurpool-upsample",
    ],
)
def test_handcrafted_model_geometry(layers, expected):
    assert zoo.model_geometry(sequential_model(*layers)) == expected


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        # Each axis of a non-square kernel reaches as far as a square kernel of its side.
        (
            [keras.layers.Conv2D(1, (1, 5), padding="same")],
            zoo.Geometry(steps=(1, 1), receptive_fields=(1, 5), halos=(0, 2), borders=(0, 2)),
        ),
        # Pooling along x only: y keeps step 1 and gains no context.
        (
            [keras.layers.MaxPooling2D((1, 2)), keras.layers.UpSampling2D((1, 2))],
            zoo.Geometry(steps=(1, 2), receptive_fields=(1, 3), halos=(0, 1), borders=(0, 1)),
        ),
        (
            [
                keras.layers.Conv2D(1, 3, strides=(1, 2), padding="same"),
                keras.layers.Conv2DTranspose(1, (1, 2), strides=(1, 2), padding="same"),
            ],
            zoo.Geometry(steps=(1, 2), receptive_fields=(3, 4), halos=(1, 2), borders=(1, 2)),
        ),
    ],
    ids=["conv-1x5", "pool-x-only", "strided-x-only"],
)
def test_each_axis_is_walked_on_its_own(layers, expected):
    assert zoo.model_geometry(sequential_model(*layers)) == expected


class PerAxisLayer(keras.layers.Layer):
    """A layer that describes its footprint per axis (reads 2 pixels up, 1 to the right), as a custom
    layer may."""

    def call(self, inputs):
        return inputs

    def spatial_footprint(self):
        return ((-2, 0, 1), (0, 1, 1))


def test_custom_layer_footprint_may_be_given_per_axis():
    expected = zoo.Geometry(steps=(1, 1), receptive_fields=(3, 2), halos=(2, 1), borders=(2, 1))
    assert zoo.model_geometry(sequential_model(PerAxisLayer())) == expected


def test_scalar_properties_give_the_shared_value_of_a_square_model():
    geometry = square(4, 47, 23, 24)
    assert geometry.ndim == 2
    assert (geometry.step, geometry.receptive_field, geometry.halo, geometry.border) == (4, 47, 23, 24)


@pytest.mark.parametrize("field", ["step", "receptive_field", "halo", "border"])
def test_scalar_properties_refuse_a_model_whose_axes_differ(field):
    geometry = zoo.Geometry(steps=(1, 2), receptive_fields=(3, 5), halos=(1, 2), borders=(1, 3))
    with pytest.raises(ValueError, match=rf"{field}.*{re.escape(str(getattr(geometry, field + 's')))}"):
        getattr(geometry, field)


def test_merge_of_two_branches_takes_the_wider_footprint():
    inputs = keras.Input(shape=(None, None, 1), name="input")
    narrow = keras.layers.Conv2D(1, 3, padding="same", name="narrow")(inputs)
    wide = keras.layers.Conv2D(1, 7, padding="same", name="wide")(inputs)
    model = keras.Model(inputs, keras.layers.Add(name="add")([narrow, wide]))
    assert zoo.model_geometry(model) == square(1, 7, 3, 3)


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.ZeroPadding2D(1),
        keras.layers.Conv2D(1, 3, padding="valid"),
        keras.layers.MaxPooling2D(pool_size=3, strides=2, padding="same"),
        keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same"),
        keras.layers.MaxPooling2D(pool_size=(2, 3), strides=(2, 2)),
        keras.layers.Conv2DTranspose(1, (2, 3), strides=(2, 2), padding="same"),
        keras.layers.UpSampling2D(2, interpolation="bilinear"),
    ],
    ids=[
        "zero-padding",
        "valid-conv",
        "overlapping-pool",
        "transpose-kernel-not-stride",
        "pool-not-stride-on-one-axis",
        "transpose-kernel-not-stride-on-one-axis",
        "bilinear-upsampling",
    ],
)
def test_unsupported_layer_raises_not_implemented(layer):
    with pytest.raises(NotImplementedError, match=layer.name):
        zoo.model_geometry(sequential_model(layer))


def test_portable_copy_of_n2v2_has_the_geometry_of_the_model():
    # Its blur pools are stacks of Keras layers (zero padding, `valid` convolution) walked one by one.
    from export.portable import portable_model

    model = zoo.build_model("n2v2", depth=2, base_filters=2)
    assert zoo.model_geometry(portable_model(model)) == zoo.model_geometry(model)


def test_layer_stack_that_shifts_sizes_raises_not_implemented():
    stack = keras.Sequential(
        [keras.layers.ZeroPadding2D(1), keras.layers.MaxPooling2D(2, strides=1)], name="shifting_stack"
    )
    with pytest.raises(NotImplementedError, match="shifting_stack"):
        zoo.model_geometry(sequential_model(stack))


def test_output_at_another_scale_than_the_input_raises():
    with pytest.raises(ValueError, match="scale"):
        zoo.model_geometry(sequential_model(keras.layers.MaxPooling2D(2)))


# === U-Nets ===


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("downsampling", ["max", "blur"])
def test_unet_step_is_two_to_the_depth(depth, downsampling):
    model = zoo.build_model("unet", depth=depth, base_filters=2, downsampling=downsampling)
    assert zoo.model_geometry(model).step == 2**depth


def measured_offsets(model: keras.Model, geometry: zoo.Geometry) -> np.ndarray:
    """Offsets (dy and dx together) of every input pixel with a nonzero gradient of an output pixel.

    The footprint of the geometry is a union over an output pixel's position modulo the step (a pooling
    window is entered at a different place), so the output pixel takes every phase 0 .. step - 1 on the
    diagonal, each in several random images: a ReLU or a max pool blocks the gradient of some paths in
    one image, rarely of the same paths in all.
    """
    step = geometry.step
    size = math.ceil((2 * geometry.halo + 2 * step) / step) * step  # borders never clip the field
    centre = size // 2 // step * step
    phases = np.tile(np.arange(step), math.ceil(16 / step))
    images = np.random.default_rng(0).normal(size=(len(phases), size, size, 1)).astype(np.float32)
    selected = np.zeros((*images.shape[:3], model.outputs[0].shape[-1]), dtype=np.float32)
    selected[np.arange(len(phases)), centre + phases, centre + phases] = 1.0
    images = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(images)
        output_pixels = tf.reduce_sum(model(images, training=False) * selected)
    gradient = np.abs(tape.gradient(output_pixels, images).numpy()[..., 0])
    index, ys, xs = np.nonzero(gradient)
    return np.concatenate([ys - centre - phases[index], xs - centre - phases[index]])


@tensorflow_only
@pytest.mark.parametrize(
    ("depth", "upsampling", "downsampling"),
    [
        (1, "transpose", "max"),
        (1, "nearest", "max"),
        (2, "transpose", "max"),
        (2, "nearest", "max"),
        (3, "transpose", "max"),
        (3, "nearest", "max"),
        (2, "transpose", "blur"),
        (2, "nearest", "blur"),
    ],
)
def test_unet_footprint_matches_the_gradient_of_the_network(depth, upsampling, downsampling, tiny_model):
    # Without batch norm and with a linear output no channel is dead at random initialisation.
    model = tiny_model(
        depth=depth, upsampling=upsampling, downsampling=downsampling, batch_norm=False, final_activation=None
    )
    geometry = zoo.model_geometry(model)
    offsets = measured_offsets(model, geometry)
    # Upper bound: nothing outside the halo influences the output pixel.
    assert np.abs(offsets).max() <= geometry.halo
    assert offsets.max() - offsets.min() + 1 <= geometry.receptive_field
    # Tight: the influence reaches exactly as far as the analysis says.
    assert np.abs(offsets).max() == geometry.halo
    assert offsets.max() - offsets.min() + 1 == geometry.receptive_field
