"""`tf.data` input pipelines: random training patches with augmentation, fixed validation patches.

Decoded, normalised images stay in memory once; patches are cut on the fly, so memory grows with the
dataset, not with the number of patches. The patch positions of epoch `e` come from a generator seeded
with (seed, e): a resumed run sees exactly the patches an uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf


def pad_to_at_least(array: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad the first two axes of `array` up to `size` where they are shorter (never crop)."""
    pad_y, pad_x = max(size - array.shape[0], 0), max(size - array.shape[1], 0)
    if not pad_y and not pad_x:
        return array
    widths = [(pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)] + [(0, 0)] * (
        array.ndim - 2
    )
    return np.pad(array, widths, mode="symmetric")


def _augment(image: tf.Tensor, target: tf.Tensor, code: tf.Tensor):
    """Apply one of the 8 symmetries of the square: rotation by `code % 4` quarter turns, then a flip."""
    image, target = tf.image.rot90(image, code % 4), tf.image.rot90(target, code % 4)
    flip = code >= 4
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    target = tf.cond(flip, lambda: tf.image.flip_left_right(target), lambda: target)
    return image, target


def training_dataset(
    images: list[np.ndarray],
    targets: list[np.ndarray],
    *,
    patch_size: int,
    batch_size: int,
    seed: int,
    first_epoch: int,
    steps_per_epoch: int,
    augment: bool = True,
) -> tf.data.Dataset:
    """An endless dataset of (image patch, target patch) batches, `steps_per_epoch` batches per epoch.

    `images` are (Y, X, C) float32 and `targets` (Y, X, K) arrays of any dtype; images are drawn with
    probability proportional to their area so every pixel is equally likely to be seen.
    """
    images = [pad_to_at_least(im, patch_size) for im in images]
    targets = [pad_to_at_least(t, patch_size) for t in targets]
    areas = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
    probabilities = areas / areas.sum()
    patches_per_epoch = steps_per_epoch * batch_size

    def patches():
        for epoch in itertools.count(first_epoch):
            rng = np.random.default_rng([seed, epoch])
            for _ in range(patches_per_epoch):
                i = rng.choice(len(images), p=probabilities)
                y = rng.integers(images[i].shape[0] - patch_size + 1)
                x = rng.integers(images[i].shape[1] - patch_size + 1)
                window = np.s_[y : y + patch_size, x : x + patch_size]
                yield images[i][window], targets[i][window], np.int32(rng.integers(8) if augment else 0)

    signature = (
        tf.TensorSpec((patch_size, patch_size, images[0].shape[-1]), tf.float32),
        tf.TensorSpec((patch_size, patch_size, targets[0].shape[-1]), tf.as_dtype(targets[0].dtype)),
        tf.TensorSpec((), tf.int32),
    )
    dataset = tf.data.Dataset.from_generator(patches, output_signature=signature)
    dataset = dataset.map(_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def grid_patches(
    images: list[np.ndarray], targets: list[np.ndarray], *, patch_size: int, max_patches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut images into patches on a regular grid covering each image (the last row and column aligned
    to the far edge), for a validation set that is the same at every epoch."""
    image_patches, target_patches = [], []
    for image, target in zip(images, targets, strict=True):
        image, target = pad_to_at_least(image, patch_size), pad_to_at_least(target, patch_size)
        ys = _grid_starts(image.shape[0], patch_size)
        xs = _grid_starts(image.shape[1], patch_size)
        for y, x in itertools.product(ys, xs):
            image_patches.append(image[y : y + patch_size, x : x + patch_size])
            target_patches.append(target[y : y + patch_size, x : x + patch_size])
    if len(image_patches) > max_patches:
        # Spread the kept patches over all images rather than keeping the first ones.
        keep = np.linspace(0, len(image_patches) - 1, max_patches).round().astype(int)
        image_patches = [image_patches[i] for i in keep]
        target_patches = [target_patches[i] for i in keep]
    return np.stack(image_patches), np.stack(target_patches)


def _grid_starts(length: int, size: int) -> list[int]:
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
