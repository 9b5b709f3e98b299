"""Tests for the Noise2Void denoisers of zoo.n2v ("n2v" and "n2v2") and the MaxBlurPool2D layer of N2V2.

The checks are behavioural where possible: weights are zeroed or scaled and the output is compared with
what the architecture promises (a linear image-to-image network, residual on request; N2V2 without the
top-level skip).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import zoo
from zoo.layers import MaxBlurPool2D

DENOISERS = ["n2v", "n2v2"]


def random_images(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    # An eager call: for a tiny model it is faster than tracing `predict`.
    return keras.ops.convert_to_numpy(model(images, training=False))


def layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


def zero_weights(layer: keras.layers.Layer) -> None:
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])


def blur_pool_reference(image: np.ndarray) -> np.ndarray:
    """Max-blur-pooling of a (Y, X) image, written out in numpy: 2x2 max at stride 1 (the window cut at
    the bottom/right edge), then the 3x3 binomial blur centred on every even pixel, zero outside."""
    padded = np.pad(image, ((0, 1), (0, 1)), mode="edge")
    maxed = np.maximum.reduce([padded[:-1, :-1], padded[1:, :-1], padded[:-1, 1:], padded[1:, 1:]])
    taps = np.array([1.0, 2.0, 1.0]) / 4.0
    kernel = np.outer(taps, taps)
    blurred = np.pad(maxed, 1)
    out = np.zeros(((image.shape[0] + 1) // 2, (image.shape[1] + 1) // 2))
    for qy in range(out.shape[0]):
        for qx in range(out.shape[1]):
            out[qy, qx] = (blurred[2 * qy : 2 * qy + 3, 2 * qx : 2 * qx + 3] * kernel).sum()
    return out


# === Both denoisers ===


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", DENOISERS)
def test_output_has_the_shape_and_channels_of_the_input(name, channels, tiny_model):
    model = tiny_model(name, input_channels=channels)
    assert tuple(model.inputs[0].shape) == (None, None, None, channels)
    assert tuple(model.outputs[0].shape) == (None, None, None, channels)
    images = random_images((2, 16, 24, channels))
    assert predict(model, images).shape == images.shape


@pytest.mark.parametrize("name", DENOISERS)
def test_by_default_there_is_no_residual_path(name, tiny_model):
    model = tiny_model(name, input_channels=2)
    assert not layers_of(model, keras.layers.Add)
    zero_weights(model.get_layer("head_conv"))
    np.testing.assert_array_equal(predict(model, random_images((2, 16, 16, 2))), 0.0)


@pytest.mark.parametrize("name", DENOISERS)
def test_residual_model_whose_last_convolution_is_zeroed_returns_its_input_exactly(name, tiny_model):
    model = tiny_model(name, input_channels=2, residual=True)
    images = random_images((2, 16, 16, 2))
    assert not np.allclose(predict(model, images), images)  # the control: the network adds something
    zero_weights(model.get_layer("head_conv"))
    np.testing.assert_array_equal(predict(model, images), images)


@pytest.mark.parametrize("name", DENOISERS)
def test_output_is_linear_in_the_last_convolution_and_unbounded(name, tiny_model):
    # A final activation (ReLU, sigmoid, ...) after the residual addition would break the proportionality.
    model = tiny_model(name, residual=True)
    images = random_images((2, 16, 16, 1))
    correction = predict(model, images) - images
    head = model.get_layer("head_conv")
    head.set_weights([2.0 * w for w in head.get_weights()])
    output = predict(model, images)
    np.testing.assert_allclose(output - images, 2.0 * correction, rtol=1e-4, atol=1e-5)
    # Unbounded: a head that adds a constant of either sign passes it through unchanged (the random
    # initial weights alone need not leave [0, 1], and differ between backends).
    kernel, bias = head.get_weights()
    for shift in (-5.0, 5.0):
        head.set_weights([np.zeros_like(kernel), np.full_like(bias, shift)])
        np.testing.assert_allclose(predict(model, images), images + shift, atol=1e-5)


@pytest.mark.parametrize("name", DENOISERS)
def test_batch_norm_follows_every_convolution_by_default_and_can_be_switched_off(name, tiny_model):
    depth = 2
    model = tiny_model(name, depth=depth)
    blocks = 2 * depth + 1  # encoder levels, bottleneck, decoder levels
    assert len(layers_of(model, keras.layers.BatchNormalization)) == 2 * blocks
    without = tiny_model(name, depth=depth, batch_norm=False)
    assert layers_of(without, keras.layers.BatchNormalization) == []


@pytest.mark.parametrize("name", DENOISERS)
def test_defaults_are_the_configuration_of_the_paper(name):
    model = zoo.build_model(name)
    assert model.name == name
    assert model.get_layer("enc0_conv1").filters == 32
    assert model.get_layer("enc0_conv1").kernel_size == (3, 3)
    downsampling = MaxBlurPool2D if name == "n2v2" else keras.layers.MaxPooling2D
    assert len(layers_of(model, downsampling)) == 2  # depth 2
    assert tuple(model.inputs[0].shape) == (None, None, None, 1)
    # The CSBDeep U-Net of the reference implementation: plain nearest-neighbour up-sampling and a
    # tapered decoder (bottleneck 128 -> 64, both decoder levels 32).
    assert not layers_of(model, keras.layers.Conv2DTranspose)
    filters = {layer.name: layer.filters for layer in layers_of(model, keras.layers.Conv2D)}
    assert (filters["bottleneck_conv1"], filters["bottleneck_conv2"]) == (128, 64)
    assert [filters[f"dec{level}_conv{i}"] for level in (1, 0) for i in (1, 2)] == [32, 32, 32, 32]


@pytest.mark.parametrize("name", DENOISERS)
def test_channels_are_denoised_jointly_by_one_network_by_default(name, tiny_model):
    # Output channel 0 sees input channel 1.
    model = tiny_model(name, input_channels=2)
    images = random_images((1, 16, 16, 2))
    changed = images.copy()
    changed[..., 1] += 1.0
    before, after = predict(model, images), predict(model, changed)
    assert np.abs(after[..., 0] - before[..., 0]).max() > 1e-3


@pytest.mark.parametrize("name", DENOISERS)
def test_independent_channels_get_one_network_each(name, tiny_model, tmp_path):
    model = tiny_model(name, input_channels=3, independent_channels=True)
    images = random_images((1, 16, 24, 3))
    changed = images.copy()
    changed[..., 1] += 1.0
    before, after = predict(model, images), predict(model, changed)
    # Only output channel 1 moves: channels 0 and 2 never see channel 1.
    np.testing.assert_array_equal(after[..., [0, 2]], before[..., [0, 2]])
    assert np.abs(after[..., 1] - before[..., 1]).max() > 1e-3
    # Three networks of the same architecture, each with its own weights, in one flat graph.
    assert {layer.name for layer in model.layers} >= {"ch0_head_conv", "ch1_head_conv", "ch2_head_conv"}
    assert not np.array_equal(
        model.get_layer("ch0_enc0_conv1").kernel, model.get_layer("ch1_enc0_conv1").kernel
    )
    # Tiling needs the same halo as a single network, and the file round trip keeps the branches.
    assert zoo.model_geometry(model) == zoo.model_geometry(tiny_model(name, input_channels=1))
    model.save(tmp_path / "m.keras")
    np.testing.assert_array_equal(predict(keras.models.load_model(tmp_path / "m.keras"), images), before)


# === N2V versus N2V2 ===


def test_n2v_downsamples_by_max_pooling_and_n2v2_by_max_blur_pooling(tiny_model):
    n2v, n2v2 = tiny_model("n2v"), tiny_model("n2v2")
    assert len(layers_of(n2v, keras.layers.MaxPooling2D)) == 2
    assert layers_of(n2v, MaxBlurPool2D) == []
    assert [layer.name for layer in layers_of(n2v2, MaxBlurPool2D)] == ["enc0_blurpool", "enc1_blurpool"]
    assert layers_of(n2v2, keras.layers.MaxPooling2D) == []


def test_only_n2v_concatenates_full_resolution_encoder_features_into_the_decoder(tiny_model):
    # The first decoder convolution reads the up-sampled features, plus the skip only where there is one.
    base = 4
    n2v, n2v2 = tiny_model("n2v"), tiny_model("n2v2")
    assert n2v.get_layer("dec0_conv1").kernel.shape[2] == 2 * base
    assert n2v2.get_layer("dec0_conv1").kernel.shape[2] == base
    # The deeper skip is kept in both.
    assert n2v2.get_layer("dec1_conv1").kernel.shape[2] == n2v.get_layer("dec1_conv1").kernel.shape[2]


@pytest.mark.parametrize(("name", "reaches_decoder"), [("n2v", True), ("n2v2", False)])
def test_with_the_up_sampling_path_cut_only_a_top_skip_carries_the_image(name, reaches_decoder, tiny_model):
    # Zero the last convolution below the top level (the up-sampling path then carries a constant):
    # what the top decoder level still sees of the image can only come from a full-resolution skip.
    # Without one, output - input is the same for every input.
    model = tiny_model(name, residual=True)
    zero_weights(model.get_layer("dec1_conv2"))
    first, second = random_images((1, 16, 16, 1), seed=1), random_images((1, 16, 16, 1), seed=2)
    difference = np.abs((predict(model, first) - first) - (predict(model, second) - second)).max()
    if reaches_decoder:
        assert difference > 1e-3
    else:
        assert difference < 1e-5


# === MaxBlurPool2D ===


@pytest.mark.parametrize(("height", "width"), [(8, 12), (7, 9)])
def test_max_blur_pool_halves_the_size_rounding_up(height, width):
    layer = MaxBlurPool2D()
    output = keras.ops.convert_to_numpy(layer(random_images((2, height, width, 3))))
    expected = (2, (height + 1) // 2, (width + 1) // 2, 3)
    assert output.shape == expected
    assert layer.compute_output_shape((2, height, width, 3)) == expected


def test_max_blur_pool_spreads_a_single_bright_pixel_where_max_pooling_does_not():
    image = np.zeros((1, 16, 16, 1), np.float32)
    image[0, 7, 6] = 1.0
    blurred = keras.ops.convert_to_numpy(MaxBlurPool2D()(image))[0, ..., 0]
    pooled = keras.ops.convert_to_numpy(keras.layers.MaxPooling2D(2)(image))[0, ..., 0]
    assert np.count_nonzero(pooled) == 1 and pooled.max() == 1.0
    assert np.count_nonzero(blurred) > 1
    assert blurred.max() < 1.0
    # Away from the border the binomial blur keeps a quarter of the mass of the max-pooled image per
    # pixel: the bright pixel becomes a 2x2 bright block of the max, so the output sums to 1.
    assert blurred.sum() == pytest.approx(1.0, abs=1e-6)


def test_max_blur_pool_equals_max_then_binomial_blur_in_numpy():
    images = random_images((1, 12, 10, 2), seed=3)
    output = keras.ops.convert_to_numpy(MaxBlurPool2D()(images))[0]
    for channel in range(2):
        expected = blur_pool_reference(images[0, ..., channel].astype(np.float64))
        # The first row and column blur over the zero border; compare everything else.
        np.testing.assert_allclose(output[1:, 1:, channel], expected[1:, 1:], atol=1e-5)


def test_max_blur_pool_keeps_a_constant_image_constant_inside():
    images = np.full((1, 12, 16, 2), 3.5, np.float32)
    output = keras.ops.convert_to_numpy(MaxBlurPool2D()(images))
    np.testing.assert_allclose(output[:, 1:, 1:], 3.5, rtol=1e-6)


def test_max_blur_pool_has_no_weights_and_survives_a_keras_round_trip(tmp_path):
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, MaxBlurPool2D(name="pool")(inputs))
    assert model.weights == []
    model.save(tmp_path / "pool.keras")
    loaded = keras.saving.load_model(tmp_path / "pool.keras")
    images = random_images((1, 8, 8, 2))
    np.testing.assert_array_equal(predict(loaded, images), predict(model, images))
