"""Tests for training.tiling on volumes (Z, Y, X, C): tiled prediction equals whole-volume prediction with
anisotropic steps and halos, tiles along every axis including z, and test-time augmentation of the y-x
plane only."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy import ndimage

import zoo
from training.tiling import (
    _axis_tiles,
    per_axis,
    predict_tta,
    predict_whole,
    predict_with_geometry,
    tiled_predict,
)


def recording(predict, shapes: list):
    def record(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return predict(batch)

    return record


def integer_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Small integers as float32: their box sums are exact in any order of summation."""
    return np.random.default_rng(seed).integers(-20, 20, size=shape).astype(np.float32)


# === A small 3D network ===

# Its steps and halos per axis (z, y, x), worked out layer by layer as (low, high) reach in input pixels:
# the first pooling halves y and x only, the second all three axes, and only the middle convolutions see
# across slices. z: `middle` (-1, 1), pooled (-1, 2), `bottom` at z-scale 2 (-3, 4), upsampled (-4, 4).
# y and x: `first` (-1, 1), pooled (-1, 2), `middle` (-3, 4), pooled (-3, 6), `bottom` (-7, 10), upsampled
# (-9, 10), `up` (-11, 12), upsampled (-12, 12), `last` (-13, 13).
NET_STEPS = (2, 4, 4)
NET_HALOS = (4, 13, 13)


@pytest.fixture(scope="module")
def net() -> keras.Model:
    """A float32 3D U-Net-like model with random weights (and biases), `same` padding, steps (2, 4, 4)."""
    keras.utils.set_random_seed(0)

    def conv(filters: int, kernel: tuple[int, int, int], name: str, activation: str = "relu"):
        return keras.layers.Conv3D(
            filters,
            kernel,
            padding="same",
            activation=activation,
            bias_initializer=keras.initializers.RandomNormal(stddev=0.5),
            name=name,
        )

    inputs = keras.Input((None, None, None, 1), name="volume")
    first = conv(4, (1, 3, 3), "first")(inputs)
    middle = conv(4, (3, 3, 3), "middle")(keras.layers.MaxPooling3D((1, 2, 2), name="pool_yx")(first))
    bottom = conv(4, (3, 3, 3), "bottom")(keras.layers.MaxPooling3D((2, 2, 2), name="pool_zyx")(middle))
    up = keras.layers.UpSampling3D((2, 2, 2), name="upsample_zyx")(bottom)
    up = conv(4, (1, 3, 3), "up")(keras.layers.Concatenate(name="skip_middle")([up, middle]))
    up = keras.layers.UpSampling3D((1, 2, 2), name="upsample_yx")(up)
    last = conv(4, (1, 3, 3), "last")(keras.layers.Concatenate(name="skip_first")([up, first]))
    outputs = conv(2, (1, 1, 1), "head", activation=None)(last)
    return keras.Model(inputs, outputs, name="tiny_unet3d")


def odd_volume(shape: tuple[int, int, int] = (13, 70, 45)) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(*shape, 1)).astype(np.float32)


@pytest.mark.parametrize(
    ("tile_size", "tiles"),
    [
        # (13, 70, 45) pads to (14, 72, 48); aligned halos (4, 16, 16) need tiles of at least (10, 36, 36):
        # 3 tiles deep, 5 down, 2 across.
        ((10, 40, 40), 3 * 5 * 2),
        # An int is the same on every axis: the 14 slices fit in one tile of 40.
        (40, 1 * 5 * 2),
    ],
)
def test_tiled_prediction_of_a_3d_network_equals_whole_volume_prediction(net, tile_size, tiles):
    volume = odd_volume()
    whole = predict_whole(net, volume, step=NET_STEPS)
    shapes = []
    tiled = tiled_predict(
        recording(net.predict_on_batch, shapes),
        volume,
        step=NET_STEPS,
        halo=NET_HALOS,
        tile_size=tile_size,
        batch_size=8,
    )
    assert tiled.shape == whole.shape == (13, 70, 45, 2)
    assert tiled.dtype == np.float32
    assert sum(shape[0] for shape in shapes) == tiles
    assert np.abs(tiled - whole).max() < 1e-5


@pytest.mark.parametrize("halo", [(0, 13, 13), (4, 4, 4)], ids=["z", "yx"])
def test_tiled_prediction_of_a_3d_network_with_too_small_a_halo_differs(net, halo):
    # The negative control, one axis at a time: tiles that cut the network's reach show.
    volume = odd_volume()
    whole = predict_whole(net, volume, step=NET_STEPS)
    tiled = tiled_predict(net, volume, step=NET_STEPS, halo=halo, tile_size=(10, 40, 40), batch_size=8)
    assert np.abs(tiled - whole).max() > 1e-3


def test_tiled_prediction_of_a_3d_network_with_a_mirrored_border(net):
    volume = odd_volume()
    border = (2, 8, 8)
    mirrored = np.pad(volume, ((2, 2), (8, 8), (8, 8), (0, 0)), mode="symmetric")
    expected = predict_whole(net, mirrored, step=NET_STEPS)[2:-2, 8:-8, 8:-8]
    whole = predict_whole(net, volume, step=NET_STEPS, border=border)
    tiled = tiled_predict(
        net, volume, step=NET_STEPS, halo=NET_HALOS, tile_size=(10, 40, 40), batch_size=8, border=border
    )
    np.testing.assert_array_equal(whole, expected)
    assert tiled.shape == (13, 70, 45, 2)
    assert np.abs(tiled - expected).max() < 1e-5


# === A numpy stand-in: a box sum over a 9x17x17 window ===

BOX_RADII = (4, 8, 8)  # each output voxel sees 4 slices and 8 pixels on each side


def box_sum(batch: np.ndarray) -> np.ndarray:
    """Translation-equivariant with a known reach per axis: the sum of each channel over a box, zero
    outside the input (like a network's zero padding), and the sum of those over the channels."""
    boxed = np.asarray(batch, dtype=np.float64)
    for axis, radius in enumerate(BOX_RADII, start=1):
        boxed = ndimage.correlate1d(boxed, np.ones(2 * radius + 1), axis=axis, mode="constant", cval=0.0)
    return np.concatenate([boxed, boxed.sum(axis=-1, keepdims=True)], axis=-1).astype(np.float32)


def test_tiled_prediction_of_a_box_sum_equals_the_box_sum_of_the_whole_volume():
    # (13, 70, 45) pads (mirrored) to (14, 72, 48). Halos (3, 7, 7) round up to the box's radii (4, 8, 8)
    # with steps (2, 4, 4); tiles of (10, 24, 24) then keep cores of (2, 8, 8): 3 x 7 x 4 tiles.
    volume = integer_volume((13, 70, 45, 2))
    aligned = np.pad(volume, ((0, 1), (0, 2), (0, 3), (0, 0)), mode="symmetric")
    expected = box_sum(aligned[np.newaxis])[0, :13, :70, :45]
    shapes = []
    tiled = tiled_predict(
        recording(box_sum, shapes),
        volume,
        step=(2, 4, 4),
        halo=(3, 7, 7),
        tile_size=(10, 24, 24),
        batch_size=16,
    )
    assert tiled.shape == (13, 70, 45, 3)
    assert tiled.dtype == np.float32
    np.testing.assert_array_equal(tiled, expected)
    assert shapes == [(16, 10, 24, 24, 2)] * 5 + [(4, 10, 24, 24, 2)]


def test_a_voxel_budget_takes_fewer_tiles_per_call_before_smaller_tiles():
    # The 84 tiles of (10, 24, 24) of the test above, at most 4 of them per call.
    volume = integer_volume((13, 70, 45, 2))
    shapes = []
    tiled = tiled_predict(
        recording(box_sum, shapes),
        volume,
        step=(2, 4, 4),
        halo=(3, 7, 7),
        tile_size=(10, 24, 24),
        batch_size=16,
        max_voxels=4 * 10 * 24 * 24,
    )
    aligned = np.pad(volume, ((0, 1), (0, 2), (0, 3), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(tiled, box_sum(aligned[np.newaxis])[0, :13, :70, :45])
    assert shapes == [(4, 10, 24, 24, 2)] * 21


@pytest.mark.parametrize("max_voxels", [6000, 20_000, 1])
def test_a_voxel_budget_shrinks_the_tiles_and_keeps_the_prediction_exact(max_voxels):
    # The whole aligned volume (14, 72, 48) would be one call; tiles shrink, never below two halos and a
    # step (10, 20, 20): a budget under that (1) leaves the smallest tiles, one per call.
    volume = integer_volume((13, 70, 45, 2))
    shapes = []
    tiled = tiled_predict(
        recording(box_sum, shapes),
        volume,
        step=(2, 4, 4),
        halo=(3, 7, 7),
        tile_size=(16, 72, 48),
        batch_size=4,
        max_voxels=max_voxels,
    )
    aligned = np.pad(volume, ((0, 1), (0, 2), (0, 3), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(tiled, box_sum(aligned[np.newaxis])[0, :13, :70, :45])
    assert len(shapes) > 1
    voxels = [int(np.prod(shape[:-1])) for shape in shapes]
    if max_voxels >= 10 * 20 * 20:
        assert max(voxels) <= max_voxels
        assert max(voxels) > max_voxels / 2  # as large as the budget allows, within a step per axis
    else:
        assert set(shapes) == {(1, 10, 20, 20, 2)}


def test_a_voxel_budget_shrinks_the_sides_that_hold_the_most_halos_first():
    # z holds 3.5 of its halos, y and x 25: only y and x shrink, to about equal sides.
    volume = integer_volume((14, 200, 200, 1))
    shapes = []
    tiled_predict(
        recording(box_sum, shapes),
        volume,
        step=(2, 4, 4),
        halo=(4, 8, 8),
        tile_size=(16, 200, 200),
        max_voxels=14 * 100 * 100,
    )
    assert {shape[1] for shape in shapes} == {14}
    assert all(abs(shape[2] - shape[3]) <= 4 and shape[2] * shape[3] <= 100 * 100 for shape in shapes)


def test_tiled_prediction_of_a_box_sum_with_too_small_a_z_halo_differs():
    volume = integer_volume((13, 70, 45, 1))
    expected = box_sum(np.pad(volume, ((0, 1), (0, 2), (0, 3), (0, 0)), mode="symmetric")[np.newaxis])
    tiled = tiled_predict(box_sum, volume, step=(2, 4, 4), halo=(2, 8, 8), tile_size=(8, 24, 24))
    assert np.abs(tiled - expected[0, :13, :70, :45]).max() > 0


def coded_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """A (Z, Y, X, 1) float32 volume whose every voxel holds its own code ``10000 z + 100 y + x``."""
    zz, yy, xx = np.indices(shape)
    return (10000 * zz + 100 * yy + xx).astype(np.float32)[..., np.newaxis]


def tile_corners(batch: np.ndarray) -> np.ndarray:
    """Fills each tile of a coded volume with the (z, y, x) of its first voxel, read off its code."""
    code = batch[:, 0, 0, 0, 0].astype(int)
    corners = np.stack([code // 10000, code // 100 % 100, code % 100], axis=-1).astype(np.float32)
    return np.broadcast_to(corners[:, None, None, None, :], (*batch.shape[:-1], 3)).copy()


def test_volume_tiles_are_the_product_of_the_axis_tiles_and_each_voxel_comes_from_a_core():
    # Aligned halos (4, 12, 12); tiles of (10, 32, 28) on the (14, 72, 48) padded volume: 3 x 6 x 6.
    shape, steps, halos, largest = (13, 70, 45), (2, 4, 4), (4, 12, 12), (10, 32, 28)
    padded = (14, 72, 48)
    shapes, corners_seen = [], []

    def predict(batch: np.ndarray) -> np.ndarray:
        corners = tile_corners(batch)
        corners_seen.extend(map(tuple, corners[:, 0, 0, 0].astype(int)))
        return recording(lambda b: corners, shapes)(batch)

    output = tiled_predict(predict, coded_volume(shape), step=steps, halo=(3, 9, 9), tile_size=largest)
    tile = shapes[0][1:4]
    assert all(s[1:4] == tile for s in shapes)
    # The tiles of each axis keep the invariants of `_axis_tiles`, and the volume's tiles are all their
    # combinations, each once.
    axes = [_axis_tiles(*axis) for axis in zip(padded, largest, halos, steps, strict=True)]
    assert [len(axis) for axis in axes] == [3, 6, 6]
    for axis, length, size, step in zip(axes, padded, tile, steps, strict=True):
        assert axis[0][0] == 0 and axis[-1][1] == length
        assert all(stop - start == size and start % step == 0 for start, stop, _, _ in axis)
    assert sorted(corners_seen) == sorted(
        (z[0], y[0], x[0]) for z in axes[0] for y in axes[1] for x in axes[2]
    )
    # Each voxel was written by a tile that holds it, `halo` away from that tile's inner edges.
    coordinates = np.indices(shape)
    for a in range(3):
        start, voxel = output[..., a].astype(int), coordinates[a]
        assert np.all((start <= voxel) & (voxel < start + tile[a]))
        assert np.all((start == 0) | (voxel - start >= halos[a]))
        assert np.all((start + tile[a] == padded[a]) | (start + tile[a] - 1 - voxel >= halos[a]))


def test_sizes_are_one_value_for_every_axis_or_one_per_axis():
    assert per_axis(4, 3) == (4, 4, 4)
    assert per_axis([2, 4, 4], 3) == (2, 4, 4)
    with pytest.raises(ValueError, match="step"):
        tiled_predict(box_sum, integer_volume((8, 16, 16, 1)), step=(4, 4), halo=4)


# === predict_with_geometry ===


def test_predict_with_geometry_takes_steps_halos_and_borders_per_axis():
    # With its border of (4, 8, 8) the volume is (21, 86, 61), padded to (22, 88, 64). Tiles of 16 widen
    # to 8 halos: (32, 64, 64). z is one tile of 22, no longer than the padded volume; y two tiles of 52.
    geometry = zoo.Geometry(steps=(2, 4, 4), receptive_fields=(9, 17, 17), halos=(3, 7, 7), borders=(4, 8, 8))
    volume = integer_volume((13, 70, 45, 2))
    shapes = []
    got = predict_with_geometry(recording(box_sum, shapes), volume, geometry, tile_size=16)
    expected = predict_whole(box_sum, volume, step=(2, 4, 4), border=(4, 8, 8))
    np.testing.assert_array_equal(got, expected)
    assert shapes == [(2, 22, 52, 64, 2)]


def test_predict_with_geometry_of_a_2d_model_refuses_a_volume():
    geometry = zoo.Geometry(steps=(4, 4), receptive_fields=(17, 17), halos=(8, 8), borders=(8, 8))
    with pytest.raises(ValueError, match="spatial axes"):
        predict_with_geometry(box_sum, integer_volume((8, 16, 16, 1)), geometry, tile_size=64)


# === predict_tta ===

# The 8 symmetries of the y-x plane of (Z, Y, X, C) volumes, written out as transposes and flips (not with
# np.rot90), each with its inverse.


def _flip_y(a):
    return a[:, ::-1]


def _flip_x(a):
    return a[:, :, ::-1]


def _transpose(a):
    return a.swapaxes(1, 2)


PLANE_SYMMETRIES = [
    (lambda a: a, lambda a: a),
    (_flip_y, _flip_y),
    (_flip_x, _flip_x),
    (lambda a: _flip_x(_flip_y(a)), lambda a: _flip_y(_flip_x(a))),
    (_transpose, _transpose),
    (lambda a: _flip_y(_transpose(a)), lambda a: _transpose(_flip_y(a))),
    (lambda a: _flip_x(_transpose(a)), lambda a: _transpose(_flip_x(a))),
    (lambda a: _flip_x(_flip_y(_transpose(a))), lambda a: _transpose(_flip_y(_flip_x(a)))),
]


def plane_mean(predict, volume: np.ndarray) -> np.ndarray:
    outputs = [
        inverse(predict(np.ascontiguousarray(forward(volume)))) for forward, inverse in PLANE_SYMMETRIES
    ]
    return np.mean(np.stack(outputs).astype(np.float64), axis=0)


def anisotropic_stencil(volume: np.ndarray) -> np.ndarray:
    """Equivariant to the symmetries of the y-x plane, not to swapping z with y: a 4-neighbour Laplacian
    in y-x plus three times the slice below, with mirrored edges."""
    padded = np.pad(volume, ((1, 1), (1, 1), (1, 1), (0, 0)), mode="reflect")
    core = padded[1:-1, 1:-1, 1:-1]
    plane = (
        padded[1:-1, :-2, 1:-1] + padded[1:-1, 2:, 1:-1] + padded[1:-1, 1:-1, :-2] + padded[1:-1, 1:-1, 2:]
    )
    return 4 * core - plane + 3 * padded[:-2, 1:-1, 1:-1]


def test_tta_of_a_predictor_symmetric_in_the_plane_gives_the_plain_prediction():
    volume = integer_volume((5, 8, 11, 2))
    output = predict_tta(anisotropic_stencil, volume)
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output, anisotropic_stencil(volume))


def test_tta_of_a_volume_turns_and_flips_only_the_y_x_plane():
    seen = []

    def record(volume: np.ndarray) -> np.ndarray:
        seen.append(volume.copy())
        return volume + np.arange(volume.shape[2], dtype=np.float32)[None, None, :, None]  # an x-ramp

    volume = integer_volume((4, 5, 9, 1))
    output = predict_tta(record, volume)
    assert sorted(v.shape for v in seen) == [(4, 5, 9, 1)] * 4 + [(4, 9, 5, 1)] * 4
    # z is never turned or flipped: every slice keeps its sum, in order.
    for v in seen:
        np.testing.assert_array_equal(v.sum(axis=(1, 2, 3)), volume.sum(axis=(1, 2, 3)))
    # Turned back, the x-ramps run along +x, -x, +y and -y, twice each.
    np.testing.assert_array_equal(output, volume + (5 - 1 + 9 - 1) / 4)


def test_tta_of_a_3d_network_is_the_mean_of_the_eight_symmetries_of_the_plane(net):
    volume = odd_volume((6, 24, 20))

    def predict(v: np.ndarray) -> np.ndarray:
        return predict_whole(net, v, step=NET_STEPS)

    expected = plane_mean(predict, volume)
    output = predict_tta(predict, volume)
    assert output.shape == (6, 24, 20, 2)
    assert np.abs(expected - predict(volume)).max() > 1e-3  # the control: the random net is not symmetric
    np.testing.assert_allclose(output, expected, rtol=0, atol=1e-5)


def test_the_network_geometry_is_the_one_worked_out_above(net):
    geometry = zoo.model_geometry(net)
    assert geometry.steps == NET_STEPS
    assert geometry.halos == NET_HALOS


def test_predict_with_geometry_of_a_3d_network_equals_its_whole_volume_prediction(net):
    # Tiles of 8 halos (32, 128, 128) hold the whole mirrored volume: the border is what is tested here.
    geometry = zoo.model_geometry(net)
    volume = odd_volume()
    got = predict_with_geometry(net, volume, geometry, tile_size=(10, 40, 40))
    expected = predict_whole(net, volume, step=geometry.steps, border=geometry.borders)
    assert got.shape == (13, 70, 45, 2)
    np.testing.assert_array_equal(got, expected)


def test_the_network_halos_cover_its_reach(net):
    # Guards NET_HALOS: changing one voxel moves outputs no further than the halo along any axis, and
    # about as far (the reach worked out above is not a loose bound).
    base = odd_volume((16, 48, 48))[np.newaxis]
    changed = base.copy()
    changed[0, 7, 25, 22, 0] += 100.0
    moved = np.abs(net.predict_on_batch(changed) - net.predict_on_batch(base)).max(axis=(0, -1)) > 0
    for axis, (center, halo) in enumerate(zip((7, 25, 22), NET_HALOS, strict=True)):
        along = np.flatnonzero(moved.any(axis=tuple(a for a in range(3) if a != axis)))
        assert center - halo <= along.min() and along.max() <= center + halo
        assert along.max() - along.min() >= halo
