"""Noise2Void denoisers (Krull et al., CVPR 2019) and N2V2 (Hoeck et al., ECCV Workshops 2022).

Both are U-Net configurations: an image-to-image network with a linear output, so the saved model is a
plain denoiser. The blind spot that makes self-supervision work lives in the training data (see
`training.masking`), not in the network. A residual connection (input added to the output) is an option,
off by default: trained blind, the network never sees its own centre pixel and so cannot learn to
cancel it on the identity path, and noise leaks through (measured: docs/benchmarks.md, bench/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from zoo.unet import PerAxis, build_unet

# Batch norm's moving statistics move 10 % of the way to each batch's (PyTorch's default, CAREamics'):
# after a short training, Keras's 0.99 leaves them behind the weights (the PSNR it gained on the standard
# N2V benchmark: docs/benchmarks.md).
BATCH_NORM_MOMENTUM = 0.9


def build_n2v(
    *,
    input_channels: int = 1,
    ndim: int = 2,
    depth: int = 2,
    pool_sizes: Sequence[int | PerAxis] | None = None,
    base_filters: int = 32,
    kernel_size: int | PerAxis = 3,
    batch_norm: bool = True,
    batch_norm_momentum: float = BATCH_NORM_MOMENTUM,
    residual: bool = False,
    independent_channels: bool = False,
    name: str = "n2v",
) -> keras.Model:
    """The N2V network of the original paper's configuration: the CSBDeep U-Net (depth 2, 32 base
    filters, batch norm, max pooling, nearest-neighbour up-sampling, tapered decoder) with a linear
    output (and, with `residual`, the input added to it). With `independent_channels`, one such
    network per channel (as n2v's `single_net_per_channel`). `ndim`, `pool_sizes` and `kernel_size` are
    `build_unet`'s: ``ndim=3`` denoises volumes."""
    return _csbdeep_unet(
        input_channels=input_channels,
        ndim=ndim,
        depth=depth,
        pool_sizes=pool_sizes,
        base_filters=base_filters,
        kernel_size=kernel_size,
        batch_norm=batch_norm,
        batch_norm_momentum=batch_norm_momentum,
        residual=residual,
        independent_channels=independent_channels,
        downsampling="max",
        top_skip=True,
        name=name,
    )


def build_n2v2(
    *,
    input_channels: int = 1,
    ndim: int = 2,
    depth: int = 2,
    pool_sizes: Sequence[int | PerAxis] | None = None,
    base_filters: int = 32,
    kernel_size: int | PerAxis = 3,
    batch_norm: bool = True,
    batch_norm_momentum: float = BATCH_NORM_MOMENTUM,
    residual: bool = False,
    independent_channels: bool = False,
    name: str = "n2v2",
) -> keras.Model:
    """N2V2: as N2V, with max-blur-pooling and without the top-level skip connection, the two changes
    the paper makes to suppress checkerboard artefacts. In 3D the blur pools by 1 or 2 per axis
    (`zoo.layers.MaxBlurPool3D`)."""
    return _csbdeep_unet(
        input_channels=input_channels,
        ndim=ndim,
        depth=depth,
        pool_sizes=pool_sizes,
        base_filters=base_filters,
        kernel_size=kernel_size,
        batch_norm=batch_norm,
        batch_norm_momentum=batch_norm_momentum,
        residual=residual,
        independent_channels=independent_channels,
        downsampling="blur",
        top_skip=False,
        name=name,
    )


def _csbdeep_unet(*, input_channels: int, independent_channels: bool, **options) -> keras.Model:
    """The image-to-image U-Net both builders share: as many outputs as inputs, linear, CSBDeep's
    plain up-sampling and tapered decoder; `options` are the rest of `build_unet`'s arguments."""
    return build_unet(
        input_channels=input_channels,
        num_classes=input_channels,
        upsampling="repeat",
        taper=True,
        per_channel=independent_channels,
        final_activation=None,
        **options,
    )
