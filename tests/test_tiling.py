"""Tests for training.tiling: tiled prediction equals whole-image prediction, at odd sizes and many tiles."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import zoo
from training.tiling import pad_to_step, predict_whole, tiled_predict


@pytest.fixture(scope="module", params=["transpose", "nearest"])
def model(request, tiny_model) -> keras.Model:
    """A depth-2 U-Net (step 4, halo 23 or 26) with random batch-norm statistics."""
    return tiny_model(upsampling=request.param)


@pytest.fixture(scope="module")
def two_channel_model(tiny_model) -> keras.Model:
    return tiny_model(input_channels=2)


def odd_image(channels: int, shape: tuple[int, int] = (157, 203)) -> np.ndarray:
    return np.random.default_rng(channels).normal(size=(*shape, channels)).astype(np.float32)


@pytest.mark.parametrize("tile_size", [64, 96, 192])
def test_tiled_prediction_equals_whole_image_prediction(model, tile_size):
    # 157x203 pads to 160x204; tiles of 64 leave cores of 16 pixels (10 x 13 tiles), of 96 cores of 48
    # (4 x 5 tiles); 192 is a single tile down the image and two across it.
    geometry = zoo.model_geometry(model)
    image = odd_image(1)
    whole = predict_whole(model, image, step=geometry.step)
    tiled = tiled_predict(
        model, image, step=geometry.step, halo=geometry.halo, tile_size=tile_size, batch_size=16
    )
    assert np.abs(tiled - whole).max() < 1e-4


def test_tiled_prediction_of_a_two_channel_image_equals_whole_image_prediction(two_channel_model):
    geometry = zoo.model_geometry(two_channel_model)
    image = odd_image(2)
    whole = predict_whole(two_channel_model, image, step=geometry.step)
    tiled = tiled_predict(
        two_channel_model, image, step=geometry.step, halo=geometry.halo, tile_size=64, batch_size=16
    )
    assert np.abs(tiled - whole).max() < 1e-4


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_tiled_prediction_equals_whole_image_prediction_for_every_registered_model(name, tiny_model):
    model = tiny_model(name)
    geometry = zoo.model_geometry(model)
    image = odd_image(model.inputs[0].shape[-1])
    whole = predict_whole(model, image, step=geometry.step)
    tiled = tiled_predict(model, image, step=geometry.step, halo=geometry.halo, tile_size=96, batch_size=16)
    assert np.abs(tiled - whole).max() < 1e-4


def test_tiled_prediction_with_too_small_a_halo_differs(model):
    # The negative control: without enough overlap the tile borders show, so the tests above can fail.
    geometry = zoo.model_geometry(model)
    image = odd_image(1)
    whole = predict_whole(model, image, step=geometry.step)
    tiled = tiled_predict(
        model, image, step=geometry.step, halo=geometry.halo // 4, tile_size=64, batch_size=16
    )
    assert np.abs(tiled - whole).max() > 1e-3


def test_tiled_prediction_has_the_input_size_and_the_model_channels(model):
    geometry = zoo.model_geometry(model)
    tiled = tiled_predict(model, odd_image(1), step=geometry.step, halo=geometry.halo, tile_size=96)
    assert tiled.shape == (157, 203, 3)
    assert tiled.dtype == np.float32


def test_whole_image_prediction_has_the_input_size(model):
    whole = predict_whole(model, odd_image(1, (21, 34)), step=zoo.model_geometry(model).step)
    assert whole.shape == (21, 34, 3)
    assert whole.dtype == np.float32


def test_image_smaller_than_a_tile_is_predicted_whole(model):
    geometry = zoo.model_geometry(model)
    image = odd_image(1, (30, 45))
    tiled = tiled_predict(model, image, step=geometry.step, halo=geometry.halo, tile_size=512)
    np.testing.assert_array_equal(tiled, predict_whole(model, image, step=geometry.step))


def test_pad_to_step_mirrors_at_the_bottom_and_right():
    image = np.arange(5 * 6, dtype=np.float32).reshape(5, 6, 1)
    padded = pad_to_step(image, 4)
    assert padded.shape == (8, 8, 1)
    np.testing.assert_array_equal(padded[:5, :6], image)
    # Symmetric mirroring repeats the edge pixel: row 5 is row 4, row 6 is row 3, ...
    np.testing.assert_array_equal(padded[5:8, :6], image[[4, 3, 2], :])
    np.testing.assert_array_equal(padded[:5, 6:8], image[:, [5, 4]])


def test_pad_to_step_leaves_an_aligned_image_unchanged():
    image = np.random.default_rng(0).normal(size=(8, 12, 2))
    np.testing.assert_array_equal(pad_to_step(image, 4), image)


@pytest.mark.parametrize("tile_size", [64, 96])
def test_tiled_prediction_with_a_mirrored_border_equals_whole_image_prediction_of_the_mirrored_image(
    model, tile_size
):
    geometry = zoo.model_geometry(model)
    image = odd_image(1)
    border = geometry.border
    mirrored = np.pad(image, ((border, border), (border, border), (0, 0)), mode="symmetric")
    expected = predict_whole(model, mirrored, step=geometry.step)[border:-border, border:-border]
    whole = predict_whole(model, image, step=geometry.step, border=border)
    tiled = tiled_predict(
        model,
        image,
        step=geometry.step,
        halo=geometry.halo,
        tile_size=tile_size,
        batch_size=16,
        border=border,
    )
    assert whole.shape == tiled.shape == image.shape[:2] + whole.shape[-1:]
    np.testing.assert_array_equal(whole, expected)
    assert np.abs(tiled - expected).max() < 1e-4
    # Without the border, edge pixels see the network's zero padding instead: a different result.
    assert np.abs(predict_whole(model, image, step=geometry.step) - whole).max() > 1e-3
