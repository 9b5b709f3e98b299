"""A 2D or 3D U-Net (Ronneberger et al., MICCAI 2015; Çiçek et al., MICCAI 2016) as a Keras 3 functional
model.

Every layer is named after its place in the network (`enc1_conv2`, `dec0_up`, ...), the same in 2D and
3D, so checkpoints, summaries and exported graphs can be read without a map, and the receptive field can
be derived from the layers alone (see `zoo.receptive_field`).

Volumes from a microscope are often anisotropic: z is sampled several times more coarsely than y and x.
Each level of a 3D U-Net therefore takes its own pool size per axis (`anisotropic_pool_sizes` chooses
them from the voxel spacing), so z is pooled only once y and x have caught up with it, and the network
sees about as far in micrometres along every axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import keras
from keras import layers

from zoo.layers import ChannelSlice, FusedBatchNormalization, MaxBlurPool2D, MaxBlurPool3D

Upsampling = Literal["transpose", "nearest", "repeat"]
Downsampling = Literal["max", "blur"]
PerAxis = tuple[int, ...]


class _SpatialLayers(NamedTuple):
    """The Keras layer classes of one dimensionality."""

    conv: type[keras.layers.Layer]
    max_pool: type[keras.layers.Layer]
    up_sampling: type[keras.layers.Layer]
    transposed_conv: type[keras.layers.Layer]


_LAYERS = {
    2: _SpatialLayers(layers.Conv2D, layers.MaxPooling2D, layers.UpSampling2D, layers.Conv2DTranspose),
    3: _SpatialLayers(layers.Conv3D, layers.MaxPooling3D, layers.UpSampling3D, layers.Conv3DTranspose),
}


def anisotropic_pool_sizes(*, depth: int, anisotropy: float) -> list[tuple[int, int, int]]:
    """Pool sizes (z, y, x), one per level, for volumes whose z spacing is `anisotropy` times their xy
    spacing.

    Every level pools y and x by 2. It pools z by 2 too unless pooling y and x alone brings the voxels
    closer to cubic, that is unless the current ratio r of z to xy spacing exceeds sqrt(2) (r / 2 is
    then nearer 1 than r on a log scale). Isotropic volumes (anisotropy 1) pool every axis at every
    level; z spaced 4x coarser pools (1, 2, 2), (1, 2, 2), then (2, 2, 2) once the voxels are cubic.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if not anisotropy >= 1.0 or math.isinf(anisotropy):
        raise ValueError(
            f"anisotropy (z spacing / xy spacing) must be a finite number >= 1, got {anisotropy}"
        )
    sizes = []
    ratio = float(anisotropy)
    for _ in range(depth):
        if ratio > math.sqrt(2.0):
            sizes.append((1, 2, 2))
            ratio /= 2.0
        else:
            sizes.append((2, 2, 2))
    return sizes


def _conv_block(
    x,
    *,
    spatial: _SpatialLayers,
    filters: int,
    kernel_size: PerAxis,
    batch_norm: bool,
    batch_norm_momentum: float,
    dropout: float,
    prefix: str,
    last_filters: int | None = None,
):
    """Two `same` convolutions (the second with `last_filters`, if given), each followed by optional
    batch norm and a ReLU."""
    for i in (1, 2):
        x = spatial.conv(
            last_filters if i == 2 and last_filters else filters,
            kernel_size,
            padding="same",
            use_bias=not batch_norm,  # a bias before batch norm is cancelled by its mean subtraction
            kernel_initializer="he_normal",
            name=f"{prefix}_conv{i}",
        )(x)
        if batch_norm:
            x = FusedBatchNormalization(momentum=batch_norm_momentum, name=f"{prefix}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return x


def build_unet(
    *,
    input_channels: int = 1,
    num_classes: int = 3,
    ndim: int = 2,
    depth: int = 3,
    pool_sizes: Sequence[int | PerAxis] | None = None,
    base_filters: int = 32,
    kernel_size: int | PerAxis = 3,
    batch_norm: bool = True,
    batch_norm_momentum: float = 0.99,
    dropout: float = 0.0,
    upsampling: Upsampling = "transpose",
    downsampling: Downsampling = "max",
    top_skip: bool = True,
    residual: bool = False,
    taper: bool = False,
    per_channel: bool = False,
    final_activation: str | None = "softmax",
    name: str = "unet",
) -> keras.Model:
    """Build a U-Net for images of shape (height, width, input_channels) or, with ``ndim=3``, volumes of
    shape (depth, height, width, input_channels).

    The spatial sizes are dynamic; along each axis any multiple of the product of the pool sizes along
    that axis (``2**depth`` by default) works.

    Args:
        input_channels: channels of the input image.
        num_classes: channels of the output (classes for segmentation, image channels for restoration).
        ndim: spatial axes, 2 (images: y, x) or 3 (volumes: z, y, x).
        depth: number of down-sampling steps.
        pool_sizes: one down-sampling factor per level, an int for every axis or one per axis ((z,) y, x);
            the decoder up-samples by the same factors. Default: 2 on every axis at every level. For
            anisotropic volumes see `anisotropic_pool_sizes`.
        base_filters: filters of the first level; each deeper level doubles them.
        kernel_size: side of the convolution kernels, odd: an int for every axis or one per axis (e.g.
            ``(1, 3, 3)`` where z is much coarser than y and x).
        batch_norm: batch normalisation after every convolution.
        batch_norm_momentum: weight of the old value in each update of batch norm's moving statistics
            (Keras's default 0.99; PyTorch's 0.1 is 0.9 here): lower follows the weights more closely in
            short trainings.
        dropout: dropout rate after each convolution block (0 disables it).
        upsampling: ``"transpose"`` (learned transposed convolution whose kernel is the level's pool
            size), ``"nearest"`` (nearest-neighbour up-sampling followed by a convolution of that size, free
            of checkerboard artefacts) or ``"repeat"`` (nearest-neighbour up-sampling alone, as in the
            CSBDeep U-Net of N2V and CARE).
        downsampling: ``"max"`` (max pooling) or ``"blur"`` (max-blur-pooling, as in N2V2; pool sizes of
            1 or 2 per axis, and 2 on both axes in 2D).
        top_skip: keep the skip connection of the first (full-resolution) level; N2V2 drops it so the
            output cannot copy high-frequency input noise straight across.
        residual: add the input to the output (restoration: the network learns the correction);
            needs ``num_classes == input_channels`` and no final activation.
        taper: a lighter decoder, as in the CSBDeep U-Net of N2V and CARE: the bottleneck's second
            convolution and the decoder blocks give half the filters of their level (at least
            ``base_filters``).
        per_channel: one network per input channel, each giving its channel of the output (needs
            ``num_classes == input_channels``): channels are processed independently.
        final_activation: activation of the output layer (``"softmax"``, ``"sigmoid"``, ``None`` for linear).
            It runs in float32 even under a mixed-precision policy, so outputs are full precision.
        name: model name.
    """
    _check_unet_arguments(
        depth=depth,
        base_filters=base_filters,
        dropout=dropout,
        upsampling=upsampling,
        downsampling=downsampling,
        input_channels=input_channels,
        num_classes=num_classes,
    )
    if ndim not in _LAYERS:
        raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {ndim}")
    kernel_size = _kernel_size_per_axis(kernel_size, ndim)
    pool_sizes = _pool_sizes_per_axis(pool_sizes, depth=depth, ndim=ndim)
    if downsampling == "blur":
        _check_blur_pool_sizes(pool_sizes, ndim)
    if per_channel and num_classes != input_channels:
        raise ValueError(
            f"per_channel needs num_classes == input_channels (got {num_classes}, {input_channels})"
        )
    if residual and (num_classes != input_channels or final_activation not in (None, "linear")):
        raise ValueError(
            "residual needs num_classes == input_channels and a linear output "
            f"(got {num_classes}, {input_channels}, {final_activation!r})"
        )
    inputs = keras.Input(shape=(None,) * ndim + (input_channels,), name="input")
    options = dict(
        spatial=_LAYERS[ndim],
        num_classes=num_classes,
        pool_sizes=pool_sizes,
        base_filters=base_filters,
        kernel_size=kernel_size,
        batch_norm=batch_norm,
        batch_norm_momentum=batch_norm_momentum,
        dropout=dropout,
        upsampling=upsampling,
        downsampling=downsampling,
        top_skip=top_skip,
        taper=taper,
    )
    if per_channel and input_channels > 1:
        # One network per channel, side by side in one flat graph (layers named ch0_..., ch1_...).
        outputs = [
            _unet_body(
                ChannelSlice(c, c + 1, name=f"ch{c}_input")(inputs),
                prefix=f"ch{c}_",
                **(options | {"num_classes": 1}),
            )
            for c in range(input_channels)
        ]
        x = layers.Concatenate(name="channels_concat")(outputs)
    else:
        x = _unet_body(inputs, prefix="", **options)
    if residual:
        # In float32 under mixed precision: the input's full precision survives the addition.
        x = layers.Add(dtype="float32", name="residual_add")([inputs, x])
    outputs = layers.Activation(final_activation or "linear", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)


def _unet_body(
    x,
    *,
    prefix: str,
    spatial: _SpatialLayers,
    num_classes: int,
    pool_sizes: list[PerAxis],
    base_filters: int,
    kernel_size: PerAxis,
    batch_norm: bool,
    batch_norm_momentum: float,
    dropout: float,
    upsampling: str,
    downsampling: str,
    top_skip: bool,
    taper: bool,
):
    """The U-Net's layers from an input tensor to its head convolution, every name behind `prefix`."""
    depth = len(pool_sizes)
    skips = []
    for level, pool_size in enumerate(pool_sizes):
        x = _conv_block(
            x,
            spatial=spatial,
            filters=base_filters * 2**level,
            kernel_size=kernel_size,
            batch_norm=batch_norm,
            batch_norm_momentum=batch_norm_momentum,
            dropout=dropout,
            prefix=f"{prefix}enc{level}",
        )
        skips.append(x)
        if downsampling == "blur" and len(pool_size) == 2:
            x = MaxBlurPool2D(name=f"{prefix}enc{level}_blurpool")(x)
        elif downsampling == "blur":
            x = MaxBlurPool3D(pool_size, name=f"{prefix}enc{level}_blurpool")(x)
        else:
            x = spatial.max_pool(pool_size, name=f"{prefix}enc{level}_pool")(x)

    x = _conv_block(
        x,
        spatial=spatial,
        filters=base_filters * 2**depth,
        kernel_size=kernel_size,
        batch_norm=batch_norm,
        batch_norm_momentum=batch_norm_momentum,
        dropout=dropout,
        prefix=f"{prefix}bottleneck",
        last_filters=base_filters * 2 ** max(depth - 1, 0) if taper else None,
    )

    for level in reversed(range(depth)):
        filters = base_filters * 2 ** (max(level - 1, 0) if taper else level)
        pool_size = pool_sizes[level]
        if upsampling == "transpose":
            x = spatial.transposed_conv(
                filters, pool_size, strides=pool_size, padding="same", name=f"{prefix}dec{level}_up"
            )(x)
        else:
            # UpSampling3D has no `interpolation` argument: it always repeats (nearest neighbour).
            nearest = {"interpolation": "nearest"} if spatial.up_sampling is layers.UpSampling2D else {}
            x = spatial.up_sampling(pool_size, **nearest, name=f"{prefix}dec{level}_up")(x)
            if upsampling == "nearest":
                x = spatial.conv(filters, pool_size, padding="same", name=f"{prefix}dec{level}_upconv")(x)
        if level > 0 or top_skip:
            x = layers.Concatenate(name=f"{prefix}dec{level}_concat")([skips[level], x])
        x = _conv_block(
            x,
            spatial=spatial,
            filters=filters,
            kernel_size=kernel_size,
            batch_norm=batch_norm,
            batch_norm_momentum=batch_norm_momentum,
            dropout=dropout,
            prefix=f"{prefix}dec{level}",
        )
    return spatial.conv(num_classes, 1, name=f"{prefix}head_conv")(x)


def _kernel_size_per_axis(kernel_size: int | Sequence[int], ndim: int) -> PerAxis:
    sizes = (kernel_size,) * ndim if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(sizes) != ndim or not all(isinstance(k, int) and 1 <= k <= 11 and k % 2 == 1 for k in sizes):
        raise ValueError(
            f"kernel_size must be an odd int in [1, 11] or {ndim} of them (one per axis) so that `same` "
            f"padding is centred, got {kernel_size!r}"
        )
    return sizes


def _pool_sizes_per_axis(pool_sizes: Sequence[int | Sequence[int]] | None, *, depth: int, ndim: int):
    if pool_sizes is None:
        return [(2,) * ndim] * depth
    if len(pool_sizes) != depth:
        raise ValueError(
            f"pool_sizes needs one entry per level ({depth}), got {len(pool_sizes)}: {pool_sizes}"
        )
    resolved = []
    for entry in pool_sizes:
        sizes = (entry,) * ndim if isinstance(entry, int) else tuple(entry)
        if len(sizes) != ndim or not all(isinstance(p, int) and p >= 1 for p in sizes):
            raise ValueError(
                f"each of pool_sizes must be a positive int or {ndim} of them (one per axis), got {entry!r}"
            )
        resolved.append(sizes)
    return resolved


def _check_blur_pool_sizes(pool_sizes: list[PerAxis], ndim: int) -> None:
    # MaxBlurPool2D (which the shipped 2D models use) pools both axes by 2; MaxBlurPool3D pools by 1 or 2.
    allowed = (lambda p: p == (2, 2)) if ndim == 2 else (lambda p: set(p) <= {1, 2} and 2 in p)
    bad = [p for p in pool_sizes if not allowed(p)]
    if bad:
        raise ValueError(
            "pool_sizes with downsampling 'blur' must be 2 on both axes in 2D, and 1 or 2 on each axis "
            f"(at least one 2) in 3D; got {bad}"
        )


def _check_unet_arguments(**kwargs) -> None:
    limits = {
        "depth": (1, 6),
        "base_filters": (1, 512),
        "input_channels": (1, 64),
        "num_classes": (1, 256),
    }
    for key, (low, high) in limits.items():
        if not low <= kwargs[key] <= high:
            raise ValueError(f"{key} must be in [{low}, {high}], got {kwargs[key]}")
    if not 0.0 <= kwargs["dropout"] < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {kwargs['dropout']}")
    if kwargs["upsampling"] not in ("transpose", "nearest", "repeat"):
        raise ValueError(
            f"upsampling must be 'transpose', 'nearest' or 'repeat', got {kwargs['upsampling']!r}"
        )
    if kwargs["downsampling"] not in ("max", "blur"):
        raise ValueError(f"downsampling must be 'max' or 'blur', got {kwargs['downsampling']!r}")
