"""Blind-spot masking for Noise2Void-style self-supervised denoising, and the loss that goes with it.

Noise2Void (Krull et al., CVPR 2019) trains on noisy images alone: a few pixels of each patch are
replaced by a value that carries none of their own noise, and the loss is taken only at those pixels,
against their original noisy values. Since pixel noise is independent, the network cannot predict it
and learns the clean signal instead. N2V2 (Hoeck et al., 2022) replaces with the median of the
neighbourhood, which removes the checkerboard artefacts of the random-neighbour replacement.
structN2V (Broaddus et al., ISBI 2020) also hides a short line of pixels along one axis, for noise
that is correlated along that axis (e.g. line-scan stripes).

Images (B, Y, X, C) and volumes (B, Z, Y, X, C) go through the same code: every step (grid boxes,
neighbourhood, mirroring, structN2V line) is written over the spatial axes, whatever their number.

The mask travels in the training target, `concat(original, mask)` on the channel axis, never inside
the model: the saved network stays a plain image-to-image model that any consumer can run.

Masking is numpy on batches of patches, done by the input pipeline before a batch reaches the
backend: the same seed gives the same masked patches under TensorFlow, JAX and PyTorch. The loss is
`keras.ops`, so it runs on every backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops
from scipy import ndimage

REPLACEMENTS = ("uniform", "median", "zero", "mean")
LOSS_KINDS = ("mse", "mae")

MAX_FRACTION = 0.25
MAX_RADIUS = 10
MAX_STRUCT_SPAN = 10


def grid_box_side(fraction: float, ndim: int = 2) -> int:
    """Side of the square (ndim 2) or cubic (ndim 3) grid boxes that each receive one masked pixel,
    for a masked `fraction`.

    This is the integer side whose density 1/side^ndim is nearest to `fraction`, so the masked
    fraction means the same in images and volumes: the chance of each pixel to be masked. In 2D it
    equals round(1/sqrt(fraction)) except near the half-way points, where rounding in 1/sqrt space
    would miss the requested fraction by up to 27% (fraction 0.0494 gives side 4, density 0.0625);
    choosing by density keeps the error below 22% for every fraction up to 0.05. Cubic densities lie
    further apart, so in 3D the same rule keeps the error below 20% only up to 1/7³ (about 0.003,
    which covers N2V's usual 0.2%) and lets it grow to 54% for fractions near the largest, 0.25.
    """
    _check_fraction(fraction)
    if not _is_number_in(ndim, 1, math.inf, integer=True):
        raise ValueError(f"ndim must be a positive integer, got {ndim!r}")
    # The nearest density is at floor or ceil of fraction^(-1/ndim); a floor off by one through
    # rounding happens only next to an integer side, which is then the nearest and still a candidate.
    low = max(math.floor(fraction ** (-1.0 / ndim)), 1)
    return min((low, low + 1), key=lambda side: abs(1.0 / side**ndim - fraction))


def blind_spot_mask(
    patches: np.ndarray,
    seed: Sequence[int],
    *,
    fraction: float = 0.002,
    radius: int = 2,
    replacement: str = "uniform",
    struct_axis: int | None = None,
    struct_span: int = 0,
    independent_channels: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Hide a stratified sample of pixels of each patch; return the network input and the training target.

    Args:
        patches: (B, Y, X, C) images or (B, Z, Y, X, C) volumes; cast to float32. "Pixel" below means
            voxel for volumes.
        seed: a sequence of non-negative integers seeding numpy's generator; the same seed gives the same
            output.
        fraction: fraction of pixels masked per patch and channel, in (0, 0.25]. Each patch is cut into
            square (cubic) boxes of side `grid_box_side(fraction, ndim)` and one pixel is drawn
            uniformly in each box, so masked pixels are well spread and every full box holds exactly one.
        radius: half-width of the (2r+1)² ((2r+1)³) neighbourhood the replacement comes from, 1..10.
        replacement: "uniform" (value of a random neighbour, never the centre), "median" (median of
            the neighbourhood without the centre, N2V2), "zero", or "mean" (mean of the neighbourhood
            without the centre).
        struct_axis: structN2V axis, counted over the spatial axes: images 0 (along y) or 1 (along x),
            volumes 0 (along z), 1 (y) or 2 (x); None for plain N2V.
        struct_span: structN2V pixels hidden on each side of the centre along `struct_axis`, 0..10
            (0 = off). They get random values uniform in [min, max] of their patch and channel.
        independent_channels: True draws separate positions for each channel; False masks the same
            positions in all channels (and "uniform" then takes all channels from the same neighbour).

    Returns:
        (masked patches (B, ..., C), target (B, ..., 2C) = concat(original patches, mask)), float32,
        where the mask is 0/1 and marks only the centres: the structN2V line is hidden but not scored.

    Boxes cut by the far patch edge are kept: a position is drawn in the whole box and dropped when it
    falls outside the patch. So every pixel, edge pixels included, is masked with probability
    1/side^ndim, edge pixels are neither over-trained (as when always drawing inside the cut box) nor
    never trained (as when dropping cut boxes), and only the count from cut boxes varies.

    Neighbourhoods mirror at the patch border (numpy "reflect": index -1 reads index 1, no wrap).
    Neighbours whose mirrored position is the centre pixel itself, or lies on the hidden structN2V
    line, are left out of every replacement: they would leak the noise the network must not see.
    Replacements are computed at the masked pixels only, from the original values, so the cost grows
    with fraction x (2r+1)^ndim.
    """
    _check_options(fraction, radius, replacement, struct_axis, struct_span)
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim not in (4, 5):
        raise ValueError(
            f"patches must have shape (B, Y, X, C) or (B, Z, Y, X, C), got shape {patches.shape}"
        )
    _check_struct_axis(struct_axis, patches.ndim - 2)
    seed = list(np.ravel(seed))
    if not seed or not all(isinstance(s, numbers.Integral) and s >= 0 for s in seed):
        raise ValueError(f"seed must be a non-empty sequence of non-negative integers, got {seed!r}")
    position_rng, choice_rng, struct_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(s) for s in seed]).spawn(3)
    )
    span = struct_span if struct_axis is not None else 0
    original = patches
    batch, *spatial, channels = patches.shape
    if independent_channels:
        # Each channel becomes its own single-channel patch, so one code path serves both modes.
        patches = np.moveaxis(patches, -1, 1).reshape(batch * channels, *spatial, 1)

    side = grid_box_side(fraction, len(spatial))
    positions = _stratified_positions(patches.shape[:-1], side, position_rng)  # (b, [z,] y, x)
    masked = patches.copy()
    if span > 0:
        masked = _hide_struct_lines(masked, positions, struct_axis, span, struct_rng)
    masked[positions] = _replacement_values(
        patches, positions, radius, replacement, struct_axis, span, choice_rng
    )

    mask = np.zeros(patches.shape, np.float32)
    mask[positions] = 1.0
    if independent_channels:
        masked = np.moveaxis(masked.reshape(batch, channels, *spatial), 1, -1)
        mask = np.moveaxis(mask.reshape(batch, channels, *spatial), 1, -1)
    return np.ascontiguousarray(masked), np.concatenate([original, mask], axis=-1)


def masked_pixel_count(target):
    """Number of masked pixels (summed over channels) of each sample of a (B, ..., 2C) target, image or
    volume."""
    target = ops.convert_to_tensor(target)
    channels = target.shape[-1] // 2
    return ops.sum(target[..., channels:], axis=tuple(range(1, len(target.shape))))


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class MaskedLoss(keras.losses.Loss):
    """MSE or MAE over masked pixels only, for blind-spot (Noise2Void) training.

    `y_true` is `concat(target, mask)` on the channel axis (2C channels), as made by
    `blind_spot_mask`; `y_pred` has C channels. The value of each sample is
    sum(mask * error) / max(sum(mask), 1) over all its axes (images and volumes alike), so a patch
    without masked pixels adds 0 rather than NaN.
    """

    def __init__(self, kind: str = "mse", name: str = "masked_loss", **kwargs):
        if kind not in LOSS_KINDS:
            raise ValueError(f"MaskedLoss kind must be one of {LOSS_KINDS}, got {kind!r}")
        super().__init__(name=name, **kwargs)
        self.kind = kind

    def call(self, y_true, y_pred):
        channels = y_pred.shape[-1]
        target, mask = y_true[..., :channels], y_true[..., channels:]
        difference = target - y_pred
        error = ops.square(difference) if self.kind == "mse" else ops.abs(difference)
        axes = tuple(range(1, len(y_pred.shape)))
        return ops.sum(mask * error, axis=axes) / ops.maximum(ops.sum(mask, axis=axes), 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind}


# === Positions ===


def _stratified_positions(
    shape: tuple[int, ...], side: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """(b, [z,] y, x) index arrays: one position drawn uniformly in each box of side `side` of each of
    the `shape` = (B, [Z,] Y, X) patches, dropped where it falls off the patch."""
    batch, *spatial = shape
    ndim = len(spatial)
    boxes = [-(-size // side) for size in spatial]
    offsets = rng.integers(side, size=(ndim, batch, *boxes))
    coords = []
    for axis, count in enumerate(boxes):
        along = [1] * (ndim + 1)
        along[axis + 1] = count
        coords.append(np.arange(count).reshape(along) * side + offsets[axis])
    b = np.broadcast_to(np.arange(batch).reshape(-1, *[1] * ndim), coords[0].shape)
    inside = np.logical_and.reduce([c < size for c, size in zip(coords, spatial, strict=True)])
    return (b[inside], *(c[inside] for c in coords))


# === Replacement values ===


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Mirror indices into [0, size) without repeating the edge (numpy "reflect"), for any distance."""
    period = max(2 * (size - 1), 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def _replacement_values(
    patches: np.ndarray,
    positions: tuple[np.ndarray, ...],
    radius: int,
    replacement: str,
    struct_axis: int | None,
    span: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(N, C) values for the N masked `positions` (b, [z,] y, x), computed from the original patches."""
    b, *centre = (p[:, None] for p in positions)
    if replacement == "zero":
        return np.zeros((b.shape[0], patches.shape[-1]), np.float32)
    # Mirroring works axis by axis, so each axis gets its (N, 2r+1) window once, shaped to broadcast
    # into an (N, 2r+1, ..., 2r+1) block; flattened row-major, that block is the (N, K) window.
    ndim, window = len(centre), np.arange(-radius, radius + 1)
    count, cells = len(b), window.size**ndim
    sources, blind = [], np.ones((count, *(window.size,) * ndim), bool)
    for axis, (c, size) in enumerate(zip(centre, patches.shape[1:-1], strict=True)):
        along = [count] + [window.size if a == axis else 1 for a in range(ndim)]
        source = _mirror(c + window, size)
        # The blind set is the centre plus the hidden structN2V line, judged by the mirrored source
        # position so that a mirrored copy of the centre near the border is excluded as well.
        blind &= (np.abs(source - c) <= (span if axis == struct_axis else 0)).reshape(along)
        sources.append(source.reshape(along))
    candidate = ~blind.reshape(count, cells)  # (N, K)
    neighbours = patches[(b.reshape(count, *[1] * ndim), *sources)]
    neighbours = neighbours.reshape(count, cells, patches.shape[-1])  # (N, K, C)

    if replacement == "uniform":
        scores = np.where(candidate, rng.random(candidate.shape), -1.0)
        return neighbours[np.arange(len(neighbours)), np.argmax(scores, axis=1)]
    if replacement == "mean":
        total = np.where(candidate[..., None], neighbours, 0.0).sum(axis=1)
        return (total / np.maximum(candidate.sum(axis=1), 1)[:, None]).astype(np.float32)
    # Median (numpy's convention: the mean of the two middle values for an even count). The blind set
    # is at most a line through the window, so candidates remain unless the patch is one pixel thin
    # across a struct line as long as the window (then NaN here, and "uniform" would take the centre).
    return np.nanmedian(np.where(candidate[..., None], neighbours, np.nan), axis=1).astype(np.float32)


def _hide_struct_lines(
    patches: np.ndarray,
    positions: tuple[np.ndarray, ...],
    axis: int,
    span: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Overwrite pixels within `span` of each centre along spatial `axis` with random values in the
    range of their patch and channel."""
    centres = np.zeros(patches.shape[:-1], bool)
    centres[positions] = True
    line = ndimage.maximum_filter1d(centres, 2 * span + 1, axis=axis + 1, mode="constant")
    spatial_axes = tuple(range(1, patches.ndim - 1))
    low = patches.min(axis=spatial_axes, keepdims=True)
    high = patches.max(axis=spatial_axes, keepdims=True)
    noise = low + (high - low) * rng.random(patches.shape, dtype=np.float32)
    # Centres are overwritten afterwards with their own replacement.
    return np.where(line[..., None], noise, patches)


# === Argument checks ===


def _is_number_in(value, low: float, high: float, *, integer: bool) -> bool:
    # bool is an int in Python, but radius=True is a bug, not a radius of 1.
    kind = numbers.Integral if integer else numbers.Real
    return isinstance(value, kind) and not isinstance(value, bool) and low <= value <= high


def _check_fraction(fraction: float) -> None:
    if not _is_number_in(fraction, 0.0, MAX_FRACTION, integer=False) or fraction == 0:
        raise ValueError(f"fraction must be in (0, {MAX_FRACTION}], got {fraction!r}")


def _check_options(
    fraction: float, radius: int, replacement: str, struct_axis: int | None, struct_span: int
) -> None:
    _check_fraction(fraction)
    if not _is_number_in(radius, 1, MAX_RADIUS, integer=True):
        raise ValueError(f"radius must be an integer in 1..{MAX_RADIUS}, got {radius!r}")
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {replacement!r}")
    if not _is_number_in(struct_span, 0, MAX_STRUCT_SPAN, integer=True):
        raise ValueError(f"struct_span must be an integer in 0..{MAX_STRUCT_SPAN}, got {struct_span!r}")
    if struct_span > 0 and struct_axis is None:
        raise ValueError(
            f"struct_span={struct_span} needs a struct_axis (the spatial axis of the hidden line)"
        )


def _check_struct_axis(struct_axis: int | None, ndim: int) -> None:
    """The structN2V axis counts the spatial axes of the patches, so which ones exist depends on them."""
    if struct_axis is None or _is_number_in(struct_axis, 0, ndim - 1, integer=True):
        return
    names = ("y", "x") if ndim == 2 else ("z", "y", "x")
    choices = ", ".join(f"{axis} (along {name})" for axis, name in enumerate(names))
    kind = "images (B, Y, X, C)" if ndim == 2 else "volumes (B, Z, Y, X, C)"
    raise ValueError(f"struct_axis for {kind} must be None, {choices}; got {struct_axis!r}")
