"""Images read lazily, a window at a time: OME-Zarr and plain zarr arrays, and TIFF files (BigTIFF, tiled or
striped, OME-TIFF with its pyramid levels, ImageJ hyperstacks) through tifffile's zarr store.

Nothing is read when an image is opened: `open_lazy` checks what the metadata declares (axes, size, chunk
size, and for a TIFF that the declared pixel data lies inside the file) and `LazyImage.read` returns one
window as (*spatial, C), the layout the rest of `training` uses. Memory then depends on the window, never on
the file: a crafted header that declares an absurd size is refused before anything is read.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import zarr

from base.errors import UserInputError
from training import images
from training.images import _MICROMETRES, _axes_problem, _reading, declared_shape, image_axes, pixel_sizes

ZARR_SUFFIX = ".zarr"
# OME-Zarr units (UDUNITS names) in micrometres, beyond those of `training.images`.
_UNITS = {**_MICROMETRES, "nanometer": 1e-3, "millimeter": 1e3, "meter": 1e6, "angstrom": 1e-4}
# What a lazy image may declare: a tera-voxel (far beyond any slide or light-sheet volume) and chunks that a
# reader decodes whole of at most 1 GiB.
MAX_LAZY_VOXELS = 2**40
MAX_CHUNK_BYTES = 2**30
# Pixels a `LazyView` reads at once: a window larger than this stays a view; pieces of a scan.
MAX_VIEW_READ = 2**24
PIECE_VOXELS = 2**22


def is_zarr(path: Path) -> bool:
    """A zarr store on disk: a folder named *.zarr or holding zarr metadata (v2 or v3)."""
    return path.is_dir() and (
        path.suffix.lower() == ZARR_SUFFIX
        or any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))
    )


def list_inputs(folder: Path) -> list[Path]:
    """The images of a folder (`training.images.list_images`) and its zarr images, sorted by name."""
    return sorted(images.list_images(folder) + [p for p in folder.iterdir() if is_zarr(p)])


def image_stem(path: Path) -> str:
    """An input's name without its image suffixes: `a.ome.zarr` -> `a`; a TIFF keeps `Path.stem`, as the
    in-memory path names its outputs."""
    if is_zarr(path):
        name = path.name.removesuffix(".zarr").removesuffix(".ZARR")
        return name.removesuffix(".ome")
    return path.stem


def read_lazily(path: Path) -> bool:
    """Whether a training image is read patch by patch: a zarr image, or a TIFF whose pixels would take more
    than `training.images.MAX_IMAGE_BYTES` in float32 (what the in-memory reader accepts)."""
    if is_zarr(path):
        return True
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    return 4 * math.prod(declared_shape(path)) > images.MAX_IMAGE_BYTES


@dataclass
class LazyImage:
    """An image on disk read window by window. `axes` name the stored array's axes (letters of TCZYX);
    `spatial` are its spatial axes in the order (Z,) Y, X."""

    path: Path
    array: zarr.Array
    axes: str
    pixel_sizes: dict[str, float] = field(default_factory=dict)

    @property
    def spatial(self) -> str:
        return "".join(a for a in "ZYX" if a in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape, (Z,) Y, X."""
        return tuple(self.array.shape[self.axes.index(a)] for a in self.spatial)

    @property
    def channels(self) -> int:
        return self.array.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def read(self, window: tuple[slice, ...]) -> np.ndarray:
        """The window (one slice per spatial axis, with explicit starts and stops) as (*spatial, C), in
        the stored dtype."""
        spans = dict(zip(self.spatial, window, strict=True))
        index = tuple(spans.get(a, slice(None) if a == "C" else 0) for a in self.axes)
        with _reading(self.path):
            block = np.asarray(self.array[index])
        kept = [a for a in self.axes if a in spans or a == "C"]
        order = [kept.index(a) for a in self.spatial] + ([kept.index("C")] if "C" in kept else [])
        block = np.transpose(block, order)
        return block if "C" in kept else block[..., np.newaxis]


def open_lazy(path: Path, *, axes: str | None = None, level: int = 0) -> LazyImage:
    """Open an OME-Zarr, zarr or TIFF image for window reads; `axes` (letters of TCZYX) override the
    metadata's; `level` picks a pyramid level (0: full resolution)."""
    with _reading(path):
        if is_zarr(path):
            image = _open_zarr(path, axes, level)
        elif path.suffix.lower() in (".tif", ".tiff"):
            image = _open_tiff(path, axes, level)
        else:
            raise UserInputError(f"{path}: not a TIFF or zarr image, which are read lazily")
    _check_declared(image)
    return image


def _checked_axes(path: Path, axes: str | None, ndim: int, source: str) -> str:
    letters = (axes or "").upper().replace("S", "C")
    if axes is None or _axes_problem(letters) or len(letters) != ndim:
        raise UserInputError(
            f"{path}: axes {axes or 'unknown'} ({source}) do not name the {ndim} axes of the array; pass "
            "--axes, e.g. YX, CYX or ZYX"
        )
    return letters


def _open_tiff(path: Path, axes: str | None, level: int) -> LazyImage:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if level >= len(series.levels):
            raise UserInputError(f"{path}: --level {level}, the file has {len(series.levels)} levels")
        _check_tiff_extents(path, series.levels[level])
        full, shape = series.levels[0].shape, series.levels[level].shape
    found = axes or image_axes(path)
    letters = _checked_axes(path, found, len(shape), "--axes" if axes else "TIFF metadata")
    # A pyramid level's pixels are larger by its downsampling.
    sizes = {
        axis: size * full[letters.index(axis.upper())] / shape[letters.index(axis.upper())]
        for axis, size in pixel_sizes(path).items()
        if axis.upper() in letters
    }
    store = tifffile.imread(path, aszarr=True, series=0, level=level)
    return LazyImage(path, zarr.open_array(store, mode="r"), letters, sizes)


def _check_tiff_extents(path: Path, series: tifffile.TiffPageSeries) -> None:
    """Refuse a TIFF whose pages point their pixel data past the end of the file."""
    size = path.stat().st_size
    for page in series.pages:
        if page is None:
            continue
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
        if ends and max(ends) > size:
            raise UserInputError(
                f"{path}: declares pixel data up to byte {max(ends)}, the file has {size} bytes (truncated "
                "or corrupt)"
            )
        chunk = math.prod(page.chunks) * np.dtype(page.dtype).itemsize if page.dtype else 0
        if chunk > MAX_CHUNK_BYTES:
            raise UserInputError(
                f"{path}: declares tiles or strips of {chunk / 2**30:.1f} GiB each, more than the "
                f"{MAX_CHUNK_BYTES / 2**30:.0f} GiB a reader decodes at once"
            )


def _ome_multiscales(attributes: dict) -> dict | None:
    found = attributes.get("ome", attributes).get("multiscales")  # NGFF 0.5 nests it under "ome"
    return found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else None


def _open_zarr(path: Path, axes: str | None, level: int) -> LazyImage:
    node = zarr.open(store=str(path), mode="r")
    if isinstance(node, zarr.Array):
        found = axes or {2: "YX"}.get(node.ndim)
        return LazyImage(path, node, _checked_axes(path, found, node.ndim, "--axes" if axes else "assumed"))
    multiscales = _ome_multiscales(dict(node.attrs))
    if multiscales is None:
        raise UserInputError(f"{path}: a zarr group without OME-Zarr multiscales metadata; give an array")
    datasets = multiscales.get("datasets", [])
    if level >= len(datasets):
        raise UserInputError(f"{path}: --level {level}, the image has {len(datasets)} levels")
    array = node[datasets[level]["path"]]
    names = [a["name"] if isinstance(a, dict) else a for a in multiscales.get("axes", [])]
    found = axes or "".join(str(n).upper() for n in names)
    letters = _checked_axes(path, found, array.ndim, "--axes" if axes else "OME-Zarr axes")
    return LazyImage(path, array, letters, _ngff_pixel_sizes(multiscales, datasets[level], letters))


def _ngff_pixel_sizes(multiscales: dict, dataset: dict, letters: str) -> dict[str, float]:
    scale = [1.0] * len(letters)
    for transforms in (dataset.get("coordinateTransformations", []),
                       multiscales.get("coordinateTransformations", [])):  # fmt: skip
        for transform in transforms:
            if transform.get("type") == "scale" and len(transform.get("scale", [])) == len(letters):
                scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
    sizes = {}
    for letter, value, axis in zip(letters, scale, multiscales.get("axes", []), strict=False):
        unit = axis.get("unit") if isinstance(axis, dict) else None
        factor = _UNITS.get(str(unit).lower()) if unit else None
        if letter in "ZYX" and factor is not None and value > 0:
            sizes[letter.lower()] = value * factor
    return sizes


def _check_declared(image: LazyImage) -> None:
    if "T" in image.axes and image.array.shape[image.axes.index("T")] > 1:
        raise UserInputError(f"{image.path}: a time series (T > 1, axes {image.axes}); give one time point")
    extra = [a for a in image.axes if a not in "CZYX" and image.array.shape[image.axes.index(a)] > 1]
    if extra:
        raise UserInputError(f"{image.path}: axis {extra[0]} longer than 1 (axes {image.axes})")
    voxels = math.prod(image.array.shape)
    if voxels > MAX_LAZY_VOXELS or voxels == 0:
        shape = " x ".join(map(str, image.array.shape))
        raise UserInputError(f"{image.path}: declares a {shape} array ({image.axes}), not a readable size")
    chunk = math.prod(image.array.chunks) * image.dtype.itemsize
    if chunk > MAX_CHUNK_BYTES:
        raise UserInputError(
            f"{image.path}: chunks of {chunk / 2**30:.1f} GiB, more than the "
            f"{MAX_CHUNK_BYTES / 2**30:.0f} GiB a reader decodes at once"
        )


def ngff_attributes(axes: str, pixel_sizes: dict[str, float], *, name: str) -> dict:
    """OME-Zarr (NGFF 0.4) multiscales metadata of a one-level image (its array "0") of `axes` (letters of
    CZYX), with the input's pixel sizes in micrometres."""
    axis_entries = []
    for letter in axes:
        entry = {"name": letter.lower(), "type": "channel" if letter == "C" else "space"}
        if letter != "C" and letter.lower() in pixel_sizes:
            entry["unit"] = "micrometer"
        axis_entries.append(entry)
    scale = [1.0 if a == "C" else pixel_sizes.get(a.lower(), 1.0) for a in axes]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]
    return {"multiscales": [{"version": "0.4", "name": name, "axes": axis_entries, "datasets": datasets}]}


def scaled(pixels: np.ndarray, offset: np.ndarray, divisor: np.ndarray) -> np.ndarray:
    """`(pixels - offset) / divisor` per channel, float32: the arithmetic of
    `training.restoration.normalize` and `training.images.scale_to_range` (float32 pixels, float64
    numbers), so a window normalised here equals that window of the image normalised in memory."""
    return ((pixels.astype(np.float32) - offset) / divisor).astype(np.float32)


class LazyView:
    """A read-only (*spatial, C) float32 view of a `LazyImage`, for what indexes images like arrays
    (`training.pipeline`'s patches): `shape`, `ndim`, and `view[window]` reading only the window. A view may
    be a box of the image (`view[..., :-rows, :, :]` holds rows out) and normalised per channel,
    `(pixels - offset) / divisor` as `training.restoration.normalize` computes it."""

    def __init__(self, image: LazyImage, box: tuple[slice, ...] | None = None, scale=None):
        self.image = image
        self.box = box or tuple(slice(0, n) for n in image.shape)
        self.scale = scale  # (offset, divisor) per channel, or None

    @property
    def shape(self) -> tuple[int, ...]:
        return (*(s.stop - s.start for s in self.box), self.image.channels)

    @property
    def ndim(self) -> int:
        return len(self.box) + 1

    dtype = np.dtype(np.float32)

    def _spatial(self, key) -> tuple[slice, ...]:
        key = key if isinstance(key, tuple) else (key,)
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        if not all(isinstance(k, slice) and k.step in (None, 1) for k in key) or key[-1] != slice(None):
            raise TypeError(f"a lazy image takes windows of whole channels, not {key}")
        return tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape, strict=True))

    def window(self, key) -> LazyView:
        """A sub-view (a box in this view's coordinates), read later."""
        spans = self._spatial(key)[:-1]
        view = copy.copy(self)
        view.box = tuple(
            slice(b.start + s.start, b.start + s.stop) for b, s in zip(self.box, spans, strict=True)
        )
        return view

    def __getitem__(self, key) -> np.ndarray | LazyView:
        spans = self._spatial(key)[:-1]
        if math.prod(s.stop - s.start for s in spans) > MAX_VIEW_READ:  # too big to read: stays lazy
            return self.window(key)
        return self.window(key).load()

    def load(self) -> np.ndarray:
        """The whole view, read, as a float32 (*spatial, C) array."""
        pixels = self.image.read(self.box)
        return pixels.astype(np.float32) if self.scale is None else scaled(pixels, *self.scale)

    def normalized(self, offset: np.ndarray, divisor: np.ndarray) -> LazyView:
        return LazyView(self.image, self.box, (np.asarray(offset), np.asarray(divisor)))

    def pieces(self) -> Iterator[np.ndarray]:
        """The view's pixels, not normalised, as (N, C) float32 pieces, in slabs along its first spatial
        axis."""
        rest = self.box[1:]
        rows = max(1, PIECE_VOXELS // max(1, math.prod(s.stop - s.start for s in rest)))
        first = self.box[0]
        for start in range(first.start, first.stop, rows):
            box = (slice(start, min(start + rows, first.stop)), *rest)
            yield self.image.read(box).reshape(-1, self.image.channels).astype(np.float32)

    def center_crop(self, side: int) -> np.ndarray:
        """At most `side` pixels along each axis (a volume: at most 32 slices) from the middle, in memory."""
        sides = [
            min(n, 32 if self.ndim == 4 and axis == 0 else side) for axis, n in enumerate(self.shape[:-1])
        ]
        key = tuple(
            slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(self.shape[:-1], sides, strict=True)
        )
        return self.window(key).load()


class LazyClasses(LazyView):
    """The class map (`training.targets.instance_to_classes`) of an instance mask read lazily, as a
    (*spatial, 1) uint8 view: each window is computed from the mask read with `margin` pixels around it
    (more than the boundary is wide), which gives the classes of the whole mask."""

    dtype = np.dtype(np.uint8)

    def __init__(self, mask: LazyImage, *, boundary_width: int, sampling=None):
        super().__init__(mask)
        self.options = {"boundary_width": boundary_width, "sampling": sampling}
        # A rim pixel is within `boundary_width` (in units of `sampling`) of the object's outside.
        spacing = sampling or (1.0,) * len(mask.shape)
        self.margins = [math.ceil(boundary_width / s) + 2 for s in spacing]

    @property
    def shape(self) -> tuple[int, ...]:
        return (*(s.stop - s.start for s in self.box), 1)

    def load(self) -> np.ndarray:
        from training.targets import instance_to_classes

        read = tuple(
            slice(max(0, b.start - m), min(n, b.stop + m))
            for b, m, n in zip(self.box, self.margins, self.image.shape, strict=True)
        )
        labels = self.image.read(read)[..., 0]
        classes = instance_to_classes(labels, **self.options)
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(self.box, read, strict=True))
        return classes[inner][..., np.newaxis]
