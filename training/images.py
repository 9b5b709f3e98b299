"""Reading, checking, normalising and writing 2D images and label masks.

Images come as (Y, X) or with a channel axis of at most 4 channels first or last; internally every image
is (Y, X, C) float32. Every problem is a `UserInputError` whose message names the file.
"""

from __future__ import annotations

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


def read_array(path: Path) -> np.ndarray:
    """Read a TIFF (tifffile) or PNG (imageio) file into an array, after checking the size its header
    declares (at most `MAX_IMAGE_BYTES`)."""
    try:
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
    except UserInputError:
        raise
    except FileNotFoundError:
        raise UserInputError(f"{path}: file not found") from None
    except Exception as error:  # readers raise many types for corrupt files; all mean the same to a user
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise UserInputError(f"{path}: unreadable image ({type(error).__name__}: {first_line})") from None


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


def percentile_normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-6
) -> np.ndarray:
    """Scale each channel of a (Y, X, C) image so its `low` percentile maps to 0 and `high` to 1.

    Same formula as bioimage.io's `scale_range` over axes (y, x): (x - p_low) / (p_high - p_low + eps),
    so an exported package normalises exactly like training did.
    """
    lower = np.percentile(image, low, axis=(0, 1), keepdims=True)
    upper = np.percentile(image, high, axis=(0, 1), keepdims=True)
    return ((image - lower) / (upper - lower + eps)).astype(np.float32)


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
