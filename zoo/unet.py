"""A 2D U-Net (Ronneberger et al., MICCAI 2015) as a Keras 3 functional model.

Every layer is named after its place in the network (`enc1_conv2`, `dec0_up`, ...), so checkpoints,
summaries and exported graphs can be read without a map, and the receptive field can be derived from
the layers alone (see `zoo.receptive_field`).
"""

from __future__ import annotations

from typing import Literal

import keras
from keras import layers

from zoo.layers import ChannelSlice, FusedBatchNormalization, MaxBlurPool2D

Upsampling = Literal["transpose", "nearest", "repeat"]
Downsampling = Literal["max", "blur"]


def _conv_block(
    x,
    *,
    filters: int,
    kernel_size: int,
    batch_norm: bool,
    batch_norm_momentum: float,
    dropout: float,
    prefix: str,
    last_filters: int | None = None,
):
    """Two `same` convolutions (the second with `last_filters`, if given), each followed by optional
    batch norm and a ReLU."""
    for i in (1, 2):
        x = layers.Conv2D(
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
    depth: int = 3,
    base_filters: int = 32,
    kernel_size: int = 3,
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
    """Build a 2D U-Net for images of shape (height, width, input_channels).

    Height and width are dynamic; any size that is a multiple of ``2**depth`` works.

    Args:
        input_channels: channels of the input image.
        num_classes: channels of the output (classes for segmentation, image channels for restoration).
        depth: number of 2x down-sampling steps.
        base_filters: filters of the first level; each deeper level doubles them.
        kernel_size: side of the square convolution kernels.
        batch_norm: batch normalisation after every convolution.
        batch_norm_momentum: weight of the old value in each update of batch norm's moving statistics
            (Keras's default 0.99; PyTorch's 0.1 is 0.9 here): lower follows the weights more closely in
            short trainings.
        dropout: dropout rate after each convolution block (0 disables it).
        upsampling: ``"transpose"`` (learned 2x2 transposed convolution), ``"nearest"`` (nearest-neighbour
            up-sampling followed by a 2x2 convolution, free of checkerboard artefacts) or ``"repeat"``
            (nearest-neighbour up-sampling alone, as in the CSBDeep U-Net of N2V and CARE).
        downsampling: ``"max"`` (2x2 max pooling) or ``"blur"`` (max-blur-pooling, as in N2V2).
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
        kernel_size=kernel_size,
        dropout=dropout,
        upsampling=upsampling,
        downsampling=downsampling,
        input_channels=input_channels,
        num_classes=num_classes,
    )
    if per_channel and num_classes != input_channels:
        raise ValueError(
            f"per_channel needs num_classes == input_channels (got {num_classes}, {input_channels})"
        )
    if residual and (num_classes != input_channels or final_activation not in (None, "linear")):
        raise ValueError(
            "residual needs num_classes == input_channels and a linear output "
            f"(got {num_classes}, {input_channels}, {final_activation!r})"
        )
    inputs = keras.Input(shape=(None, None, input_channels), name="input")
    options = dict(
        num_classes=num_classes,
        depth=depth,
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
    num_classes: int,
    depth: int,
    base_filters: int,
    kernel_size: int,
    batch_norm: bool,
    batch_norm_momentum: float,
    dropout: float,
    upsampling: str,
    downsampling: str,
    top_skip: bool,
    taper: bool,
):
    """The U-Net's layers from an input tensor to its head convolution, every name behind `prefix`."""
    skips = []
    for level in range(depth):
        x = _conv_block(
            x,
            filters=base_filters * 2**level,
            kernel_size=kernel_size,
            batch_norm=batch_norm,
            batch_norm_momentum=batch_norm_momentum,
            dropout=dropout,
            prefix=f"{prefix}enc{level}",
        )
        skips.append(x)
        if downsampling == "blur":
            x = MaxBlurPool2D(name=f"{prefix}enc{level}_blurpool")(x)
        else:
            x = layers.MaxPooling2D(2, name=f"{prefix}enc{level}_pool")(x)

    x = _conv_block(
        x,
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
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{prefix}dec{level}_up")(
                x
            )
        else:
            x = layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}dec{level}_up")(x)
            if upsampling == "nearest":
                x = layers.Conv2D(filters, 2, padding="same", name=f"{prefix}dec{level}_upconv")(x)
        if level > 0 or top_skip:
            x = layers.Concatenate(name=f"{prefix}dec{level}_concat")([skips[level], x])
        x = _conv_block(
            x,
            filters=filters,
            kernel_size=kernel_size,
            batch_norm=batch_norm,
            batch_norm_momentum=batch_norm_momentum,
            dropout=dropout,
            prefix=f"{prefix}dec{level}",
        )
    return layers.Conv2D(num_classes, 1, name=f"{prefix}head_conv")(x)


def _check_unet_arguments(**kwargs) -> None:
    limits = {
        "depth": (1, 6),
        "base_filters": (1, 512),
        "kernel_size": (1, 11),
        "input_channels": (1, 64),
        "num_classes": (1, 256),
    }
    for key, (low, high) in limits.items():
        if not low <= kwargs[key] <= high:
            raise ValueError(f"{key} must be in [{low}, {high}], got {kwargs[key]}")
    if kwargs["kernel_size"] % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd so that `same` padding is centred, got {kwargs['kernel_size']}"
        )
    if not 0.0 <= kwargs["dropout"] < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {kwargs['dropout']}")
    if kwargs["upsampling"] not in ("transpose", "nearest", "repeat"):
        raise ValueError(
            f"upsampling must be 'transpose', 'nearest' or 'repeat', got {kwargs['upsampling']!r}"
        )
    if kwargs["downsampling"] not in ("max", "blur"):
        raise ValueError(f"downsampling must be 'max' or 'blur', got {kwargs['downsampling']!r}")
