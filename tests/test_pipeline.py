"""Tests for training.pipeline: random training patches (shape, determinism, augmentation), grid patches."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from training.pipeline import grid_patches, prefetched, process_share, training_batches


def coded_image(height: int, width: int, offset: int = 0) -> np.ndarray:
    """A (Y, X, 1) float32 image whose every pixel holds its own code ``offset + 1000 y + x``."""
    yy, xx = np.mgrid[:height, :width]
    return (offset + 1000 * yy + xx).astype(np.float32)[..., np.newaxis]


def take(batches, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `count` batches of a generator, which is then closed."""
    taken = list(itertools.islice(batches, count))
    batches.close()
    return taken


def dataset(images, targets, **overrides):
    arguments = {"patch_size": 16, "batch_size": 2, "seed": 7, "first_epoch": 0, "steps_per_epoch": 3}
    return training_batches(images, targets, **(arguments | overrides))


@pytest.fixture
def random_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two random images of different sizes and their thresholded targets."""
    rng = np.random.default_rng(0)
    images = [rng.random((40, 50, 1), dtype=np.float32), rng.random((24, 30, 1), dtype=np.float32)]
    return images, [(image > 0.5).astype(np.uint8) for image in images]


# === training_batches ===


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


def test_transform_gets_each_batch_with_its_global_step(random_images):
    steps = []

    def transform(images, targets, step):
        steps.append(step)
        return images + step, targets

    plain = take(dataset(*random_images, first_epoch=2), 4)
    transformed = take(dataset(*random_images, first_epoch=2, transform=transform), 4)
    assert steps[:4] == [6, 7, 8, 9]  # epoch 2 of 3 steps starts at step 6
    for (image, _), (changed, _), step in zip(plain, transformed, steps, strict=False):
        np.testing.assert_array_equal(changed, image + step)


# === prefetched ===


def test_prefetched_keeps_order_and_raises_the_source_error():
    def source():
        yield from range(5)
        raise RuntimeError("broken file")

    items = prefetched(source(), depth=2)
    assert [next(items) for _ in range(5)] == list(range(5))
    with pytest.raises(RuntimeError, match="broken file"):
        next(items)


def test_closing_prefetched_stops_its_thread():
    items = prefetched(itertools.count(), depth=2)
    assert next(items) == 0
    items.close()
    deadline = time.monotonic() + 5
    while any(t.name == "training-batches" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "training-batches" for t in threading.enumerate())


# === process_share ===


def test_the_shares_of_two_processes_make_up_each_global_batch(random_images):
    batches = dataset(*random_images, batch_size=4)
    shares = [process_share(batches, (index, 2)) for index in (0, 1)]
    whole = take(dataset(*random_images, batch_size=4), 3)
    parts = [list(itertools.islice(iter(share), 3)) for share in shares]
    batches.close()
    for (image, target), (image_0, target_0), (image_1, target_1) in zip(whole, *parts, strict=True):
        assert image_0.shape[0] == image_1.shape[0] == 2
        np.testing.assert_array_equal(
            np.sort(np.concatenate([image_0, image_1]), axis=0), np.sort(image, axis=0)
        )
        np.testing.assert_array_equal(target_0, target[0::2])
        np.testing.assert_array_equal(target_1, target[1::2])


def test_validation_arrays_are_cut_to_equal_shares():
    images, targets = np.arange(7)[:, None], np.arange(7)[:, None] * 10
    first, second = (process_share((images, targets), (index, 2)) for index in (0, 1))
    assert first[0].ravel().tolist() == [0, 2, 4] and second[0].ravel().tolist() == [1, 3, 5]
    assert first[1].ravel().tolist() == [0, 20, 40]
    assert process_share((images, targets), (0, 1)) == (images, targets)


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
