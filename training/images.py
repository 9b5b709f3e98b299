"""Reading, checking, normalising and writing images, volumes and their label masks.

2D images come as (Y, X) or with a channel axis of at most 4 channels first or last; internally every image
is (Y, X, C) float32. Volumes are (Z, Y, X, C) float32, their axes taken from `--axes`, else the file's
metadata, else assumed only where nothing else is possible (a plain 3D array is ZYX). Every problem is a
`UserInputError` whose message names the file.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from base.errors import UserInputError
from training.files import atomic_target

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
MAX_CHANNELS = 4


# The most an image file may declare (pixels x bytes per pixel), checked from its header before its data
# is read: a corrupt or hostile header cannot make the reader allocate more than this.
MAX_IMAGE_BYTES = 2 * 2**30


def _declared(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    if path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape), np.dtype(series.dtype)
    props = iio.improps(path)
    return tuple(props.shape), np.dtype(props.dtype)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn whatever a reader raises for a missing or corrupt file into one `UserInputError` line."""
    try:
        yield
    except UserInputError:
        raise
    except FileNotFoundError:
        raise UserInputError(f"{path}: file not found") from None
    except Exception as error:  # readers raise many types for corrupt files; all mean the same to a user
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise UserInputError(f"{path}: unreadable image ({type(error).__name__}: {first_line})") from None


def declared_shape(path: Path) -> tuple[int, ...]:
    """The shape a file's header declares, without reading its pixels."""
    with _reading(path):
        return _declared(path)[0]


def read_array(path: Path) -> np.ndarray:
    """Read a TIFF (tifffile) or PNG (imageio) file into an array, after checking the size its header
    declares (at most `MAX_IMAGE_BYTES`)."""
    with _reading(path):
        shape, dtype = _declared(path)
        size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if size > MAX_IMAGE_BYTES:
            raise UserInputError(
                f"{path}: declares a {' x '.join(map(str, shape))} {dtype} image ({size / 2**30:.1f} GiB), "
                f"more than the {MAX_IMAGE_BYTES / 2**30:.0f} GiB this reader accepts; crop or split it"
            )
        if path.suffix.lower() in (".tif", ".tiff"):
            return tifffile.imread(path)
        return iio.imread(path)


def to_yxc(array: np.ndarray, path: Path, *, channel_axis: int | None = None) -> np.ndarray:
    """Bring a 2D image to (Y, X, C), detecting a small channel axis when `channel_axis` is None."""
    array = np.squeeze(array) if array.ndim > 2 else array
    if array.ndim == 2:
        return array[..., np.newaxis]
    if array.ndim != 3:
        raise UserInputError(f"{path}: expected a 2D image, got an array of shape {array.shape}")
    if channel_axis is None:
        if array.shape[-1] <= MAX_CHANNELS:
            channel_axis = 2
        elif array.shape[0] <= MAX_CHANNELS:
            channel_axis = 0
        else:
            raise UserInputError(
                f"{path}: a 3D stack of shape {array.shape} where a 2D image is expected "
                f"(no axis of at most {MAX_CHANNELS} channels; set channel_axis if it has one)"
            )
    return np.moveaxis(array, channel_axis, -1)


def _checked_pixels(array: np.ndarray, path: Path) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise UserInputError(f"{path}: unsupported pixel type {array.dtype}")
    if not np.isfinite(array).all():
        raise UserInputError(f"{path}: image contains NaN or infinite values")
    if (
        np.issubdtype(array.dtype, np.floating)
        and array.size
        and np.abs(array).max() > np.finfo(np.float32).max
    ):
        raise UserInputError(f"{path}: image values exceed the float32 range")
    return array.astype(np.float32)


def read_image(path: Path, *, channel_axis: int | None = None) -> np.ndarray:
    """Read a 2D image as (Y, X, C) float32, refusing non-numeric data and NaN or infinite values."""
    return to_yxc(_checked_pixels(read_array(path), path), path, channel_axis=channel_axis)


def read_image_slices(path: Path, *, channel_axis: int | None = None) -> list[np.ndarray]:
    """Read a 2D image, or a 3D stack split into its 2D slices, as a list of (Y, X, C) float32 arrays.

    A 3D array is a stack of slices (Z, Y, X) when neither its first nor its last axis is small enough to
    be channels; a 4D array is (Z, Y, X, C) or (Z, C, Y, X)."""
    array = np.squeeze(_checked_pixels(read_array(path), path))
    if array.ndim == 4:  # slices first; `channel_axis` then counts within a slice
        return [to_yxc(plane, path, channel_axis=channel_axis) for plane in array]
    if array.ndim == 3 and channel_axis is None and min(array.shape[0], array.shape[-1]) > MAX_CHANNELS:
        return [plane[..., np.newaxis] for plane in array]
    return [to_yxc(array, path, channel_axis=channel_axis)]


def read_mask(path: Path) -> np.ndarray:
    """Read a 2D instance label mask (0 = background, one integer per object) as int32."""
    array = np.squeeze(read_array(path))
    if array.ndim != 2:
        raise UserInputError(f"{path}: expected a 2D label mask, got an array of shape {array.shape}")
    return _checked_labels(array, path)


def _checked_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """A label mask of any dimension as int32: integral, non-negative, in int32 range, not binary."""
    if not np.issubdtype(array.dtype, np.integer):
        if (
            not np.issubdtype(array.dtype, np.floating)
            or not np.isfinite(array).all()
            or not np.array_equal(array, np.round(array))
        ):
            raise UserInputError(
                f"{path}: mask must hold integer labels, got {array.dtype} values that are not"
            )
    if array.min() < 0:
        raise UserInputError(f"{path}: mask has negative labels")
    if array.max() > np.iinfo(np.int32).max:
        raise UserInputError(f"{path}: mask labels exceed {np.iinfo(np.int32).max}")
    _refuse_binary_mask(array, path)
    return array.astype(np.int32)


def _refuse_binary_mask(array: np.ndarray, path: Path) -> None:
    """A mask with one value over several separate objects is a binary (0/255) mask, which would train
    the network that the whole image holds one cell: refuse it and say how to label it."""
    values = np.unique(array)
    if len(values) != 2 or values[0] != 0:
        return
    from scipy import ndimage

    _, objects = ndimage.label(array > 0)
    if objects > 1:
        raise UserInputError(
            f"{path}: a binary mask (the one value {values[1]} over {objects} separate objects); give each "
            "object its own label (Fiji: Analyze > Analyze Particles, Show: Count Masks; Python: "
            "skimage.measure.label)"
        )


# === Volumes ===

AXES_LETTERS = "TCZYX"  # what `--axes` may name: time, channel, z, y, x
_EXAMPLE_AXES = {4: "ZCYX", 5: "TZCYX"}

# Micrometres per unit, for the unit names ImageJ and OME-XML write (compared in lower case).
_MICROMETRES = {
    **dict.fromkeys(("um", "µm", "μm", "\\u00b5m", "micron", "microns", "micrometer", "micrometre"), 1.0),
    **{"nm": 1e-3, "pm": 1e-6, "å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6, "in": 25400.0, "inch": 25400.0},
}
_TIFF_RESOLUTION_UNITS = {2: "inch", 3: "cm"}  # the TIFF ResolutionUnit tag; 1 is "no unit"


@dataclass(frozen=True)
class Volume:
    """A volume as the 3D tasks take it, with what its file says about it."""

    data: np.ndarray  # (Z, Y, X, C) float32, finite
    axes: str  # the array's axes as read (before length-1 axes were dropped and the rest reordered)
    pixel_sizes: dict[str, float]  # micrometres per pixel along "z", "y", "x" where known: `pixel_sizes`
    source: str  # where `axes` came from: "metadata", "--axes" or "assumed"


def _axes_problem(axes: str) -> str | None:
    unknown = sorted(set(axes) - set(AXES_LETTERS))
    if unknown:
        return f"unknown axis {', '.join(unknown)}; the letters are {AXES_LETTERS} (time, channel, z, y, x)"
    repeated = sorted({letter for letter in axes if axes.count(letter) > 1})
    if repeated:
        return f"names axis {', '.join(repeated)} more than once"
    if not {"Y", "X"} <= set(axes):
        return "must name the Y and X axes"
    return None


def parse_axes(text: str) -> str:
    """`--axes` as upper-case letters of `AXES_LETTERS`, each at most once, Y and X among them."""
    axes = text.strip().upper()
    if problem := _axes_problem(axes):
        raise UserInputError(f"--axes {text}: {problem}")
    return axes


def image_axes(path: Path) -> str | None:
    """The axes a file's metadata gives the array `read_array` returns, in letters of `AXES_LETTERS`, or
    None where any axis is unknown.

    TIFF axes are tifffile's for the first series: ImageJ hyperstacks, OME-TIFF, tifffile's own shaped
    description, and the Y, X and RGB samples (read as C) of any page. tifffile names the axes it cannot
    place Q or I: such a file has no known axes. A PNG is YX or YXC."""
    with _reading(path):
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                axes, ndim = tif.series[0].axes.upper().replace("S", "C"), len(tif.series[0].shape)
        else:
            ndim = len(iio.improps(path).shape)
            axes = {2: "YX", 3: "YXC"}.get(ndim, "")
    return None if len(axes) != ndim or _axes_problem(axes) else axes


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def pixel_sizes(path: Path) -> dict[str, float]:
    """The size of a pixel along "z", "y" and "x" in micrometres, for the axes a file's metadata calibrates.

    ImageJ: its "spacing" (z) and the X/YResolution tags (pixels per unit), in its "unit". OME-TIFF:
    PhysicalSizeX/Y/Z in their units (micrometres by default). A size without a known unit is left out: a
    resolution of 1 pixel per no unit says nothing. Resolution tags outside ImageJ files are ignored (writers
    fill them with a screen's 72 dpi); a PNG has no sizes."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return {}
    with _reading(path), tifffile.TiffFile(path) as tif:
        if tif.is_ome:
            return _ome_pixel_sizes(tif.ome_metadata or "")
        if tif.is_imagej:
            return _imagej_pixel_sizes(tif.imagej_metadata or {}, tif.pages[0].tags)
    return {}


def _imagej_pixel_sizes(metadata: dict, tags: tifffile.TiffTags) -> dict[str, float]:
    unit = metadata.get("unit") or _TIFF_RESOLUTION_UNITS.get(int(tags.valueof("ResolutionUnit", 1)))
    scale = _MICROMETRES.get(str(unit).strip().lower())
    if scale is None:
        return {}
    sizes = {"z": _positive(metadata.get("spacing"))}
    for axis, tag in (("y", "YResolution"), ("x", "XResolution")):
        resolution = tags.valueof(tag)
        if resolution is not None and _positive(resolution[0]) and _positive(resolution[1]):
            sizes[axis] = resolution[1] / resolution[0]  # the tag is pixels per unit
    return {axis: size * scale for axis, size in sizes.items() if size is not None}


def _ome_pixel_sizes(xml: str) -> dict[str, float]:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)  # first image's
    sizes = {}
    for axis in ("z", "y", "x") if pixels is not None else ():
        size = _positive(pixels.get(f"PhysicalSize{axis.upper()}"))
        scale = _MICROMETRES.get(pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm").strip().lower())
        if size is not None and scale is not None:
            sizes[axis] = size * scale
    return sizes


def _volume_axes(array: np.ndarray, path: Path, axes: str | None) -> tuple[np.ndarray, str, str]:
    """The array (squeezed where its axes are assumed), its axes and where they came from."""
    shape = " x ".join(map(str, array.shape))
    if array.size == 0:
        raise UserInputError(f"{path}: an empty image ({shape})")
    if axes is not None:
        letters = axes.strip().upper()
        if problem := _axes_problem(letters):
            raise UserInputError(f"{path}: --axes {axes}: {problem}")
        if len(letters) != array.ndim:  # not squeezed: length-1 axes count, as the file stores them
            raise UserInputError(
                f"{path}: --axes {letters} names {len(letters)} axes, the image has {array.ndim} ({shape})"
            )
        return array, letters, "--axes"
    known = image_axes(path)
    if known is not None and len(known) == array.ndim:
        return array, known, "metadata"
    squeezed = np.squeeze(array)
    if squeezed.ndim in (2, 3):  # a stack of planes, or one plane
        return squeezed, "ZYX"[-squeezed.ndim :], "assumed"
    if squeezed.ndim < 2:
        raise UserInputError(f"{path}: expected a volume, got an array of shape {array.shape}")
    example = f", e.g. --axes {_EXAMPLE_AXES[array.ndim]}" if array.ndim in _EXAMPLE_AXES else ""
    raise UserInputError(
        f"{path}: a {array.ndim}D image ({shape}) without axes in its metadata; pass --axes{example}"
    )


def _to_zyxc(array: np.ndarray, path: Path, axes: str, source: str) -> np.ndarray:
    """Reorder an array of `axes` to (Z, Y, X, C), refusing a time series and too many channels."""
    lengths = dict(zip(axes, array.shape, strict=True))
    if lengths.get("T", 1) > 1:  # never read as z or channels by guess: the user says which it is
        raise UserInputError(
            f"{path}: has a time axis (T={lengths['T']}); a time series is not a volume: pass --axes with Z "
            "if these are z slices, or split the frames"
        )
    if lengths.get("C", 1) > MAX_CHANNELS:
        raise UserInputError(
            f"{path}: C={lengths['C']} channels (axes {axes}, from {source}), more than {MAX_CHANNELS}; pass "
            "--axes with Z if these are z slices"
        )
    if "T" in axes:
        array, axes = np.take(array, 0, axis=axes.index("T")), axes.replace("T", "")
    for letter in "ZC":  # one plane, one channel
        if letter not in axes:
            array, axes = array[..., np.newaxis], axes + letter
    return np.ascontiguousarray(np.transpose(array, [axes.index(letter) for letter in "ZYXC"]))


def read_volume(path: Path, *, axes: str | None = None) -> Volume:
    """Read a volume as (Z, Y, X, C) float32, checked like `read_image`.

    Its axes are `axes` (`--axes`, one letter per dimension of the file, length-1 ones included), else its
    metadata's (`image_axes`), else assumed: a 3D array (length-1 axes dropped) is ZYX, a 2D one a single
    plane; more dimensions need `--axes`. Length-1 axes are dropped; a time axis is refused."""
    array, axes, source = _volume_axes(read_array(path), path, axes)
    data = _to_zyxc(_checked_pixels(array, path), path, axes, source)
    return Volume(data=data, axes=axes, pixel_sizes=pixel_sizes(path), source=source)


def read_mask_volume(path: Path, *, axes: str | None = None) -> np.ndarray:
    """Read a 3D instance label mask as (Z, Y, X) int32, its axes found as `read_volume` finds them and its
    labels checked as `read_mask` checks them; a mask has no channels."""
    array, axes, source = _volume_axes(read_array(path), path, axes)
    channels = dict(zip(axes, array.shape, strict=True)).get("C", 1)
    if channels > 1:
        raise UserInputError(
            f"{path}: a label mask has no channels, got C={channels} (axes {axes}, from {source})"
        )
    return _checked_labels(_to_zyxc(array, path, axes, source)[..., 0], path)


def rank_positions(count: int, percentile: float) -> tuple[int, int, float]:
    """The two order statistics (0-based ranks) a percentile of `count` values lies between, and the
    fraction of the way from the first to the second (numpy's default, "linear" method)."""
    position = (count - 1) * percentile / 100.0
    lower = min(math.floor(position), count - 1)
    return lower, min(lower + 1, count - 1), position - lower


def interpolate_ranks(lower: np.ndarray, upper: np.ndarray, fraction: float) -> np.ndarray:
    """The value `fraction` of the way from `lower` to `upper`, in float64."""
    lower = np.asarray(lower, dtype=np.float64)
    return lower + (np.asarray(upper, dtype=np.float64) - lower) * fraction


def channel_percentiles(image: np.ndarray, percentile: float) -> np.ndarray:
    """The percentile of each channel of a (*spatial, C) image over all its pixels (float64, one value per
    channel), from its exact order statistics, as `training.blockwise` computes it for a file too big to
    hold: both give the same bits."""
    values = image.reshape(-1, image.shape[-1])
    first, second, fraction = rank_positions(len(values), percentile)
    ranked = np.partition(values, sorted({first, second}), axis=0)
    return interpolate_ranks(ranked[first], ranked[second], fraction)


# Added to the percentile range before dividing (`percentile_normalize`, bioimage.io's `scale_range`).
NORMALIZE_EPS = 1e-6


def scale_to_range(
    image: np.ndarray, lower: np.ndarray, upper: np.ndarray, eps: float = NORMALIZE_EPS
) -> np.ndarray:
    """(image - lower) / (upper - lower + eps) per channel, float32."""
    return ((image - lower) / (upper - lower + eps)).astype(np.float32)


def percentile_normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = NORMALIZE_EPS
) -> np.ndarray:
    """Scale each channel of a (Y, X, C) image or a (Z, Y, X, C) volume so its `low` percentile (over all
    its pixels or voxels) maps to 0 and `high` to 1.

    Same formula as bioimage.io's `scale_range` over the spatial axes (y, x, or z, y, x):
    (x - p_low) / (p_high - p_low + eps), so an exported package normalises exactly like training did.
    """
    return scale_to_range(image, channel_percentiles(image, low), channel_percentiles(image, high), eps)


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name, hidden files skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def write_tiff_atomic(path: Path, array: np.ndarray, **kwargs) -> None:
    """Write a TIFF through `training.files.atomic_target`, so a reader never sees half a file."""
    with atomic_target(path, suffix=".tmp") as tmp:
        tifffile.imwrite(tmp, array, **kwargs)
