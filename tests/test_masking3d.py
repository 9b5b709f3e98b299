"""Tests for training.masking on volumes (B, Z, Y, X, C): grid cubes, mirrored (2r+1)³ neighbourhoods,
structN2V lines along z, y or x, and MaskedLoss on 5D tensors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.masking import MaskedLoss, blind_spot_mask, grid_box_side, masked_pixel_count


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _unique_values(batch: int, shape: tuple[int, int, int], channels: int = 1) -> np.ndarray:
    """Volumes whose value is the flat voxel index, so a value tells which voxel it came from."""
    volume = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    stack = np.stack([volume + 100_000 * c for c in range(channels)], axis=-1)
    return np.broadcast_to(stack, (batch, *shape, channels)).copy()


def _mask(patches: np.ndarray, seed: int = 0, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked, original, mask) as numpy arrays."""
    masked, target = blind_spot_mask(patches, [seed, 1], **options)
    channels = patches.shape[-1]
    return masked, target[..., :channels], target[..., channels:]


def _on_struct_line(source: tuple, centre: tuple, axis: int | None, span: int) -> bool:
    """Whether voxel `source` is the centre or on its hidden structN2V line."""
    return all(
        abs(s - c) <= (span if a == axis else 0) for a, (s, c) in enumerate(zip(source, centre, strict=True))
    )


def _window_candidates(volume: np.ndarray, centre: tuple, radius: int, axis: int | None, span: int) -> list:
    """Values of the mirrored (2r+1)³ window around `centre`, leaving out every copy of the centre and
    of its structN2V line: numpy's "reflect" padding as the independent reference."""
    sources = np.pad(np.arange(volume.size).reshape(volume.shape), radius, mode="reflect")
    values = np.pad(volume, radius, mode="reflect")
    window = tuple(slice(c, c + 2 * radius + 1) for c in centre)
    return [
        value
        for value, source in zip(values[window].ravel(), sources[window].ravel(), strict=True)
        if not _on_struct_line(np.unravel_index(source, volume.shape), centre, axis, span)
    ]


# === Positions ===


def test_grid_box_side_picks_the_density_nearest_the_fraction_in_2d_and_3d():
    sides = np.arange(1, 1000)
    for fraction in np.geomspace(1e-5, 0.25, 400):
        for ndim in (2, 3):
            best = np.min(np.abs(1.0 / sides.astype(float) ** ndim - fraction))
            assert abs(1.0 / grid_box_side(fraction, ndim) ** ndim - fraction) == best
        assert grid_box_side(fraction) == grid_box_side(fraction, 2)
    assert grid_box_side(0.002, 3) == 8  # N2V's default: density 1/512, 2% below
    assert grid_box_side(0.001, 3) == 10


@pytest.mark.parametrize("fraction", [0.0007, 0.001, 0.002, 0.0029])
def test_masked_fraction_in_volumes_is_the_grid_density_and_near_the_requested_fraction(fraction):
    side = grid_box_side(fraction, 3)
    # Sizes that are no multiple of the side: the cut boxes make the count random, by about 2% here.
    _, _, mask = _mask(_noise((24, 21, 37, 45, 1)), fraction=fraction)
    assert abs(mask.mean() - side**-3.0) <= 0.1 * side**-3.0
    # Up to 1/7³ the nearest cubic density is within 20% of the fraction (the grid's quantisation).
    assert abs(mask.mean() - fraction) <= 0.25 * fraction


def test_each_full_cube_holds_exactly_one_masked_voxel():
    side = grid_box_side(0.01, 3)
    _, _, mask = _mask(_noise((6, 12, 17, 23, 1)), fraction=0.01)
    full = [size // side * side for size in (12, 17, 23)]
    cubes = mask[:, : full[0], : full[1], : full[2], 0].reshape(
        6, full[0] // side, side, full[1] // side, side, full[2] // side, side
    )
    assert side == 5 and np.all(cubes.sum(axis=(2, 4, 6)) == 1)
    assert mask.sum() <= 6 * 3 * 4 * 5  # and cut cubes at most one each


def test_positions_are_uniform_over_z_y_and_x_including_cut_cubes():
    # Side 8 and 13 slices: the second row of cubes along z is cut to 5 slices. Each slice expects
    # 2000 * 256 / 512 = 1000 masked voxels (Poisson sd 32), so 15% is beyond 4.5 sd.
    _, _, mask = _mask(np.zeros((2000, 13, 16, 16, 1), np.float32), fraction=0.002)
    for axis in (1, 2, 3):
        others = tuple(a for a in range(5) if a != axis)
        per_slice = mask.mean(axis=others)
        assert np.all(np.abs(per_slice - 1 / 512) < 0.15 / 512), (axis, per_slice * 512)


# === Replacements ===


@pytest.mark.parametrize(("axis", "span"), [(None, 0), (0, 1), (1, 2), (2, 1)])
def test_uniform_replacement_comes_from_the_mirrored_window_never_the_centre_or_its_line(axis, span):
    shape, radius = (5, 6, 7), 3  # most voxels lie near a border, so many sources are mirrored copies
    masked, _, mask = _mask(
        _unique_values(400, shape), fraction=0.05, radius=radius, struct_axis=axis, struct_span=span
    )
    b, z, y, x, _ = np.nonzero(mask)
    sources = np.unravel_index(masked[b, z, y, x, 0].astype(int), shape)
    assert all(np.any(c == 0) and np.any(c == size - 1) for c, size in zip((z, y, x), shape, strict=True))
    for source, centre in zip(zip(*sources, strict=True), zip(z, y, x, strict=True), strict=True):
        assert not _on_struct_line(source, centre, axis, span)
    # Each source coordinate is a mirrored offset of at most `radius` from the centre.
    reach = [
        np.abs(
            np.pad(np.arange(size), radius, mode="reflect")[c[:, None] + np.arange(2 * radius + 1)]
            - s[:, None]
        )
        for s, c, size in zip(sources, (z, y, x), shape, strict=True)
    ]
    assert all(np.all(r.min(axis=1) == 0) for r in reach)


def test_uniform_replacement_covers_every_offset_outside_the_blind_set():
    shape, radius, span = (9, 9, 9), 1, 1
    masked, _, mask = _mask(
        _unique_values(300, shape), fraction=0.05, radius=radius, struct_axis=0, struct_span=span
    )
    b, z, y, x, _ = np.nonzero(mask)
    inner = np.all([(c >= radius) & (c < 9 - radius) for c in (z, y, x)], axis=0)
    sources = np.unravel_index(masked[b, z, y, x, 0].astype(int)[inner], shape)
    offsets = np.stack([s - c[inner] for s, c in zip(sources, (z, y, x), strict=True)], axis=1)
    seen = {tuple(o) for o in offsets}
    window = {(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert seen == window - {(-1, 0, 0), (0, 0, 0), (1, 0, 0)}


@pytest.mark.parametrize("replacement", ["median", "mean"])
@pytest.mark.parametrize(("axis", "span"), [(None, 0), (0, 1), (2, 2)])
def test_median_and_mean_are_numpys_over_the_mirrored_window_without_centre_and_line(replacement, axis, span):
    patches = _noise((6, 6, 7, 5, 1))
    masked, _, mask = _mask(
        patches, fraction=0.05, radius=2, replacement=replacement, struct_axis=axis, struct_span=span
    )
    reduce = np.median if replacement == "median" else np.mean
    for b, z, y, x, _ in zip(*np.nonzero(mask), strict=True):
        expected = reduce(_window_candidates(patches[b, ..., 0], (z, y, x), 2, axis, span))
        np.testing.assert_allclose(masked[b, z, y, x, 0], expected, rtol=1e-5, atol=1e-6)


# === structN2V ===


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_struct_line_hides_exactly_span_voxels_each_side_along_its_axis(axis):
    span, shape = 2, (12, 14, 16)
    patches = _noise((6, *shape, 1))
    masked, _, mask = _mask(patches, fraction=0.002, replacement="zero", struct_axis=axis, struct_span=span)
    centres = mask == 1
    expected_line = np.zeros(patches.shape, bool)
    for b, *centre, c in zip(*np.nonzero(mask), strict=True):
        for k in range(-span, span + 1):
            voxel = list(centre)
            voxel[axis] += k
            if 0 <= voxel[axis] < shape[axis]:
                expected_line[(b, *voxel, c)] = True
    np.testing.assert_array_equal(masked != patches, expected_line)
    line_only = expected_line & ~centres
    low = patches.min(axis=(1, 2, 3), keepdims=True)
    high = patches.max(axis=(1, 2, 3), keepdims=True)
    assert line_only.sum() > 0 and np.all((masked >= low) & (masked <= high))
    assert np.all(masked[centres] == 0.0)


def test_struct_line_values_are_drawn_from_the_whole_volume_not_from_its_slice():
    # Each z slice is constant (its value is z): a line along x, inside one slice, must still draw
    # uniformly from the whole volume's range [0, 11].
    patches = np.broadcast_to(
        np.arange(12, dtype=np.float32)[:, None, None, None], (16, 12, 16, 16, 1)
    ).copy()
    masked, _, mask = _mask(patches, fraction=0.002, replacement="zero", struct_axis=2, struct_span=3)
    hidden = masked[(masked != patches) & (mask == 0)]
    assert hidden.size > 300
    assert hidden.min() >= 0.0 and hidden.max() <= 11.0
    assert hidden.std() > 2.5  # uniform over [0, 11]: 3.2; one slice's range would give 0


def test_struct_axis_must_name_a_spatial_axis_of_the_patches():
    with pytest.raises(ValueError, match=r"struct_axis for volumes.*2 \(along x\)"):
        blind_spot_mask(np.zeros((1, 8, 8, 8, 1)), [0], struct_axis=3, struct_span=1)
    with pytest.raises(ValueError, match=r"struct_axis for images.*1 \(along x\)"):
        blind_spot_mask(np.zeros((1, 8, 8, 1)), [0], struct_axis=2, struct_span=1)
    with pytest.raises(ValueError, match="shape"):
        blind_spot_mask(np.zeros((1, 2, 8, 8, 8, 1)), [0])
    blind_spot_mask(np.zeros((1, 8, 8, 8, 1)), [0], fraction=0.01, struct_axis=2, struct_span=1)


# === Seeds and channels ===


def test_same_seed_gives_the_same_volumes_and_another_seed_others():
    patches = _noise((3, 9, 20, 18, 2))
    options = {"fraction": 0.01, "replacement": "uniform", "struct_axis": 0, "struct_span": 2}
    first, again = blind_spot_mask(patches, [5, 1], **options), blind_spot_mask(patches, [5, 1], **options)
    for got, want in zip(first, again, strict=True):
        np.testing.assert_array_equal(got, want)
    other = blind_spot_mask(patches, [5, 2], **options)
    assert not np.array_equal(first[1], other[1]) and not np.array_equal(first[0], other[0])


def test_independent_channels_in_volumes_get_their_own_positions_shared_ones_one_neighbour():
    patches = _unique_values(8, (10, 15, 15), channels=3)
    _, _, independent = _mask(patches, fraction=0.008, independent_channels=True)
    masked, _, shared = _mask(patches, fraction=0.008, independent_channels=False)
    assert not np.array_equal(independent[..., 0], independent[..., 1])
    assert not np.array_equal(independent[..., 1], independent[..., 2])
    for c in range(3):  # side 5 divides every axis: exactly one voxel per cube in each channel
        assert independent[..., c].sum() == 8 * 2 * 3 * 3
        np.testing.assert_array_equal(shared[..., c], shared[..., 0])
    b, z, y, x = np.nonzero(shared[..., 0])
    np.testing.assert_array_equal(masked[b, z, y, x, 2] - masked[b, z, y, x, 0], 200_000)


# === MaskedLoss on 5D tensors ===


def test_masked_loss_and_pixel_count_reduce_over_all_axes_of_volumes():
    target = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3, 1)
    prediction = target.copy()
    mask = np.zeros_like(target)
    mask[0, 0, 0, 0] = mask[0, 1, 2, 2] = 1.0  # sample 0: errors 1 and 3 in different slices
    mask[1, 1, 1, 1] = 1.0
    prediction[0, 0, 0, 0] += 1.0
    prediction[0, 1, 2, 2] -= 3.0
    prediction[1, 0, 0, 0] += 50.0  # unmasked
    y_true = np.concatenate([target, mask], axis=-1)
    per_sample = MaskedLoss().call(
        keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(prediction)
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_sample), [5.0, 0.0])
    assert float(MaskedLoss(kind="mae")(y_true, prediction)) == pytest.approx(1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(masked_pixel_count(y_true)), [2.0, 1.0])
