"""Tests for training.tiling: tiled prediction equals whole-image prediction, at odd sizes and many tiles."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from scipy import ndimage

import zoo
from training.tiling import (
    _axis_tiles,
    mirror_border,
    pad_to_step,
    predict_whole,
    predict_with_geometry,
    tiled_predict,
)


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


def test_predict_with_geometry_mirrors_the_border_and_widens_small_tiles_to_eight_halos(model):
    geometry = zoo.model_geometry(model)
    halo = math.ceil(geometry.halo / geometry.step) * geometry.step  # 24 or 28
    # With its mirrored border the image is 8 halos + 8 pixels high and 14 halos + 4 wide: tiles of at
    # most 8 halos need 2 rows and 3 columns of them (tiles of 9 halos would need 1 and 2).
    shape = (8 * halo + 8 - 2 * geometry.border, 14 * halo + 4 - 2 * geometry.border)
    image = odd_image(1, shape=shape)
    batches = []
    predict = recording(model.predict_on_batch, batches)
    expected = predict_whole(model, image, step=geometry.step, border=geometry.border)
    got = predict_with_geometry(predict, image, geometry, tile_size=16)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
    # Six tiles of at most 8 halos (asked for 16 pixels), in batches of 4 by default.
    assert [b[0] for b in batches] == [4, 2]
    assert all(2 * halo < side <= 8 * halo for b in batches for side in b[1:3])
    batches.clear()
    predict_with_geometry(predict, image, geometry, tile_size=16, batch_size=5)
    assert [b[0] for b in batches] == [5, 1]


# The tests below stand in a plain function for the model: tiled_predict accepts any function from a
# (B, Y, X, C) batch to an output, and a numpy function is exact and fast.

BOX_RADIUS = 8  # box_sum's receptive field: each output pixel sees 8 pixels on each side


def box_sum(batch: np.ndarray) -> np.ndarray:
    """Translation-equivariant with a known receptive field: the sum of each channel over a 17x17 box,
    zero outside the input (like a network's zero padding), and the sum of those over the channels."""
    size = 2 * BOX_RADIUS + 1
    boxed = ndimage.correlate(
        np.asarray(batch, dtype=np.float64), np.ones((1, size, size, 1)), mode="constant", cval=0.0
    )
    return np.concatenate([boxed, boxed.sum(axis=-1, keepdims=True)], axis=-1).astype(np.float32)


def recording(predict, shapes: list):
    def record(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return predict(batch)

    return record


def integer_image(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Small integers as float32: their box sums are exact in any order of summation."""
    return np.random.default_rng(seed).integers(-20, 20, size=shape).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "padded_shape"), [((8, 6, 1), (8, 8, 1)), ((5, 8, 1), (8, 8, 1)), ((5, 6, 2), (8, 8, 2))]
)
def test_pad_to_step_pads_each_axis_that_is_not_aligned_even_when_the_other_is(shape, padded_shape):
    image = integer_image(shape)
    padded = pad_to_step(image, 4)
    assert padded.shape == padded_shape
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)


def test_mirror_border_mirrors_every_side_and_keeps_the_channels():
    image = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
    mirrored = mirror_border(image, 2)
    assert mirrored.shape == (7, 8, 2)
    np.testing.assert_array_equal(mirrored[2:5, 2:6], image)
    # Symmetric mirroring repeats the edge pixel: rows 1, 0 above, rows 2, 1 below; likewise across.
    np.testing.assert_array_equal(mirrored[:, 2:6], image[[1, 0, 0, 1, 2, 2, 1]])
    np.testing.assert_array_equal(mirrored[2:5], image[:, [1, 0, 0, 1, 2, 3, 3, 2]])
    assert mirror_border(image, 0) is image


@pytest.mark.parametrize(
    ("length", "max_tile", "halo", "step", "expected"),
    [
        # An axis that fits in one tile, even exactly, is one tile.
        (40, 64, 8, 4, [(0, 40, 0, 40)]),
        (64, 64, 8, 4, [(0, 64, 0, 64)]),
        # Two tiles of 64 would do; tiles of 60 (the smallest multiple of 4 with 100 + 2 * 8 <= 2 * 60)
        # also do, with the cores meeting 8 pixels inside the second tile's start.
        (100, 64, 8, 4, [(0, 60, 0, 48), (40, 100, 48, 100)]),
        # Without a halo the tiles just abut: 2 tiles of 52 (50 rounded up to 4), the last one shifted
        # back to end at the image edge.
        (100, 64, 0, 4, [(0, 52, 0, 48), (48, 100, 48, 100)]),
        # Three tiles of 52 (152 / 3 rounded up to 4), 36 apart; the last one moved back to end at 120.
        (120, 64, 8, 4, [(0, 52, 0, 44), (36, 88, 44, 76), (68, 120, 76, 120)]),
        # Tiles of 64 with a halo of 24 have cores of 16: 7 tiles, 16 apart.
        (
            160,
            64,
            24,
            4,
            [
                (16 * i, 16 * i + 64, 0 if i == 0 else 16 * i + 24, 160 if i == 6 else 16 * i + 40)
                for i in range(7)
            ],
        ),
    ],
)
def test_axis_tiles_of_literal_cases(length, max_tile, halo, step, expected):
    assert _axis_tiles(length, max_tile, halo, step) == expected


@pytest.mark.parametrize("step", [1, 4, 16])
def test_axis_tiles_are_as_few_and_small_as_fit_and_their_cores_partition_the_axis(step):
    # Aligned as tiled_predict aligns them: the length, the halo and the largest tile are multiples of the
    # step, and the largest tile holds more than two halos.
    for halo in (0, step, 3 * step):
        for max_tile in (2 * halo + step, 2 * halo + 3 * step, 2 * halo + 10 * step):
            for length in range(step, 30 * step + 1, step):
                tiles = _axis_tiles(length, max_tile, halo, step)
                case = (length, max_tile, halo, step, tiles)
                count, tile = len(tiles), tiles[0][1] - tiles[0][0]
                assert tiles[0][0] == 0 and tiles[-1][1] == length, case
                assert all(stop - start == tile <= max_tile for start, stop, _, _ in tiles), case
                assert all(start % step == 0 for start, _, _, _ in tiles), case
                # The cores cover the axis, in order, once each.
                cores = [(core_start, core_stop) for _, _, core_start, core_stop in tiles]
                assert [start for start, _ in cores] == [0] + [stop for _, stop in cores[:-1]], case
                assert all(start <= core[0] < core[1] <= stop for (start, stop, *core) in tiles), case
                # Each core stays `halo` away from the tile edges inside the image.
                assert all(core_start - start >= halo for start, _, core_start, _ in tiles[1:]), case
                assert all(stop - core_stop >= halo for _, stop, _, core_stop in tiles[:-1]), case
                # n tiles of size t whose neighbours overlap by two halos cover n * t - 2 * halo * (n - 1):
                # one tile fewer of the largest size, or as many one step smaller, would not reach.
                if count > 1:
                    assert (count - 1) * max_tile - 2 * halo * (count - 2) < length, case
                    assert count * (tile - step) - 2 * halo * (count - 1) < length, case
                else:
                    assert tile == length <= max_tile, case


def test_tiled_prediction_of_a_box_sum_equals_the_box_sum_of_the_whole_image():
    # 45x70 pads (mirrored) to 48x72. The halo of 6 rounds up to 8, the box's radius; tiles of 24 then
    # keep cores of 8: 4 tiles down and 7 across, 28 in all, fed 5 at a time.
    image = integer_image((45, 70, 2))
    aligned = np.pad(image, ((0, 3), (0, 2), (0, 0)), mode="symmetric")
    expected = box_sum(aligned[np.newaxis])[0, :45, :70]
    shapes = []
    tiled = tiled_predict(recording(box_sum, shapes), image, step=4, halo=6, tile_size=24, batch_size=5)
    assert tiled.shape == (45, 70, 3)
    assert tiled.dtype == np.float32
    np.testing.assert_array_equal(tiled, expected)
    assert shapes == [(5, 24, 24, 2)] * 5 + [(3, 24, 24, 2)]


def test_tiled_prediction_of_a_box_sum_with_too_small_a_halo_differs():
    # The negative control: cores only 4 pixels from the tile edges miss part of the box.
    image = integer_image((45, 70, 2))
    expected = box_sum(np.pad(image, ((0, 3), (0, 2), (0, 0)), mode="symmetric")[np.newaxis])[0, :45, :70]
    tiled = tiled_predict(box_sum, image, step=4, halo=4, tile_size=24, batch_size=5)
    assert np.abs(tiled - expected).max() > 0


def test_tiles_hold_at_least_two_aligned_halos_and_a_step():
    # Tiles of 4 would be all halo: they grow to 2 * 8 + 4 = 20, with cores of one step (4 pixels).
    image = integer_image((40, 40, 1))
    shapes = []
    tiled = tiled_predict(recording(box_sum, shapes), image, step=4, halo=8, tile_size=4, batch_size=36)
    np.testing.assert_array_equal(tiled, box_sum(image[np.newaxis])[0])
    assert shapes == [(36, 20, 20, 1)]  # 6 x 6 tiles


@pytest.mark.parametrize(
    ("shape", "expected_shapes"),
    [
        ((40, 40, 1), [(1, 40, 40, 1)]),  # one tile: predicted whole
        ((100, 40, 1), [(2, 60, 40, 1)]),  # two tiles down, the whole width across
        ((40, 100, 1), [(2, 40, 60, 1)]),  # the whole height down, two tiles across
        ((100, 100, 1), [(4, 60, 60, 1)]),
    ],
)
def test_image_is_predicted_whole_only_if_it_fits_in_one_tile_both_ways(shape, expected_shapes):
    image = integer_image(shape)
    shapes = []
    tiled = tiled_predict(recording(box_sum, shapes), image, step=4, halo=8, tile_size=64, batch_size=4)
    np.testing.assert_array_equal(tiled, box_sum(image[np.newaxis])[0])
    assert shapes == expected_shapes


def test_default_tiles_are_at_most_512_pixels_fed_four_at_a_time():
    # 512 across fits in one tile; 516 (the next multiple of the step) is split into two tiles of 264.
    shapes = []
    tiled_predict(recording(box_sum, shapes), integer_image((8, 512, 1)), step=4, halo=4)
    assert shapes == [(1, 8, 512, 1)]
    shapes.clear()
    tiled_predict(recording(box_sum, shapes), integer_image((8, 516, 1)), step=4, halo=4)
    assert shapes == [(2, 8, 264, 1)]
    # 12x32 in tiles of 12 (halo 4, step 4): 1 x 6 tiles, by default 4 per call.
    shapes.clear()
    image = integer_image((12, 32, 1))
    tiled = tiled_predict(recording(box_sum, shapes), image, step=4, halo=4, tile_size=12)
    assert shapes == [(4, 12, 12, 1), (2, 12, 12, 1)]
    assert tiled.shape == (12, 32, 2)


def test_tiled_prediction_with_a_border_keeps_the_tile_size_and_the_batch_size():
    # 30x50 with a mirrored border of 4 is 38x58, padded to 40x60: 3 x 6 tiles of 24, 3 per call.
    image = integer_image((30, 50, 1))
    mirrored = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="symmetric")
    aligned = np.pad(mirrored, ((0, 2), (0, 2), (0, 0)), mode="symmetric")
    expected = box_sum(aligned[np.newaxis])[0, 4:34, 4:54]
    shapes = []
    tiled = tiled_predict(
        recording(box_sum, shapes), image, step=4, halo=8, tile_size=24, batch_size=3, border=4
    )
    np.testing.assert_array_equal(tiled, expected)
    assert shapes == [(3, 24, 24, 1)] * 6


def test_float64_predictions_are_returned_as_float32():
    image = integer_image((30, 45, 1))

    def halve(batch: np.ndarray) -> np.ndarray:
        return batch.astype(np.float64) / 2

    whole = predict_whole(halve, image, step=4)
    tiled = tiled_predict(halve, image, step=4, halo=4, tile_size=64)  # one tile: predicted whole
    many = tiled_predict(halve, image, step=4, halo=4, tile_size=16)
    for output in (whole, tiled, many):
        assert output.dtype == np.float32
        np.testing.assert_array_equal(output, image / 2)


def test_a_predictor_returning_the_wrong_number_of_tiles_is_an_error():
    image = integer_image((40, 40, 1))
    with pytest.raises(ValueError):
        tiled_predict(lambda batch: batch[:-1], image, step=4, halo=4, tile_size=16, batch_size=4)


class _PredictOnBatchOnly(keras.Model):
    """A Keras model that records `predict_on_batch` and fails if called directly."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def call(self, inputs):
        raise AssertionError("a Keras model must be run through predict_on_batch")

    def predict_on_batch(self, x):
        self.batches.append(x.shape)
        return x * 2


def test_keras_model_is_run_through_predict_on_batch():
    image = integer_image((30, 45, 1))
    model = _PredictOnBatchOnly()
    np.testing.assert_array_equal(predict_whole(model, image, step=4), image * 2)
    np.testing.assert_array_equal(tiled_predict(model, image, step=4, halo=4, tile_size=16), image * 2)
    assert model.batches[0] == (1, 32, 48, 1)
    assert len(model.batches) > 1
