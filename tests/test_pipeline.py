"""Tests for training.pipeline: random training patches (shape, determinism, augmentation), grid patches."""

from __future__ import annotations

import numpy as np
import pytest

from training.pipeline import grid_patches, training_dataset


def coded_image(height: int, width: int, offset: int = 0) -> np.ndarray:
    """A (Y, X, 1) float32 image whose every pixel holds its own code ``offset + 1000 y + x``."""
    yy, xx = np.mgrid[:height, :width]
    return (offset + 1000 * yy + xx).astype(np.float32)[..., np.newaxis]


def take(dataset, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), targets.numpy()) for images, targets in dataset.take(batches)]


def dataset(images, targets, **overrides):
    arguments = {"patch_size": 16, "batch_size": 2, "seed": 7, "first_epoch": 0, "steps_per_epoch": 3}
    return training_dataset(images, targets, **(arguments | overrides))


@pytest.fixture
def random_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two random images of different sizes and their thresholded targets."""
    rng = np.random.default_rng(0)
    images = [rng.random((40, 50, 1), dtype=np.float32), rng.random((24, 30, 1), dtype=np.float32)]
    return images, [(image > 0.5).astype(np.uint8) for image in images]


# === training_dataset ===


def test_batches_have_the_patch_shape_and_the_input_dtypes():
    rng = np.random.default_rng(0)
    images = [rng.random((30, 40, 2), dtype=np.float32)]
    targets = [rng.integers(0, 3, size=(30, 40, 1)).astype(np.uint8)]
    ((image_batch, target_batch),) = take(dataset(images, targets, batch_size=4), 1)
    assert image_batch.shape == (4, 16, 16, 2)
    assert image_batch.dtype == np.float32
    assert target_batch.shape == (4, 16, 16, 1)
    assert target_batch.dtype == np.uint8


def test_same_arguments_give_identical_batches(random_images):
    first = take(dataset(*random_images), 6)
    second = take(dataset(*random_images), 6)
    for (image_a, target_a), (image_b, target_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(target_a, target_b)


def test_different_seed_gives_different_batches(random_images):
    ((image_a, _),) = take(dataset(*random_images, seed=7), 1)
    ((image_b, _),) = take(dataset(*random_images, seed=8), 1)
    assert not np.array_equal(image_a, image_b)


def test_resumed_dataset_sees_the_patches_of_the_uninterrupted_run(random_images):
    steps = 3
    uninterrupted = take(dataset(*random_images, steps_per_epoch=steps, first_epoch=0), 2 * steps)
    resumed = take(dataset(*random_images, steps_per_epoch=steps, first_epoch=1), steps)
    for (image_a, target_a), (image_b, target_b) in zip(uninterrupted[steps:], resumed, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(target_a, target_b)
    # The epochs differ, so the equality above is not that of a dataset that repeats itself.
    assert not np.array_equal(uninterrupted[0][0], resumed[0][0])


def test_images_smaller_than_the_patch_are_padded_not_rejected():
    image = coded_image(10, 12)
    ((image_batch, _),) = take(dataset([image], [image.astype(np.int32)], batch_size=1), 1)
    assert image_batch.shape == (1, 16, 16, 1)
    # Mirror padding only repeats pixels of the image; every pixel of the image is in the one patch.
    assert set(np.unique(image_batch)) == set(np.unique(image))


def test_augmentation_keeps_image_and_target_aligned(random_images):
    for image_batch, target_batch in take(dataset(*random_images, batch_size=8), 4):
        np.testing.assert_array_equal(target_batch, (image_batch > 0.5).astype(np.uint8))


def orientations(image_batch: np.ndarray) -> set[tuple[int, int]]:
    """(step to the right, step down) of each coded patch: one of the 8 symmetries of the square."""
    return {(int(p[0, 1, 0] - p[0, 0, 0]), int(p[1, 0, 0] - p[0, 0, 0])) for p in image_batch}


def test_augmentation_uses_all_eight_symmetries():
    image = coded_image(40, 40)
    batches = take(dataset([image], [image.astype(np.int32)], batch_size=16, steps_per_epoch=4), 4)
    seen = set().union(*(orientations(images) for images, _ in batches))
    assert seen == {(dx, dy) for a, b in ((1, 1000), (1000, 1)) for dx in (a, -a) for dy in (b, -b)}
    for images, targets in batches:  # the target turned with its image: every code still matches
        np.testing.assert_array_equal(targets, images.astype(np.int32))


def test_without_augmentation_patches_keep_their_orientation():
    image = coded_image(40, 40)
    batches = take(dataset([image], [image], batch_size=16, augment=False), 2)
    assert set().union(*(orientations(images) for images, _ in batches)) == {(1, 1000)}


def test_images_are_drawn_in_proportion_to_their_area():
    # A 64x64 image (area 4096) and a 32x32 one (area 1024): 80 % of the patches come from the first.
    images = [np.zeros((64, 64, 1), dtype=np.float32), np.ones((32, 32, 1), dtype=np.float32)]
    targets = [image.astype(np.uint8) for image in images]
    batches = take(dataset(images, targets, batch_size=50, steps_per_epoch=4), 4)
    from_first = np.concatenate([image_batch[:, 0, 0, 0] == 0 for image_batch, _ in batches])
    assert from_first.mean() == pytest.approx(0.8, abs=0.08)


# === grid_patches ===


def test_grid_patches_cover_every_pixel_of_every_image():
    images = [coded_image(40, 50), coded_image(16, 20, offset=100_000)]
    image_patches, _ = grid_patches(images, images, patch_size=16, max_patches=100)
    # Rows start at 0, 16, 24 and columns at 0, 16, 32, 34 in the first image; 1 x 2 in the second.
    assert image_patches.shape == (3 * 4 + 1 * 2, 16, 16, 1)
    assert set(np.unique(image_patches)) == set(np.unique(np.concatenate([im.ravel() for im in images])))


def test_grid_patches_keep_targets_aligned_with_images():
    image = coded_image(40, 50)
    image_patches, target_patches = grid_patches(
        [image], [image.astype(np.int32)], patch_size=16, max_patches=100
    )
    np.testing.assert_array_equal(target_patches, image_patches.astype(np.int32))


def test_grid_patches_respect_max_patches_and_spread_over_the_images():
    images = [coded_image(40, 50), coded_image(16, 20, offset=100_000)]
    all_patches, _ = grid_patches(images, images, patch_size=16, max_patches=100)
    kept, _ = grid_patches(images, images, patch_size=16, max_patches=5)
    assert len(kept) == 5
    # The first and the last patch are kept, so the last image is not left out.
    np.testing.assert_array_equal(kept[0], all_patches[0])
    np.testing.assert_array_equal(kept[-1], all_patches[-1])


def test_grid_patches_pad_an_image_smaller_than_the_patch():
    image = coded_image(10, 12)
    image_patches, _ = grid_patches([image], [image], patch_size=16, max_patches=10)
    assert image_patches.shape == (1, 16, 16, 1)
    assert set(np.unique(image_patches)) == set(np.unique(image))
