"""Blind-spot masking for Noise2Void-style self-supervised denoising, and the loss that goes with it.

Noise2Void (Krull et al., CVPR 2019) trains on noisy images alone: a few pixels of each patch are
replaced by a value that carries none of their own noise, and the loss is taken only at those pixels,
against their original noisy values. Since pixel noise is independent, the network cannot predict it
and learns the clean signal instead. N2V2 (Hoeck et al., 2022) replaces with the median of the
neighbourhood, which removes the checkerboard artefacts of the random-neighbour replacement.
structN2V (Broaddus et al., ISBI 2020) also hides a short line of pixels along one axis, for noise
that is correlated along that axis (e.g. line-scan stripes).

The mask travels in the training target, `concat(original, mask)` on the channel axis, never inside
the model: the saved network stays a plain image-to-image model that any consumer can run.

Everything here is TensorFlow ops on batched tensors, so `blind_spot_mask` runs inside
`tf.data.Dataset.map` and `tf.function`, and is deterministic for a given stateless seed.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

REPLACEMENTS = ("uniform", "median", "zero", "mean")
LOSS_KINDS = ("mse", "mae")

MAX_FRACTION = 0.25
MAX_RADIUS = 10
MAX_STRUCT_SPAN = 10


def grid_box_side(fraction: float) -> int:
    """Side of the square grid boxes that each receive one masked pixel, for a masked `fraction`.

    This is the integer side whose density 1/side² is nearest to `fraction`. It equals
    round(1/sqrt(fraction)) except near the half-way points, where rounding in 1/sqrt space would
    miss the requested fraction by up to 27% (fraction 0.0494 gives side 4, density 0.0625); choosing
    by density keeps the error below 22% for every fraction up to 0.05.
    """
    _check_fraction(fraction)
    low = max(math.floor(1.0 / math.sqrt(fraction)), 1)
    return min((low, low + 1), key=lambda side: abs(1.0 / side**2 - fraction))


def blind_spot_mask(
    patches: tf.Tensor,
    seed: tf.Tensor,
    *,
    fraction: float = 0.002,
    radius: int = 2,
    replacement: str = "uniform",
    struct_axis: int | None = None,
    struct_span: int = 0,
    independent_channels: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hide a stratified sample of pixels of each patch; return the network input and the training target.

    Args:
        patches: (B, H, W, C) float patches; cast to float32.
        seed: shape (2,) int32/int64 seed of the stateless random ops; the same seed gives the same output.
        fraction: fraction of pixels masked per patch and channel, in (0, 0.25]. Each patch is cut into
            square boxes of side `grid_box_side(fraction)` and one pixel is drawn uniformly in each box,
            so masked pixels are well spread and every full box holds exactly one.
        radius: half-width of the (2r+1)² neighbourhood the replacement comes from, 1..10.
        replacement: "uniform" (value of a random neighbour, never the centre), "median" (median of
            the neighbourhood without the centre, N2V2), "zero", or "mean" (mean of the neighbourhood
            without the centre).
        struct_axis: structN2V axis, 0 (along y) or 1 (along x), or None for plain N2V.
        struct_span: structN2V pixels hidden on each side of the centre along `struct_axis`, 0..10
            (0 = off). They get random values uniform in [min, max] of their patch and channel.
        independent_channels: True draws separate positions for each channel; False masks the same
            positions in all channels (and "uniform" then takes all channels from the same neighbour).

    Returns:
        (masked patches (B, H, W, C), target (B, H, W, 2C) = concat(original patches, mask)), where the
        mask is float32 0/1 and marks only the centres: the structN2V line is hidden but not scored.

    Boxes cut by the far patch edge are kept: a position is drawn in the whole box and dropped when it
    falls outside the patch. So every pixel, edge pixels included, is masked with probability
    1/side², edge pixels are neither over-trained (as when always drawing inside the cut box) nor
    never trained (as when dropping cut boxes), and only the count from cut boxes varies.

    Neighbourhoods mirror at the patch border (numpy "reflect": index -1 reads index 1, no wrap).
    Neighbours whose mirrored position is the centre pixel itself, or lies on the hidden structN2V
    line, are left out of every replacement: they would leak the noise the network must not see.
    Replacements are computed at the masked pixels only, from the original values, so the cost grows
    with fraction x (2r+1)²; "median" sorts those values and is the slowest at large radii.
    """
    _check_options(fraction, radius, replacement, struct_axis, struct_span)
    patches = tf.cast(tf.convert_to_tensor(patches), tf.float32)
    if patches.shape.rank is not None and patches.shape.rank != 4:
        raise ValueError(f"patches must have shape (B, H, W, C), got shape {patches.shape}")
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank is not None and seed.shape != (2,):
        raise ValueError(f"seed must have shape (2,), got shape {seed.shape}")
    position_seed, choice_seed, struct_seed = tf.unstack(tf.random.split(seed, num=3))
    span = struct_span if struct_axis is not None else 0
    original = patches

    shape = tf.shape(patches)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    if independent_channels:
        # Each channel becomes its own single-channel patch, so one code path serves both modes.
        patches = tf.reshape(tf.transpose(patches, (0, 3, 1, 2)), (batch * channels, height, width, 1))

    centres = _stratified_positions(patches, grid_box_side(fraction), position_seed)
    masked = patches
    if span > 0:
        masked = _hide_struct_lines(masked, centres, struct_axis, span, struct_seed)
    positions = tf.cast(tf.where(centres), tf.int32)
    values = _replacement_values(patches, positions, radius, replacement, struct_axis, span, choice_seed)
    masked = tf.tensor_scatter_nd_update(masked, positions, values)

    mask = tf.broadcast_to(tf.cast(centres, tf.float32)[..., None], tf.shape(patches))
    if independent_channels:
        masked = tf.transpose(tf.reshape(masked, (batch, channels, height, width)), (0, 2, 3, 1))
        mask = tf.transpose(tf.reshape(mask, (batch, channels, height, width)), (0, 2, 3, 1))
    masked = tf.ensure_shape(masked, original.shape)
    mask = tf.ensure_shape(mask, original.shape)
    return masked, tf.concat([original, mask], axis=-1)


def masked_pixel_count(target: tf.Tensor) -> tf.Tensor:
    """Number of masked pixels (summed over channels) of each sample of a (B, H, W, 2C) target."""
    target = ops.convert_to_tensor(target)
    channels = target.shape[-1] // 2
    return ops.sum(target[..., channels:], axis=tuple(range(1, len(target.shape))))


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class MaskedLoss(keras.losses.Loss):
    """MSE or MAE over masked pixels only, for blind-spot (Noise2Void) training.

    `y_true` is `concat(target, mask)` on the channel axis (2C channels), as made by
    `blind_spot_mask`; `y_pred` has C channels. The value of each sample is
    sum(mask * error) / max(sum(mask), 1) over (H, W, C), so a patch without masked pixels adds 0
    rather than NaN.
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


def _stratified_positions(patches: tf.Tensor, side: int, seed: tf.Tensor) -> tf.Tensor:
    """(B, H, W) bool: one position drawn uniformly in each side x side box, dropped if off the patch."""
    shape = tf.shape(patches)
    batch, height, width = shape[0], shape[1], shape[2]
    boxes_y, boxes_x = -(-height // side), -(-width // side)
    offsets = tf.random.stateless_uniform(
        (2, batch, boxes_y, boxes_x), seed=seed, minval=0, maxval=side, dtype=tf.int32
    )
    # Spread each box's drawn offset over its pixels; a pixel is the chosen one when its position
    # inside the box matches. Cropping to (H, W) is what drops positions outside the patch.
    offsets = tf.repeat(tf.repeat(offsets, side, axis=2), side, axis=3)[:, :, :height, :width]
    in_box_y = tf.range(height) % side
    in_box_x = tf.range(width) % side
    return (offsets[0] == in_box_y[None, :, None]) & (offsets[1] == in_box_x[None, None, :])


# === Replacement values ===


def _mirror(index: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Mirror indices into [0, size) without repeating the edge (numpy "reflect"), for any distance."""
    period = tf.maximum(2 * (size - 1), 1)
    index = tf.math.floormod(index, period)
    return tf.where(index >= size, period - index, index)


def _replacement_values(
    patches: tf.Tensor,
    positions: tf.Tensor,
    radius: int,
    replacement: str,
    struct_axis: int | None,
    span: int,
    seed: tf.Tensor,
) -> tf.Tensor:
    """(N, C) values for the N masked `positions` (b, y, x), computed from the original patches."""
    channels = tf.shape(patches)[3]
    if replacement == "zero":
        return tf.zeros((tf.shape(positions)[0], channels), tf.float32)

    window = np.arange(-radius, radius + 1)
    offset_y = tf.constant(np.repeat(window, window.size), tf.int32)
    offset_x = tf.constant(np.tile(window, window.size), tf.int32)
    b, y, x = positions[:, 0:1], positions[:, 1:2], positions[:, 2:3]
    source_y = _mirror(y + offset_y, tf.shape(patches)[1])
    source_x = _mirror(x + offset_x, tf.shape(patches)[2])
    # The blind set is the centre plus the hidden structN2V line, judged by the mirrored source
    # position so that a mirrored copy of the centre near the border is excluded as well.
    distance_y, distance_x = tf.abs(source_y - y), tf.abs(source_x - x)
    if struct_axis == 0:
        blind = (distance_x == 0) & (distance_y <= span)
    elif struct_axis == 1:
        blind = (distance_y == 0) & (distance_x <= span)
    else:
        blind = (distance_y == 0) & (distance_x == 0)
    candidate = ~blind  # (N, K)
    neighbours = tf.gather_nd(
        patches, tf.stack([tf.broadcast_to(b, tf.shape(source_y)), source_y, source_x], axis=-1)
    )  # (N, K, C)
    count = tf.reduce_sum(tf.cast(candidate, tf.int32), axis=1)  # (N,)

    if replacement == "uniform":
        scores = tf.random.stateless_uniform(tf.shape(candidate), seed=seed)
        chosen = tf.argmax(tf.where(candidate, scores, -1.0), axis=1, output_type=tf.int32)
        return tf.gather(neighbours, chosen, batch_dims=1)
    if replacement == "mean":
        total = tf.reduce_sum(tf.where(candidate[..., None], neighbours, 0.0), axis=1)
        return total / tf.cast(tf.maximum(count, 1), tf.float32)[:, None]
    # Median: blind entries sort to the end as +inf, so the first `count` sorted values are the
    # candidates; average the two middle ones (numpy's convention for an even count).
    ordered = tf.sort(tf.where(candidate[..., None], neighbours, np.inf), axis=1)
    lower = tf.gather(ordered, tf.maximum(count - 1, 0) // 2, batch_dims=1)
    upper = tf.gather(ordered, count // 2, batch_dims=1)
    return tf.where((count > 0)[:, None], (lower + upper) / 2.0, 0.0)


def _hide_struct_lines(
    patches: tf.Tensor, centres: tf.Tensor, axis: int, span: int, seed: tf.Tensor
) -> tf.Tensor:
    """Overwrite pixels within `span` of each centre along `axis` with random values in the patch range."""
    window = (2 * span + 1, 1) if axis == 0 else (1, 2 * span + 1)
    line = tf.nn.max_pool2d(tf.cast(centres, tf.float32)[..., None], window, strides=1, padding="SAME") > 0
    low = tf.reduce_min(patches, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(patches, axis=(1, 2), keepdims=True)
    noise = low + (high - low) * tf.random.stateless_uniform(tf.shape(patches), seed=seed)
    # Centres are overwritten afterwards with their own replacement.
    return tf.where(line, noise, patches)


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
    if struct_axis is not None and not _is_number_in(struct_axis, 0, 1, integer=True):
        raise ValueError(f"struct_axis must be None, 0 (along y) or 1 (along x), got {struct_axis!r}")
    if not _is_number_in(struct_span, 0, MAX_STRUCT_SPAN, integer=True):
        raise ValueError(f"struct_span must be an integer in 0..{MAX_STRUCT_SPAN}, got {struct_span!r}")
    if struct_span > 0 and struct_axis is None:
        raise ValueError(f"struct_span={struct_span} needs struct_axis 0 or 1 (the axis of the hidden line)")
