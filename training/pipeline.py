"""Input pipelines in numpy, the same on every Keras backend: random training patches with augmentation,
fixed validation patches, from images (Y, X, C) or volumes (Z, Y, X, C).

Decoded, normalised images stay in memory once; patches are cut on the fly, so memory grows with the
dataset, not with the number of patches. The patch positions of epoch `e` come from a generator seeded
with (seed, e): a resumed run sees exactly the patches an uninterrupted run would have seen, whichever
backend runs it. A background thread prepares the next batches while the backend trains on the current
one (numpy releases the interpreter lock in its copies, so the two overlap).
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from training.tiling import Size, per_axis

# Batches prepared ahead of the one being trained on.
PREFETCH = 4

Batch = tuple[np.ndarray, np.ndarray]


def pad_to_at_least(array: np.ndarray, size: Size) -> np.ndarray:
    """Mirror-pad the spatial axes of a (*spatial, C) array up to `size` (an int for every axis, or one
    per axis) where they are shorter, half on each side (never crop)."""
    sizes = per_axis(size, array.ndim - 1, "patch size")
    pads = [max(s - length, 0) for s, length in zip(sizes, array.shape[:-1], strict=True)]
    if not any(pads):
        return array
    if not isinstance(array, np.ndarray):  # read lazily (`training.lazy.LazyView`), thinner than a patch
        array = array.load()
    return np.pad(array, [(pad // 2, pad - pad // 2) for pad in pads] + [(0, 0)], mode="symmetric")


def augmented(patch: np.ndarray, code: int) -> np.ndarray:
    """One of the symmetries of a (*spatial, C) patch, acting on its y-x plane: rotation by `code % 4`
    counter-clockwise quarter turns, then, for codes 4 to 7, a left-right flip (the 8 symmetries of the
    square). Codes 8 to 15, for volumes, add a flip of z: a volume's z axis is usually sampled more
    coarsely than y and x, so it is never swapped with them."""
    y, x = patch.ndim - 3, patch.ndim - 2
    patch = np.rot90(patch, code % 4, axes=(y, x))
    if code % 8 >= 4:
        patch = np.flip(patch, axis=x)
    return np.flip(patch, axis=0) if code >= 8 else patch


def training_batches(
    images: list[np.ndarray],
    targets: list[np.ndarray],
    *,
    patch_size: Size,
    batch_size: int,
    seed: int,
    first_epoch: int,
    steps_per_epoch: int,
    augment: bool = True,
    transform: Callable[[np.ndarray, np.ndarray, int], Batch] | None = None,
) -> Batches:
    """Endless (image patch, target patch) batches, `steps_per_epoch` batches per epoch, from epoch
    `first_epoch` on, prepared in a background thread (see `Batches`).

    `images` are (*spatial, C) float32, images (Y, X, C) or volumes (Z, Y, X, C), and `targets`
    (*spatial, K) arrays of any dtype; `patch_size` is an int (every spatial axis) or one value per axis
    in the order (z,) y, x. Images are drawn with probability proportional to their number of pixels
    (voxels), so every pixel is equally likely to be seen. Augmentation draws one code of `augmented` per
    patch, one of 8 for images (exactly the numbers drawn before volumes existed) and of 16 for volumes.
    `transform`, if given, maps each batch and its global step index to the batch trained on (blind-spot
    masking).
    """
    patch = per_axis(patch_size, images[0].ndim - 1, "patch size")
    images = [pad_to_at_least(im, patch) for im in images]
    targets = [pad_to_at_least(t, patch) for t in targets]
    sizes = np.array([math.prod(im.shape[:-1]) for im in images], dtype=np.float64)
    probabilities = sizes / sizes.sum()
    codes = 8 if len(patch) == 2 else 16

    def batches() -> Iterator[Batch]:
        step = first_epoch * steps_per_epoch
        for epoch in itertools.count(first_epoch):
            rng = np.random.default_rng([seed, epoch])
            for _ in range(steps_per_epoch):
                image_batch, target_batch = [], []
                for _ in range(batch_size):
                    i = rng.choice(len(images), p=probabilities)
                    # One start per axis, z (if any), y then x: an image draws as it always has.
                    corner = [
                        rng.integers(length - size + 1)
                        for length, size in zip(images[i].shape[:-1], patch, strict=True)
                    ]
                    window = _window(corner, patch)
                    code = int(rng.integers(codes)) if augment else 0
                    image_batch.append(augmented(images[i][window], code))
                    target_batch.append(augmented(targets[i][window], code))
                batch = np.stack(image_batch).astype(np.float32, copy=False), np.stack(target_batch)
                yield transform(*batch, step) if transform is not None else batch
                step += 1

    return Batches(batches)


class Batches:
    """An iterable of batches: each iteration starts the stream anew from its first batch (the same
    batches every time) and prepares it in its own thread; `close` stops every such thread."""

    def __init__(self, make: Callable[[], Iterator[Batch]]):
        self._make = make
        self._open: list = []

    def __iter__(self) -> Iterator[Batch]:
        stream = prefetched(self._make())
        self._open.append(stream)
        return stream

    def close(self) -> None:
        for stream in self._open:
            stream.close()
        self._open.clear()


def prefetched(source: Iterator[Batch], depth: int = PREFETCH) -> Iterator[Batch]:
    """The items of `source`, produced up to `depth` ahead by a daemon thread. Closing the returned
    generator (or dropping it) stops the thread; an exception in `source` is raised here."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, raised there
            ready.put((None, error))

    thread = threading.Thread(target=produce, name="training-batches", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            yield item
    finally:
        stop.set()


def process_share(batches, share: tuple[int, int]):
    """This process's rows of every batch, where `share` = (index, count) processes feed one global batch
    (JAX on several machines): each draws the same global batches and keeps its own slice."""
    index, count = share
    if count == 1:
        return batches
    if isinstance(batches, tuple):  # the validation arrays, cut to a multiple of `count` rows first
        return tuple(array[: len(array) - len(array) % count][index::count] for array in batches)
    return _Share(batches, index, count)


class _Share:
    """Rows index, index + count, ... of every batch of an iterable of batches, itself re-iterable."""

    def __init__(self, batches, index: int, count: int):
        self.batches, self.index, self.count = batches, index, count

    def __iter__(self):
        return ((x[self.index :: self.count], y[self.index :: self.count]) for x, y in self.batches)


def grid_patches(
    images: list[np.ndarray], targets: list[np.ndarray], *, patch_size: Size, max_patches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut (*spatial, C) images or volumes into patches on a regular grid covering each one (the last
    patch along each axis aligned to the far edge), for a validation set that is the same at every
    epoch. `patch_size` is an int (every spatial axis) or one value per axis (z,) y, x."""
    patch = per_axis(patch_size, images[0].ndim - 1, "patch size")
    image_patches, target_patches = [], []
    for image, target in zip(images, targets, strict=True):
        image, target = pad_to_at_least(image, patch), pad_to_at_least(target, patch)
        starts = [_grid_starts(length, size) for length, size in zip(image.shape[:-1], patch, strict=True)]
        for corner in itertools.product(*starts):
            image_patches.append(image[_window(corner, patch)])
            target_patches.append(target[_window(corner, patch)])
    if len(image_patches) > max_patches:
        # Spread the kept patches over all images rather than keeping the first ones.
        keep = np.linspace(0, len(image_patches) - 1, max_patches).round().astype(int)
        image_patches = [image_patches[i] for i in keep]
        target_patches = [target_patches[i] for i in keep]
    return np.stack(image_patches), np.stack(target_patches)


def _window(corner: list[int], patch: tuple[int, ...]) -> tuple[slice, ...]:
    """The slices of the patch of shape `patch` whose first pixel is at `corner`."""
    return tuple(slice(start, start + size) for start, size in zip(corner, patch, strict=True))


def _grid_starts(length: int, size: int) -> list[int]:
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
