"""Tiled prediction of images and volumes of any size, equal to whole-image prediction.

An image is (Y, X, C) and a volume (Z, Y, X, C); every size below (`step`, `halo`, `border`,
`tile_size`) is an int, the same on every spatial axis, or one value per spatial axis in the order
(z,) y, x, as `zoo.Geometry` gives them: a volume's z axis usually pools less and needs less context.

Both first mirror `border` pixels around the image (`zoo.Geometry.borders`), so that pixels at the image
edge see mirrored context instead of the network's zero padding, as bioimageio.core's tiled prediction of
an exported package does; the border is cut off the result.

Why the tiled result equals whole-image prediction: the image is first padded (bottom/right, mirrored) to a
multiple of the model's size step, exactly as for a whole-image prediction. Tiles then start on multiples
of the step, so every pooling window sees the same pixels as in the whole image, and each tile keeps only
its core, at least `halo` pixels away from any tile edge that is not an image edge, where the receptive
field no longer reaches the tile's zero padding. All of this holds axis by axis, so the tiles of a volume
are the product of the tiles of its axes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

from zoo import Geometry

# A size given once for every spatial axis, or once per spatial axis in the order (z,) y, x.
Size = int | Sequence[int]

# The most pixels (voxels) that `predict_with_geometry` feeds the model in one call: eight times the
# 2D default (4 tiles of 512 x 512), or one 64 x 362 x 362 tile of a volume. A call's memory grows in
# proportion (docs/benchmarks.md measures it).
MAX_CALL_VOXELS = 2**23


def per_axis(size: Size, axes: int, name: str = "size") -> tuple[int, ...]:
    """`size` as one int per spatial axis: an int repeated `axes` times, or a sequence of `axes` ints. The
    one place sizes are checked against an image, so a 2D size for a volume fails here, by name."""
    if isinstance(size, int | np.integer):
        return (int(size),) * axes
    sizes = tuple(int(value) for value in size)
    if len(sizes) != axes:
        raise ValueError(f"{name} {tuple(size)} has {len(sizes)} values for an image of {axes} spatial axes")
    return sizes


def _crop(output: np.ndarray, starts: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """`output[start : start + length]` on each leading axis, channels kept."""
    return output[tuple(slice(start, start + length) for start, length in zip(starts, shape, strict=True))]


def pad_to_step(image: np.ndarray, step: Size) -> np.ndarray:
    """Mirror-pad a (*spatial, C) image at the far end of each spatial axis (bottom, right, last slice)
    to a multiple of `step`."""
    steps = per_axis(step, image.ndim - 1, "step")
    pads = [-length % s for length, s in zip(image.shape[:-1], steps, strict=True)]
    if not any(pads):
        return image
    return np.pad(image, [(0, pad) for pad in pads] + [(0, 0)], mode="symmetric")


def mirror_border(image: np.ndarray, border: Size) -> np.ndarray:
    """Mirror-pad a (*spatial, C) image by `border` pixels on both sides of each spatial axis (numpy's
    `symmetric` mode)."""
    borders = per_axis(border, image.ndim - 1, "border")
    if not any(borders):
        return image
    return np.pad(image, [(b, b) for b in borders] + [(0, 0)], mode="symmetric")


Predictor = keras.Model | Callable[[np.ndarray], np.ndarray]


def _batch_predictor(model: Predictor) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a (B, *spatial, C) batch to the model's output: a Keras model's `predict_on_batch`,
    or any such function (an onnxruntime session, see `training.engines`)."""
    return model.predict_on_batch if isinstance(model, keras.Model) else model


def predict_whole(model: Predictor, image: np.ndarray, *, step: Size, border: Size = 0) -> np.ndarray:
    """Predict a (*spatial, C) image in one piece, after mirroring `border` pixels around it; returns
    (*spatial, K) float32."""
    spatial = image.shape[:-1]
    borders = per_axis(border, len(spatial), "border")
    if any(borders):
        return _crop(predict_whole(model, mirror_border(image, borders), step=step), borders, spatial)
    padded = pad_to_step(image, step)
    output = np.asarray(_batch_predictor(model)(padded[np.newaxis]), dtype=np.float32)[0]
    return _crop(output, (0,) * len(spatial), spatial)


def _axis_tiles(length: int, max_tile: int, halo: int, step: int) -> list[tuple[int, int, int, int]]:
    """(input start, input stop, core start, core stop) of each tile along one axis.

    As few tiles as fit in `max_tile`, then the smallest tile size (a multiple of `step`) with which that
    many cover the axis: the overlap computed twice is as small as it can be. Starts are multiples of the
    step; the cores partition the axis and keep `halo` pixels from every tile edge inside the image.
    """
    if length <= max_tile:
        return [(0, length, 0, length)]
    count = math.ceil((length - 2 * halo) / (max_tile - 2 * halo))
    tile = min(math.ceil((length + 2 * halo * (count - 1)) / count / step) * step, max_tile)
    starts = sorted({min(i * (tile - 2 * halo), length - tile) for i in range(count)})
    tiles = []
    for i, start in enumerate(starts):
        core_start = 0 if i == 0 else start + halo
        core_stop = length if i == len(starts) - 1 else starts[i + 1] + halo
        tiles.append((start, start + tile, core_start, core_stop))
    return tiles


def _within(
    max_voxels: int, tiles: list[int], batch_size: int, *, steps: Sequence[int], halos: Sequence[int]
) -> tuple[list[int], int]:
    """Tile sides and tiles per call whose voxels together stay within `max_voxels`: fewer tiles per call
    first, then, one step at a time, a shorter side where the tile holds the most halos (the side whose
    overlap costs least to grow), down to two halos and one step."""
    tiles = list(tiles)
    floors = [2 * h + s for h, s in zip(halos, steps, strict=True)]
    batch_size = max(1, min(batch_size, max_voxels // math.prod(tiles)))
    while math.prod(tiles) > max_voxels:
        shrinkable = [
            axis for axis, (t, f) in enumerate(zip(tiles, floors, strict=True)) if t - steps[axis] >= f
        ]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: tiles[a] / max(halos[a], 1))
        tiles[axis] -= steps[axis]
    return tiles, batch_size


def tiled_predict(
    model: Predictor,
    image: np.ndarray,
    *,
    step: Size,
    halo: Size,
    tile_size: Size = 512,
    batch_size: int = 4,
    border: Size = 0,
    max_voxels: int | None = None,
) -> np.ndarray:
    """Predict a (*spatial, C) image, 2D or 3D, tile by tile; returns (*spatial, K) float32.

    Args:
        model: a fully convolutional model taking (batch, *spatial, C).
        image: the image, already normalised as the model expects.
        step: the model's size step (input sizes must be multiples of it), per axis or for all.
        halo: context each output pixel needs on each side (see `zoo.model_geometry`), likewise.
        tile_size: largest side of the tiles fed to the model, per axis or the same on every axis (a
            volume's z axis shorter than it is then one tile deep; pass a tuple to keep 3D tiles
            small). Each side is rounded up to a multiple of the step and to more than twice the aligned
            halo; the tiles are made as small as their number allows, and an image that fits in one
            tile is predicted whole.
        batch_size: tiles per model call.
        border: pixels mirrored around the image before prediction (see the module doc), likewise.
        max_voxels: most pixels (voxels) one model call may take, all its tiles together, which bounds
            the memory of a call: fewer tiles per call first, then smaller tiles, shrinking the side
            with the most halos in it, never below one step of core between two halos. None: no bound.
    """
    spatial = image.shape[:-1]
    borders = per_axis(border, len(spatial), "border")
    if any(borders):
        output = tiled_predict(
            model,
            mirror_border(image, borders),
            step=step,
            halo=halo,
            tile_size=tile_size,
            batch_size=batch_size,
            max_voxels=max_voxels,
        )
        return _crop(output, borders, spatial)
    steps = per_axis(step, len(spatial), "step")
    halos = [math.ceil(h / s) * s for h, s in zip(per_axis(halo, len(spatial), "halo"), steps, strict=True)]
    tiles = [
        max(math.ceil(t / s) * s, 2 * h + s)
        for t, s, h in zip(per_axis(tile_size, len(spatial), "tile_size"), steps, halos, strict=True)
    ]
    padded = pad_to_step(image, steps)
    tiles = [min(tile, length) for tile, length in zip(tiles, padded.shape[:-1], strict=True)]
    if max_voxels is not None:
        tiles, batch_size = _within(max_voxels, tiles, batch_size, steps=steps, halos=halos)
    axes = [_axis_tiles(*axis) for axis in zip(padded.shape[:-1], tiles, halos, steps, strict=True)]
    if all(len(axis) == 1 for axis in axes):
        return predict_whole(model, image, step=steps)

    predict_batch = _batch_predictor(model)
    output = None
    windows = list(itertools.product(*axes))
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        batch = np.stack([padded[tuple(slice(t[0], t[1]) for t in window)] for window in chunk])
        predictions = np.asarray(predict_batch(batch), dtype=np.float32)
        if output is None:
            output = np.zeros(padded.shape[:-1] + predictions.shape[-1:], dtype=np.float32)
        for window, prediction in zip(chunk, predictions, strict=True):
            output[tuple(slice(t[2], t[3]) for t in window)] = prediction[
                tuple(slice(t[2] - t[0], t[3] - t[0]) for t in window)
            ]
    return _crop(output, (0,) * len(spatial), spatial)


def predict_with_geometry(
    model: Predictor,
    image: np.ndarray,
    geometry: Geometry,
    *,
    tile_size: Size,
    batch_size: int = 4,
    max_voxels: int | None = MAX_CALL_VOXELS,
) -> np.ndarray:
    """`tiled_predict` with a model's steps, halos and mirrored borders per axis (`zoo.model_geometry`),
    in tiles of at least 8 halos along each axis: the overlap computed twice then stays under 1.8 times
    the image (a deep U-Net's halo would otherwise take most of a small tile). A tile is never longer
    than the padded image along an axis, however many halos that leaves it, and a call never takes more
    than `max_voxels` (a volume's tiles are then fewer per call, and smaller, than 8 halos allow)."""
    axes = image.ndim - 1
    steps = per_axis(geometry.steps, axes, "the model's steps")
    halos = per_axis(geometry.halos, axes, "the model's halos")
    tiles = [
        max(t, 8 * math.ceil(h / s) * s)
        for t, s, h in zip(per_axis(tile_size, axes, "tile_size"), steps, halos, strict=True)
    ]
    return tiled_predict(
        model,
        image,
        step=steps,
        halo=halos,
        tile_size=tiles,
        batch_size=batch_size,
        border=geometry.borders,
        max_voxels=max_voxels,
    )


def predict_tta(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> np.ndarray:
    """Average of `predict` over the 8 rotations and flips of the y-x plane of a (*spatial, C) image
    (test-time augmentation), each prediction turned back before averaging. A volume is turned only
    about its z axis, which is usually sampled more coarsely than y and x. Suits models whose task does
    not depend on orientation."""
    plane = (image.ndim - 3, image.ndim - 2)  # y and x
    total = None
    for flip in (False, True):
        flipped = image[..., ::-1, :] if flip else image
        for quarter_turns in range(4):
            turned = np.ascontiguousarray(np.rot90(flipped, quarter_turns, axes=plane))
            output = np.rot90(predict(turned), -quarter_turns, axes=plane)
            output = output[..., ::-1, :] if flip else output
            total = output.astype(np.float64) if total is None else total + output
    return (total / 8).astype(np.float32)
