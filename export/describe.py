"""The model description (rdf.yaml, bioimage.io model spec 0.5) of a run, and the files it names.

The description is built with bioimageio.spec's classes, which validate every field, and then written in
the form deepImageJ's reader (JDLL) parses: `documentation` and `covers` as plain file names, which format
versions before 0.5.11 allow and bioimageio.spec still reads (it converts them when it loads the file).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import keras
import numpy as np

from export.processing import apply
from export.run_folder import Run

# Written as the format version: the last one in which documentation and covers may be plain strings.
RDF_FORMAT_VERSION = "0.5.10"
_ADJECTIVES = (
    "agile amber brave bright calm clever daring eager fancy gentle happy jolly keen lively lucky merry "
    "nimble noble proud quick quiet rapid shiny silent steady sunny swift tidy vivid warm wise witty"
).split()
_ANIMALS = (
    "badger beaver bison crane dolphin eagle falcon ferret gecko heron ibis jaguar koala lemur lynx "
    "marten newt otter owl panda puffin quail raven salmon seal stork tapir turtle walrus wombat yak zebra"
).split()


@dataclass
class Metadata:
    """What the user may set about a package; every field has a default."""

    name: str | None = None
    description: str | None = None
    authors: list[str] = field(default_factory=list)  # "Name", or "Name; affiliation; ORCID"
    license: str = "MIT"
    tags: list[str] = field(default_factory=list)
    version: str = "0.1.0"


@dataclass
class Tensors:
    """Ids, layout and sizes of the package's input and output; sizes per spatial axis, in `axes` order."""

    input_id: str
    output_id: str
    input_channels: list[str]
    output_channels: list[str]
    axes: tuple[str, ...]  # the spatial axes: ("y", "x"), or ("z", "y", "x") for a volume
    steps: tuple[int, ...]
    min_sizes: tuple[int, ...]
    halos: tuple[int, ...]


SPATIAL_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def tensors(run: Run) -> Tensors:
    """Tensor ids and sizes: along each spatial axis, inputs of `min + n * step` pixels, where `step` is
    the network's size step along it and `min` the smallest multiple of it that leaves at least one pixel
    inside the output halo on both sides."""
    geometry = run.geometry
    min_sizes = tuple(
        step * math.ceil((2 * halo + 1) / step)
        for step, halo in zip(geometry.steps, geometry.borders, strict=True)
    )
    declared = run.declaration
    return Tensors(
        declared.input.id,
        declared.output.id,
        declared.input.channels,
        declared.output.channels,
        SPATIAL_AXES[geometry.ndim],
        geometry.steps,
        min_sizes,
        geometry.borders,
    )


def nickname(weights_sha256: str) -> str:
    """A memorable name derived from the weights (as bioimage.io's adjective-animal nicknames)."""
    digest = int(weights_sha256[:16], 16)
    return f"{_ADJECTIVES[digest % len(_ADJECTIVES)]}-{_ANIMALS[(digest // 97) % len(_ANIMALS)]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_input(run: Run, sizes: Tensors) -> np.ndarray:
    """The held-out sample cropped (centred) to the largest valid size along each spatial axis, or
    mirrored up to the minimum; float32 with a batch axis: (1, Y, X, C) or (1, Z, Y, X, C)."""
    image = run.sample.astype(np.float32)
    lengths = image.shape[:-1]
    crops = [
        low + max((length - low) // step, 0) * step
        for low, step, length in zip(sizes.min_sizes, sizes.steps, lengths, strict=True)
    ]
    pad = [(0, max(size - length, 0)) for size, length in zip(crops, lengths, strict=True)]
    if any(p[1] for p in pad):
        image = np.pad(image, [*pad, (0, 0)], mode="symmetric")
    window = tuple(
        slice((length - size) // 2, (length - size) // 2 + size)
        for size, length in zip(crops, image.shape[:-1], strict=True)
    )
    return np.ascontiguousarray(image[window])[np.newaxis]


# What a consumer's run of the test may differ by, as a share of the test output's largest magnitude
# (bioimageio.spec allows at most 1 %). On an H100 the TorchScript weights' outputs differed from the
# CPU's by up to 9.9e-3 (U-Net probabilities) and 1.1e-2 (N2V, on a range of 17), whatever the global TF32
# flags; the trace records PyTorch's default `allow_tf32=True` in each convolution, so they run in TF32.
# The packages failed bioimage.io's default tolerance (1e-3 absolute and relative) there until they
# declared this one (bench/package_torch.py, docs/benchmarks.md).
REPRODUCIBILITY = 0.005


def absolute_tolerance(output: np.ndarray) -> float:
    """The absolute tolerance of the package's test: REPRODUCIBILITY of the test output's largest
    magnitude, and at least bioimage.io's default (1e-3), but never above the 1 % of the output's largest
    value that bioimageio.spec accepts (an output with large negative values has a small maximum).
    Three significant digits, rounded down."""
    tolerance = max(REPRODUCIBILITY * float(np.abs(output).max()), 1e-3)
    ceiling = 0.01 * float(output.max())
    if 0 < ceiling < tolerance:
        tolerance = ceiling
    scale = 10.0 ** (math.floor(math.log10(tolerance)) - 2)
    return float(f"{math.floor(tolerance / scale) * scale:.3g}")


def test_output(run: Run, model: keras.Model, raw: np.ndarray) -> np.ndarray:
    """What a consumer must compute from the test input: pre-processing, the whole input through the
    network at once (no halo padding, no tiling), post-processing."""
    normalized = apply(run.declaration.input.processing, raw)
    output = keras.ops.convert_to_numpy(model(normalized, training=False)).astype(np.float32)
    return apply(run.declaration.output.processing, output)


def _display(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = np.clip((image - low) / max(high - low, 1e-12), 0, 1)
    return (scaled * 255).round().astype(np.uint8)


def cover(run: Run, raw: np.ndarray, output: np.ndarray) -> np.ndarray:
    """A 2:1 RGB picture: the test input (first channel) beside the model's output (class probabilities
    mixed in the declared colours, or an image in the input's display range); of a volume, its middle
    z slice."""
    if raw.ndim == 5:
        middle = raw.shape[1] // 2
        raw, output = raw[:, middle], output[:, middle]
    image = raw[0, ..., 0]
    low, high = np.percentile(image, (1, 99.8))
    left = np.repeat(_display(image, low, high)[..., None], 3, axis=-1)
    colours = run.declaration.cover_colours
    if colours is not None:
        right = (output[0] @ np.array(colours, np.float64)).clip(0, 255).round().astype(np.uint8)
    else:
        right = np.repeat(_display(output[0, ..., 0], low, high)[..., None], 3, axis=-1)
    gap = np.full((image.shape[0], max(image.shape[1] // 32, 2), 3), 255, np.uint8)
    picture = np.concatenate([left, gap, right], axis=1)
    # Pad to exactly 2:1 (width : height) with white.
    width = max(picture.shape[1], 2 * picture.shape[0])
    height = width // 2
    canvas = np.full((height, width, 3), 255, np.uint8)
    top, start = (height - picture.shape[0]) // 2, (width - picture.shape[1]) // 2
    canvas[top : top + picture.shape[0], start : start + picture.shape[1]] = picture
    return canvas


def write_image(path: Path, image: np.ndarray) -> None:
    """A sample tensor (Y, X, C) or (Z, Y, X, C), or the cover (Y, X, 3 uint8). A volume is written as an
    ImageJ TIFF (ZCYX), which imageio cannot write as one image."""
    if image.ndim == 4:
        import tifffile

        tifffile.imwrite(path, np.moveaxis(image, -1, 1), imagej=True, metadata={"axes": "ZCYX"})
        return
    iio.imwrite(path, image)
