"""Tiled prediction of images of any size, equal to whole-image prediction.

Both first mirror `border` pixels around the image (`zoo.Geometry.border`), so that pixels at the image
edge see mirrored context instead of the network's zero padding, as bioimageio.core's tiled prediction of
an exported package does; the border is cut off the result.

Why the tiled result equals whole-image prediction: the image is first padded (bottom/right, mirrored) to a
multiple of the model's size step, exactly as for a whole-image prediction. Tiles then start on multiples
of the step, so every pooling window sees the same pixels as in the whole image, and each tile keeps only
its core, at least `halo` pixels away from any tile edge that is not an image edge, where the receptive
field no longer reaches the tile's zero padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np

from zoo import Geometry


def pad_to_step(image: np.ndarray, step: int) -> np.ndarray:
    """Mirror-pad a (Y, X, C) image at the bottom and right to a multiple of `step`."""
    pad_y, pad_x = -image.shape[0] % step, -image.shape[1] % step
    if not pad_y and not pad_x:
        return image
    return np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="symmetric")


def mirror_border(image: np.ndarray, border: int) -> np.ndarray:
    """Mirror-pad a (Y, X, C) image by `border` pixels on every side (numpy's `symmetric` mode)."""
    if not border:
        return image
    return np.pad(image, ((border, border), (border, border), (0, 0)), mode="symmetric")


Predictor = keras.Model | Callable[[np.ndarray], np.ndarray]


def _batch_predictor(model: Predictor) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a (B, Y, X, C) batch to the model's output: a Keras model's `predict_on_batch`, or
    any such function (an onnxruntime session, see `training.engines`)."""
    return model.predict_on_batch if isinstance(model, keras.Model) else model


def predict_whole(model: Predictor, image: np.ndarray, *, step: int, border: int = 0) -> np.ndarray:
    """Predict a (Y, X, C) image in one piece, after mirroring `border` pixels around it; returns
    (Y, X, K) float32."""
    if border:
        output = predict_whole(model, mirror_border(image, border), step=step)
        return output[border : border + image.shape[0], border : border + image.shape[1]]
    padded = pad_to_step(image, step)
    output = np.asarray(_batch_predictor(model)(padded[np.newaxis]), dtype=np.float32)[0]
    return output[: image.shape[0], : image.shape[1]]


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


def tiled_predict(
    model: Predictor,
    image: np.ndarray,
    *,
    step: int,
    halo: int,
    tile_size: int = 512,
    batch_size: int = 4,
    border: int = 0,
) -> np.ndarray:
    """Predict a (Y, X, C) image tile by tile; returns (Y, X, K) float32.

    Args:
        model: a fully convolutional model taking (batch, y, x, C).
        image: the image, already normalised as the model expects.
        step: the model's size step (input sizes must be multiples of it).
        halo: context each output pixel needs on each side (see `zoo.model_geometry`).
        tile_size: largest side of the tiles fed to the model (rounded up to a multiple of `step` and to
            more than twice the aligned halo); the tiles are made as small as their number allows, and an
            image that fits in one tile is predicted whole.
        batch_size: tiles per model call.
        border: pixels mirrored around the image before prediction (see the module doc).
    """
    if border:
        output = tiled_predict(
            model,
            mirror_border(image, border),
            step=step,
            halo=halo,
            tile_size=tile_size,
            batch_size=batch_size,
        )
        return output[border : border + image.shape[0], border : border + image.shape[1]]
    halo = math.ceil(halo / step) * step
    tile = max(math.ceil(tile_size / step) * step, 2 * halo + step)
    padded = pad_to_step(image, step)
    rows = _axis_tiles(padded.shape[0], tile, halo, step)
    cols = _axis_tiles(padded.shape[1], tile, halo, step)
    if len(rows) == 1 and len(cols) == 1:
        return predict_whole(model, image, step=step)

    predict_batch = _batch_predictor(model)
    output = None
    windows = [(r, c) for r in rows for c in cols]
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        batch = np.stack([padded[r[0] : r[1], c[0] : c[1]] for r, c in chunk])
        predictions = np.asarray(predict_batch(batch), dtype=np.float32)
        if output is None:
            output = np.zeros(padded.shape[:2] + predictions.shape[-1:], dtype=np.float32)
        for (r, c), prediction in zip(chunk, predictions, strict=True):
            output[r[2] : r[3], c[2] : c[3]] = prediction[
                r[2] - r[0] : r[3] - r[0], c[2] - c[0] : c[3] - c[0]
            ]
    return output[: image.shape[0], : image.shape[1]]


def predict_with_geometry(
    model: Predictor, image: np.ndarray, geometry: Geometry, *, tile_size: int, batch_size: int = 4
) -> np.ndarray:
    """`tiled_predict` with a model's step, halo and mirrored border (`zoo.model_geometry`), in tiles of
    at least 8 halos: the overlap computed twice then stays under 1.8 times the image (a deep U-Net's
    halo would otherwise take most of a small tile)."""
    return tiled_predict(
        model,
        image,
        step=geometry.step,
        halo=geometry.halo,
        tile_size=max(tile_size, 8 * math.ceil(geometry.halo / geometry.step) * geometry.step),
        batch_size=batch_size,
        border=geometry.border,
    )


def predict_tta(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> np.ndarray:
    """Average of `predict` over the 8 rotations and flips of a (Y, X, C) image (test-time augmentation),
    each prediction turned back before averaging. Suits models whose task does not depend on orientation."""
    total = None
    for flip in (False, True):
        flipped = image[:, ::-1] if flip else image
        for quarter_turns in range(4):
            output = np.rot90(predict(np.ascontiguousarray(np.rot90(flipped, quarter_turns))), -quarter_turns)
            output = output[:, ::-1] if flip else output
            total = output.astype(np.float64) if total is None else total + output
    return (total / 8).astype(np.float32)
