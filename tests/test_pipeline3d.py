"""Tests for training.pipeline on volumes (Z, Y, X, C): patch shapes and places, augmentation of the y-x
plane and of z, drawing in proportion to volume, padding thin volumes, determinism, grid patches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.pipeline import augmented, grid_patches, pad_to_at_least, training_batches


def coded_volume(depth: int, height: int, width: int, offset: int = 0) -> np.ndarray:
    """A (Z, Y, X, 1) float32 volume whose every voxel holds its own code ``offset + 10000 z + 100 y + x``
    (exact in float32 for sides under 100)."""
    zz, yy, xx = np.indices((depth, height, width))
    return (offset + 10000 * zz + 100 * yy + xx).astype(np.float32)[..., np.newaxis]


def decode(patch: np.ndarray) -> np.ndarray:
    """The (z, y, x) each voxel of a coded patch came from: shape (3, *patch spatial shape)."""
    code = patch[..., 0].astype(int) % 1_000_000
    return np.stack([code // 10000, code // 100 % 100, code % 100])


def take(batches, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `count` batches of an iterable of batches, which is then closed."""
    taken = list(itertools.islice(iter(batches), count))
    batches.close()
    return taken


def dataset(images, targets, **overrides):
    arguments = {
        "patch_size": (4, 16, 16),
        "batch_size": 2,
        "seed": 7,
        "first_epoch": 0,
        "steps_per_epoch": 3,
    }
    return training_batches(images, targets, **(arguments | overrides))


# === training_batches ===


@pytest.mark.parametrize(("patch_size", "shape"), [((4, 16, 16), (4, 16, 16)), (8, (8, 8, 8))])
def test_volume_batches_have_the_patch_shape_and_the_input_dtypes(patch_size, shape):
    rng = np.random.default_rng(0)
    images = [rng.random((10, 30, 40, 2), dtype=np.float32)]
    targets = [rng.integers(0, 3, size=(10, 30, 40, 1)).astype(np.uint8)]
    ((image_batch, target_batch),) = take(dataset(images, targets, patch_size=patch_size, batch_size=4), 1)
    assert image_batch.shape == (4, *shape, 2)
    assert image_batch.dtype == np.float32
    assert target_batch.shape == (4, *shape, 1)
    assert target_batch.dtype == np.uint8


def orientation(patch: np.ndarray) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """Checks that a coded patch is a contiguous window of its volume, z kept on axis 0 and y, x turned
    or flipped in their plane; returns (z step along axis 0, (y, x) steps along axis 1, along axis 2)."""
    z, y, x = decode(patch)
    steps = []
    for axis in range(3):
        differences = [np.diff(coordinate, axis=axis) for coordinate in (z, y, x)]
        # Along each axis of the patch exactly one coordinate moves, by one voxel, the same everywhere.
        moving = [d for d in differences if d.any()]
        assert len(moving) == 1 and np.unique(moving[0]).size == 1 and abs(moving[0].flat[0]) == 1
        steps.append(tuple(int(d.flat[0]) for d in differences))
    assert steps[0][1:] == (0, 0)  # axis 0 moves z only
    assert steps[1][0] == steps[2][0] == 0  # y and x stay in their plane
    return steps[0][0], steps[1][1:], steps[2][1:]


def test_patches_are_windows_of_the_volume_turned_in_the_plane_and_flipped_in_z():
    volume = coded_volume(12, 40, 50)
    batches = take(dataset([volume], [volume.astype(np.int32)], batch_size=16, steps_per_epoch=8), 8)
    seen = set()
    for images, targets in batches:
        np.testing.assert_array_equal(targets, images.astype(np.int32))  # the target moved with its image
        seen |= {orientation(patch) for patch in images}
    # All 16 symmetries: z as it is or flipped, each with the 8 of the y-x square.
    plane = {((0, a), (b, 0)) for a in (1, -1) for b in (1, -1)} | {
        ((a, 0), (0, b)) for a in (1, -1) for b in (1, -1)
    }
    assert seen == {(dz, *axes) for dz in (1, -1) for axes in plane}


def test_without_augmentation_volume_patches_keep_their_orientation():
    volume = coded_volume(12, 40, 50)
    batches = take(dataset([volume], [volume], batch_size=16, augment=False), 2)
    orientations = {orientation(patch) for images, _ in batches for patch in images}
    assert orientations == {(1, (1, 0), (0, 1))}


def test_patch_corners_cover_every_possible_position():
    # A (6, 20, 20) volume in patches of (4, 16, 16) has 3 x 5 x 5 corners; 400 patches find them all.
    volume = coded_volume(6, 20, 20)
    batches = take(dataset([volume], [volume], batch_size=50, augment=False, steps_per_epoch=8), 8)
    corners = {tuple(decode(patch)[:, 0, 0, 0]) for images, _ in batches for patch in images}
    assert corners == set(itertools.product(range(3), range(5), range(5)))


def test_volumes_are_drawn_in_proportion_to_their_voxels():
    # 16384 voxels and 4096: 80 % of the patches come from the first (by area, z-y or y-x, 2/3 would).
    volumes = [np.zeros((16, 32, 32, 1), dtype=np.float32), np.ones((8, 32, 16, 1), dtype=np.float32)]
    targets = [v.astype(np.uint8) for v in volumes]
    batches = take(dataset(volumes, targets, batch_size=50, steps_per_epoch=6), 6)
    from_first = np.concatenate([images[:, 0, 0, 0, 0] == 0 for images, _ in batches])
    assert from_first.mean() == pytest.approx(0.8, abs=0.07)


def test_volumes_thinner_than_the_patch_are_mirrored_in_z():
    # 3 slices padded to 8: 2 mirrored before (1, 0), 3 after (2, 1, 0), edge slices repeated.
    volume = coded_volume(3, 20, 20)
    padded = pad_to_at_least(volume, (8, 16, 16))
    assert padded.shape == (8, 20, 20, 1)
    mirrored = [1, 0, 0, 1, 2, 2, 1, 0]
    np.testing.assert_array_equal(decode(padded)[0, :, 0, 0], mirrored)
    batches = take(dataset([volume], [volume], patch_size=(8, 16, 16), batch_size=8, augment=False), 2)
    for images, _ in batches:
        assert images.shape == (8, 8, 16, 16, 1)
        for patch in images:
            np.testing.assert_array_equal(decode(patch)[0, :, 0, 0], mirrored)


def test_same_arguments_give_identical_volume_batches_and_a_resumed_run_sees_the_same():
    rng = np.random.default_rng(0)
    volumes = [rng.random((10, 30, 40, 1), dtype=np.float32), rng.random((6, 20, 24, 1), dtype=np.float32)]
    targets = [(v > 0.5).astype(np.uint8) for v in volumes]
    steps = 3
    first = take(dataset(volumes, targets, steps_per_epoch=steps), 2 * steps)
    again = take(dataset(volumes, targets, steps_per_epoch=steps), 2 * steps)
    resumed = take(dataset(volumes, targets, steps_per_epoch=steps, first_epoch=1), steps)
    for (image_a, target_a), (image_b, target_b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(target_a, target_b)
    for (image_a, target_a), (image_b, target_b) in zip(first[steps:], resumed, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(target_a, target_b)
    ((other, _),) = take(dataset(volumes, targets, seed=8), 1)
    assert not np.array_equal(first[0][0], other)


def test_a_patch_size_for_another_number_of_axes_is_an_error():
    volume = coded_volume(6, 20, 20)
    with pytest.raises(ValueError, match="patch size"):
        dataset([volume], [volume], patch_size=(16, 16))
    with pytest.raises(ValueError, match="patch size"):
        grid_patches([volume], [volume], patch_size=(4, 16), max_patches=10)


# === augmented ===


@pytest.mark.parametrize("code", range(16))
def test_augmenting_a_volume_applies_the_square_symmetry_to_every_slice(code):
    volume = coded_volume(3, 5, 7)
    got = augmented(volume, code)
    slices = [augmented(volume[z], code % 8) for z in range(3)]  # each slice as a 2D image
    expected = np.stack(slices[::-1] if code >= 8 else slices)
    np.testing.assert_array_equal(got, expected)


# === grid_patches ===


def test_grid_patches_cover_every_voxel_of_every_volume():
    volumes = [coded_volume(12, 40, 50), coded_volume(4, 16, 20, offset=1_000_000)]
    patches, _ = grid_patches(volumes, volumes, patch_size=(8, 16, 16), max_patches=100)
    # z starts 0, 4; y 0, 16, 24; x 0, 16, 32, 34 in the first volume; 1 x 1 x 2 in the second (padded to 8
    # slices in z).
    assert patches.shape == (2 * 3 * 4 + 1 * 1 * 2, 8, 16, 16, 1)
    corners = [tuple(decode(patch)[:, 0, 0, 0]) for patch in patches[:24]]
    assert corners == list(itertools.product((0, 4), (0, 16, 24), (0, 16, 32, 34)))
    for patch in patches[:24]:
        assert orientation(patch) == (1, (1, 0), (0, 1))
    assert set(np.unique(patches)) == set(np.unique(np.concatenate([v.ravel() for v in volumes])))


def test_grid_patches_keep_volume_targets_aligned():
    volume = coded_volume(12, 40, 50)
    patches, targets = grid_patches([volume], [volume.astype(np.int32)], patch_size=8, max_patches=100)
    assert patches.shape[1:] == (8, 8, 8, 1)
    np.testing.assert_array_equal(targets, patches.astype(np.int32))
