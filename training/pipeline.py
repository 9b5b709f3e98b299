"""Input pipelines in numpy, the same on every Keras backend: random training patches with augmentation,
fixed validation patches.

Decoded, normalised images stay in memory once; patches are cut on the fly, so memory grows with the
dataset, not with the number of patches. The patch positions of epoch `e` come from a generator seeded
with (seed, e): a resumed run sees exactly the patches an uninterrupted run would have seen, whichever
backend runs it. A background thread prepares the next batches while the backend trains on the current
one (numpy releases the interpreter lock in its copies, so the two overlap).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

# Batches prepared ahead of the one being trained on.
PREFETCH = 4

Batch = tuple[np.ndarray, np.ndarray]


def pad_to_at_least(array: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad the first two axes of `array` up to `size` where they are shorter (never crop)."""
    pad_y, pad_x = max(size - array.shape[0], 0), max(size - array.shape[1], 0)
    if not pad_y and not pad_x:
        return array
    widths = [(pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)] + [(0, 0)] * (
        array.ndim - 2
    )
    return np.pad(array, widths, mode="symmetric")


def augmented(patch: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 symmetries of the square: rotation by `code % 4` counter-clockwise quarter turns,
    then, for codes 4 to 7, a left-right flip."""
    patch = np.rot90(patch, code % 4, axes=(0, 1))
    return patch[:, ::-1] if code >= 4 else patch


def training_batches(
    images: list[np.ndarray],
    targets: list[np.ndarray],
    *,
    patch_size: int,
    batch_size: int,
    seed: int,
    first_epoch: int,
    steps_per_epoch: int,
    augment: bool = True,
    transform: Callable[[np.ndarray, np.ndarray, int], Batch] | None = None,
) -> Batches:
    """Endless (image patch, target patch) batches, `steps_per_epoch` batches per epoch, from epoch
    `first_epoch` on, prepared in a background thread (see `Batches`).

    `images` are (Y, X, C) float32 and `targets` (Y, X, K) arrays of any dtype; images are drawn with
    probability proportional to their area so every pixel is equally likely to be seen. `transform`, if
    given, maps each batch and its global step index to the batch trained on (blind-spot masking).
    """
    images = [pad_to_at_least(im, patch_size) for im in images]
    targets = [pad_to_at_least(t, patch_size) for t in targets]
    areas = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
    probabilities = areas / areas.sum()

    def batches() -> Iterator[Batch]:
        step = first_epoch * steps_per_epoch
        for epoch in itertools.count(first_epoch):
            rng = np.random.default_rng([seed, epoch])
            for _ in range(steps_per_epoch):
                image_batch, target_batch = [], []
                for _ in range(batch_size):
                    i = rng.choice(len(images), p=probabilities)
                    y = rng.integers(images[i].shape[0] - patch_size + 1)
                    x = rng.integers(images[i].shape[1] - patch_size + 1)
                    window = np.s_[y : y + patch_size, x : x + patch_size]
                    code = int(rng.integers(8)) if augment else 0
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
