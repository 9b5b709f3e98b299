"""Tests for `training.tiling.predict_tta`, the 8-fold test-time augmentation (rotations and flips).

The expected results are built independently of `np.rot90`: the eight symmetries of the rectangle are
written out below as transposes and flips, each with its inverse.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from training.tiling import predict_tta

Transform = Callable[[np.ndarray], np.ndarray]


def _flip_y(a: np.ndarray) -> np.ndarray:
    return a[::-1]


def _flip_x(a: np.ndarray) -> np.ndarray:
    return a[:, ::-1]


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.swapaxes(0, 1)


def _identity(a: np.ndarray) -> np.ndarray:
    return a


# (forward, inverse) for each element of the dihedral group D4 acting on (Y, X, C) arrays.
DIHEDRAL: list[tuple[Transform, Transform]] = [
    (_identity, _identity),
    (_flip_y, _flip_y),
    (_flip_x, _flip_x),
    (lambda a: _flip_x(_flip_y(a)), lambda a: _flip_y(_flip_x(a))),
    (_transpose, _transpose),
    (lambda a: _flip_y(_transpose(a)), lambda a: _transpose(_flip_y(a))),  # a quarter turn
    (lambda a: _flip_x(_transpose(a)), lambda a: _transpose(_flip_x(a))),  # the other quarter turn
    (lambda a: _flip_x(_flip_y(_transpose(a))), lambda a: _transpose(_flip_y(_flip_x(a)))),
]


def dihedral_mean(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> np.ndarray:
    outputs = [inverse(predict(forward(image))) for forward, inverse in DIHEDRAL]
    return np.mean(np.stack(outputs).astype(np.float64), axis=0)


def integer_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Small integers as float32: sums of a few of them, and their halves and eighths, are exact."""
    return np.random.default_rng(seed).integers(-20, 20, size=shape).astype(np.float32)


def add_x_ramp(image: np.ndarray) -> np.ndarray:
    """Not equivariant: adds 0, 1, 2, ... along x of whatever orientation it is given."""
    return image + np.arange(image.shape[1], dtype=np.float32)[None, :, None]


def shift_right(image: np.ndarray) -> np.ndarray:
    """Not equivariant: every pixel takes the value of its left neighbour (wrapping round)."""
    return np.roll(image, 1, axis=1)


def laplacian_and_channel_sum(image: np.ndarray) -> np.ndarray:
    """Equivariant to flips and quarter turns: a symmetric 3x3 stencil with mirrored borders, and a
    channel mix, giving two output channels from any number of input channels."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    laplacian = 4 * image - neighbours
    return np.concatenate([laplacian.sum(axis=-1, keepdims=True), image.max(axis=-1, keepdims=True)], -1)


def test_the_eight_transforms_of_the_reference_are_distinct_and_inverted():
    # Guards the reference itself: eight different images, each turned back exactly.
    image = integer_image((5, 7, 1))
    forwards = [forward(image) for forward, _ in DIHEDRAL]
    assert len({(f.shape, f.tobytes()) for f in map(np.ascontiguousarray, forwards)}) == 8
    for (_, inverse), forward in zip(DIHEDRAL, forwards, strict=True):
        np.testing.assert_array_equal(inverse(forward), image)


@pytest.mark.parametrize("shape", [(6, 6, 1), (5, 9, 3)])
def test_identity_predictor_returns_the_input_exactly(shape):
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    output = predict_tta(lambda x: x, image)
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output, image)


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 11, 2)])
def test_equivariant_predictor_gives_the_plain_prediction(shape):
    image = integer_image(shape)
    plain = laplacian_and_channel_sum(image)
    output = predict_tta(laplacian_and_channel_sum, image)
    assert output.shape == (*shape[:2], 2)
    np.testing.assert_array_equal(output, plain)


@pytest.mark.parametrize("predictor", [add_x_ramp, shift_right], ids=["x-ramp", "shift"])
@pytest.mark.parametrize("shape", [(6, 6, 1), (5, 9, 2)])
def test_non_equivariant_predictor_gives_the_mean_over_the_eight_transforms(predictor, shape):
    image = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    plain = predictor(image)
    expected = dihedral_mean(predictor, image)
    output = predict_tta(predictor, image)
    assert not np.allclose(expected, plain)  # the control: this predictor does depend on orientation
    np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)


def test_x_ramp_averages_to_a_constant_offset_of_a_quarter_of_both_sides():
    # Turned back, the x-ramps run along +x, -x, +y and -y, twice each: (x + X-1-x + y + Y-1-y) / 4.
    height, width = 5, 9
    image = integer_image((height, width, 1))
    output = predict_tta(add_x_ramp, image)
    np.testing.assert_array_equal(output, image + (height - 1 + width - 1) / 4)


def test_shift_averages_to_the_mean_of_the_four_neighbours():
    image = integer_image((6, 10, 1))
    neighbours = sum(np.roll(image, offset, axis) for axis in (0, 1) for offset in (1, -1))
    np.testing.assert_array_equal(predict_tta(shift_right, image), neighbours / 4)


def test_predictor_sees_each_orientation_once_as_a_contiguous_array():
    seen = []

    def record(image: np.ndarray) -> np.ndarray:
        seen.append((image.shape, image.flags.c_contiguous, image.tobytes()))
        return image

    image = integer_image((5, 9, 2))
    predict_tta(record, image)
    assert len(seen) == 8
    assert sorted(shape for shape, _, _ in seen) == [(5, 9, 2)] * 4 + [(9, 5, 2)] * 4
    assert all(contiguous for _, contiguous, _ in seen)
    assert len({data for _, _, data in seen}) == 8  # eight different orientations, none twice


def test_float64_predictions_are_returned_as_float32():
    image = integer_image((4, 6, 1))
    output = predict_tta(lambda x: x.astype(np.float64) * 0.5, image)
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output, image * 0.5)
