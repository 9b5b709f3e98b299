"""Prediction of images larger than memory, block by block, into OME-Zarr; resumable.

An image opened lazily (`training.lazy`) is cut into blocks whose side is a multiple of the output's chunk
side. Each block is read with the model's context around it, predicted in tiles (`training.tiling`) and
written straight into its own chunks of the output, so memory depends on the block, never on the image.

Why the result equals the in-memory prediction (`training.predict` on an image that fits): that one
predicts the image mirrored by the model's border and padded to its size step, the "virtual" image here.
A block reads the window of the virtual image that starts on a multiple of the step at least one halo
before its core and ends one halo after it (or at the virtual image's edge): every output pixel of the core
then sees the same pixels, pooled on the same grid, as in the whole image. Normalisation uses the same
per-image numbers: the exact percentiles of the whole file (`exact_percentiles`, from its order
statistics) or the run's training statistics.

Segmentation labels come in a second pass over the written probabilities: each block is post-processed
with `LABEL_CONTEXT` pixels of context around it (`training.targets.instances_and_seeds`), and an object
is labelled 1 + the raster index of its seed's first pixel in the whole image. Every block that sees an
object whole gives it the same label, so an object crossing block borders is one object, labels are unique
over the image and do not depend on the block size. Objects wider than the context may be cut.

Progress is recorded in the work folder `OUT/.NAME.blockwise/` after every block (atomically); `--resume`
continues a killed prediction from the blocks recorded there, and the outputs appear under their final
names (`NAME_probabilities.ome.zarr`, ...) only once complete.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr

from base.errors import UserInputError
from training.engines import activation_bytes_per_voxel
from training.files import atomic_target
from training.images import interpolate_ranks, rank_positions
from training.lazy import LazyImage, LazyView, ngff_attributes, scaled
from training.targets import instances_and_seeds
from training.tiling import per_axis, tiled_predict
from zoo import Geometry, model_geometry

OUTPUT_SUFFIX = ".ome.zarr"
PROGRESS_FILE = "progress.json"
# Pixels of context around a block for the watershed of its labels: more than a large nucleus is wide.
LABEL_CONTEXT = 96
HISTOGRAM_BINS = 2**16
# The output's chunk side along y and x; blocks are whole numbers of chunks.
CHUNK = 512
# Shares of the memory budget: one model call, and a block's window with its copies; the rest is slack for
# what the allocator keeps between blocks.
CALL_SHARE = 0.4
WINDOW_SHARE = 0.35


@dataclass(frozen=True)
class BlockwiseSpec:
    """What a task predicts blockwise (`Task.blockwise`). The model's input is
    `((raw - offset) / divisor).astype(float32)` per channel; its output, through `unscale`, is written as
    the float output `output`; with `labels` (keyword arguments of `training.targets.instances_and_seeds`)
    the labels are computed from it too."""

    output: str  # "probabilities", "denoised", "restored": the output file's name is STEM_output.ome.zarr
    normalization: Callable[[LazyImage], tuple[np.ndarray, np.ndarray]]  # offset and divisor per channel
    unscale: Callable[[np.ndarray], np.ndarray] | None = None
    labels: dict | None = None
    tta: bool = False


# === Exact percentiles of an image read in pieces ===


def _scan(image: LazyImage) -> Iterator[np.ndarray]:
    """The image's pixels as (N, C) float32 pieces (`training.lazy.PIECE_VOXELS` at a time)."""
    return LazyView(image).pieces()


def exact_percentiles(image: LazyImage, percentiles: list[float]) -> list[np.ndarray]:
    """Each percentile of each channel over the whole image, equal to `training.images.channel_percentiles`
    of the image held in memory, in bounded memory: one pass for each channel's range, one for a histogram
    of 2^16 bins, one to gather the values of the bins the wanted ranks fall in."""
    count = math.prod(image.shape)
    low = np.full(image.channels, np.inf)
    high = np.full(image.channels, -np.inf)
    for piece in _scan(image):
        if not np.isfinite(piece).all():
            raise UserInputError(f"{image.path}: contains NaN or infinite values")
        low, high = np.minimum(low, piece.min(axis=0)), np.maximum(high, piece.max(axis=0))
    width = np.where(high > low, (high - low) / HISTOGRAM_BINS, 1.0)

    def bins(piece: np.ndarray, c: int) -> np.ndarray:
        return np.minimum(((piece[:, c] - low[c]) / width[c]).astype(np.int64), HISTOGRAM_BINS - 1)

    histogram = np.zeros((image.channels, HISTOGRAM_BINS), dtype=np.int64)
    for piece in _scan(image):
        for c in range(image.channels):
            histogram[c] += np.bincount(bins(piece, c), minlength=HISTOGRAM_BINS)
    cumulative = np.cumsum(histogram, axis=1)
    wanted = [rank_positions(count, p) for p in percentiles]
    ranks = sorted({r for first, second, _ in wanted for r in (first, second)})
    # For each channel and wanted rank: the bin it falls in, and the rank of that bin's first value.
    where = {
        (c, r): int(np.searchsorted(cumulative[c], r, side="right"))
        for c in range(image.channels)
        for r in ranks
    }
    gathered: dict[tuple[int, int], list[np.ndarray]] = {(c, b): [] for (c, _), b in where.items()}
    for piece in _scan(image):
        for c in range(image.channels):
            index = bins(piece, c)
            for channel, bin_ in gathered:
                if channel == c:
                    gathered[(c, bin_)].append(piece[index == bin_, c])
    values = {key: np.sort(np.concatenate(parts)) for key, parts in gathered.items()}

    def ranked(c: int, rank: int) -> float:
        bin_ = where[(c, rank)]
        return values[(c, bin_)][rank - (cumulative[c][bin_] - histogram[c][bin_])]

    channels = range(image.channels)
    return [
        interpolate_ranks(
            np.array([ranked(c, first) for c in channels]), np.array([ranked(c, second) for c in channels]), t
        )
        for first, second, t in wanted
    ]


# === The virtual image: mirrored border, padded to the step ===


def virtual_indices(length: int, border: int, step: int) -> np.ndarray:
    """For each pixel of one axis of the image that whole-image prediction feeds the model (mirrored by
    `border`, then padded to a multiple of `step` at the far end, `training.tiling`), the pixel of the
    image it copies."""
    index = np.pad(np.arange(length), (border, border), mode="symmetric") if border else np.arange(length)
    return np.pad(index, (0, -len(index) % step), mode="symmetric")


def read_virtual(image: LazyImage, indices: list[np.ndarray], window: tuple[slice, ...]) -> np.ndarray:
    """A window of the virtual image: the image's bounding box of the source pixels, read once, then
    rearranged (mirrored where the window leaves the image)."""
    sources = [index[w] for index, w in zip(indices, window, strict=True)]
    box = tuple(slice(int(s.min()), int(s.max()) + 1) for s in sources)
    block = image.read(box)
    for axis, (source, span) in enumerate(zip(sources, box, strict=True)):
        local = source - span.start
        if not np.array_equal(local, np.arange(len(local))):
            block = np.take(block, local, axis=axis)
    return block


# === Blocks ===


def block_windows(shape: tuple[int, ...], block: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The blocks partitioning an image, in raster order: slices per spatial axis."""
    axes = [[slice(s, min(s + b, n)) for s in range(0, n, b)] for n, b in zip(shape, block, strict=True)]
    return list(itertools.product(*axes))


def _context(core: slice, length: int, margin: int, step: int = 1) -> slice:
    start = max(0, (core.start - margin) // step * step)
    stop = min(length, -(-(core.stop + margin) // step) * step)
    return slice(start, stop)


@dataclass(frozen=True)
class Sizes:
    """Block side per spatial axis, output chunk side, tile side and the most voxels per model call."""

    block: tuple[int, ...]
    chunk: tuple[int, ...]
    tile: tuple[int, ...]
    call_voxels: int


def choose_sizes(
    shape: tuple[int, ...],
    *,
    memory_bytes: int,
    model_bytes_per_voxel: float,
    channels: int,
    outputs: int,
    geometry: Geometry,
    chunk: int | None = None,
) -> Sizes:
    """Sizes whose memory stays within `memory_bytes` (beyond what the process holds before predicting):
    `CALL_SHARE` of it for one model call (`model_bytes_per_voxel` of its input), `WINDOW_SHARE` for a
    block's window, its float32 copies and outputs, and the label pass's watershed (about 64 bytes a
    pixel; measured: 25-34). Blocks of a volume keep its whole depth where they can."""
    ndim = len(shape)
    halos = per_axis(geometry.halos, ndim)
    steps = per_axis(geometry.steps, ndim)
    call_voxels = max(int(CALL_SHARE * memory_bytes / model_bytes_per_voxel), 1)
    per_window_voxel = 4 * (3 * channels + 3 * outputs) + 64
    window_voxels = max(int(WINDOW_SHARE * memory_bytes / per_window_voxel), 1)
    chunks = tuple(min(chunk or CHUNK, n) for n in shape)
    if ndim == 3:
        chunks = (min(shape[0], 64), *chunks[1:])
    block = list(chunks)
    margin = [max(h, LABEL_CONTEXT) for h in halos]

    def window(sides: list[int]) -> int:
        return math.prod(min(n, b + 2 * m) for n, b, m in zip(shape, sides, margin, strict=True))

    while True:  # grow y and x together by whole chunks while the window fits
        bigger = [
            b if axis < ndim - 2 else min(b + c, -(-n // c) * c)
            for axis, (b, c, n) in enumerate(zip(block, chunks, shape, strict=True))
        ]
        if bigger == block or window(bigger) > window_voxels:
            break
        block = bigger
    side = max(int((call_voxels / (math.prod(shape[:-2]) if ndim == 3 else 1)) ** 0.5), 1)
    tile = tuple(
        [*([shape[0]] if ndim == 3 else [])]
        + [max(side // s * s, 2 * (-(-h // s) * s) + s) for h, s in zip(halos[-2:], steps[-2:], strict=True)]
    )
    return Sizes(tuple(block), chunks, tile, call_voxels)


def default_memory_limit() -> float:
    """A quarter of this machine's memory, between 1 and 8 GiB."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return min(max(total / 4, 1.0), 8.0)


def memory_budget(limit_gib: float | None) -> int:
    """Bytes prediction may add to what this process holds now, under a limit of `limit_gib` in all
    (None: `default_memory_limit`); at least 256 MiB."""
    limit = (limit_gib or default_memory_limit()) * 2**30
    return int(max(limit - _resident_bytes(), 2**28))


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def plan(image: LazyImage, model, spec: BlockwiseSpec, *, budget: int, precision: str = "float32") -> Sizes:
    """`choose_sizes` for predicting `image` with a Keras `model` (in `precision`) as `spec` says."""
    return choose_sizes(
        image.shape,
        memory_bytes=budget,
        model_bytes_per_voxel=activation_bytes_per_voxel(model, precision),
        channels=image.channels,
        outputs=3 if spec.labels is not None else image.channels,
        geometry=model_geometry(model),
    )


# === The work folder: progress, outputs, resume ===


def output_paths(out_dir: Path, names: list[str]) -> list[Path]:
    """The OME-Zarr outputs for the names of a task's TIFF outputs."""
    return [out_dir / (Path(name).stem + OUTPUT_SUFFIX) for name in names]


def work_dir(out_dir: Path, stem: str) -> Path:
    return out_dir / f".{stem}.blockwise"


def _fingerprint(image: LazyImage, settings: dict) -> str:
    stat = image.path.stat()
    source = {"input": str(image.path.resolve()), "mtime": stat.st_mtime_ns, "settings": settings}
    return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()


class Progress:
    """The work folder's record: what the prediction is (a fingerprint of input and settings) and which
    blocks of each pass are written. Saved atomically after each block."""

    def __init__(self, folder: Path, fingerprint: str, *, resume: bool, overwrite: bool):
        self.folder = folder
        self.path = folder / PROGRESS_FILE
        if folder.exists() and not resume:
            if not overwrite:
                raise UserInputError(
                    f"{folder}: an unfinished prediction of this image; pass --resume to continue it or "
                    "--overwrite to start again"
                )
            shutil.rmtree(folder)
        record = json.loads(self.path.read_text()) if resume and self.path.is_file() else None
        if record is not None and record.get("fingerprint") != fingerprint:
            raise UserInputError(
                f"{folder}: was started with another input file, model or settings; --resume continues only "
                "the same prediction (use --overwrite to start again)"
            )
        self.record = record or {"fingerprint": fingerprint, "done": {}, "normalization": None}
        folder.mkdir(parents=True, exist_ok=True)
        self.save()

    def done(self, stage: str) -> set[int]:
        return set(self.record["done"].get(stage, []))

    def mark(self, stage: str, block: int) -> None:
        self.record["done"].setdefault(stage, []).append(block)
        self.save()

    def save(self) -> None:
        with atomic_target(self.path, suffix=".tmp") as tmp:
            tmp.write_text(json.dumps(self.record))


def _create(
    path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype, attributes: dict
) -> zarr.Array:
    """An OME-Zarr image (a group holding level "0"), reopened as is if it exists (a resumed run)."""
    if (path / "0").exists():
        return zarr.open_array(str(path / "0"), mode="r+")
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(attributes)
    return group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )


# === The passes ===


def release_memory() -> None:
    """Hand the memory freed by a block back to the system (glibc keeps it otherwise, and the resident size
    only grows); nothing where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Blockwise:
    """One blockwise prediction of `image` into `out_dir`; `predict` is a batch predictor (a Keras model or a
    `training.engines` function)."""

    image: LazyImage
    spec: BlockwiseSpec
    predict: Callable
    geometry: Geometry
    sizes: Sizes
    out_dir: Path
    stem: str  # the input's name without suffixes, for the work folder
    names: list[str]  # the task's output file names (TIFF), for their OME-Zarr counterparts
    batch_size: int = 4
    quiet: bool = False
    tiff: bool = False  # outputs as (Big)TIFF, under the in-memory path's names, instead of OME-Zarr

    def run(self, *, settings: dict, resume: bool, overwrite: bool) -> list[Path]:
        targets = output_paths(self.out_dir, self.names)
        if self.tiff:
            targets = [self.out_dir / name for name in self.names]
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            raise UserInputError(f"{existing[0]}: exists already (use --overwrite to replace it)")
        folder = work_dir(self.out_dir, self.stem)
        progress = Progress(folder, _fingerprint(self.image, settings), resume=resume, overwrite=overwrite)
        # A resumed prediction keeps the sizes it started with (the memory at hand may differ now).
        recorded = progress.record.setdefault(
            "sizes", {k: list(v) if isinstance(v, tuple) else v for k, v in self.sizes.__dict__.items()}
        )
        self.sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
        progress.save()
        start = time.perf_counter()
        if progress.record["normalization"] is None:
            offset, divisor = self.spec.normalization(self.image)
            progress.record["normalization"] = [np.asarray(offset).tolist(), np.asarray(divisor).tolist()]
            progress.save()
        offset, divisor = (np.array(v, dtype=np.float64) for v in progress.record["normalization"])
        self._predict_pass(folder, progress, offset, divisor)
        if self.spec.labels is not None:
            self._label_pass(folder, progress)
        for name, target in zip(self._stages(), targets, strict=True):
            if self.tiff:
                write_bigtiff(folder / name, target, self.image.pixel_sizes)
                continue
            if target.exists():
                shutil.rmtree(target)
            (folder / name).rename(target)
        shutil.rmtree(folder)
        seconds = time.perf_counter() - start
        megapixels = math.prod(self.image.shape) / 1e6
        if not self.quiet:
            print(
                f"{self.image.path.name}: {megapixels:.1f} Mpx in {seconds:.1f} s "
                f"({megapixels / seconds:.2f} Mpx/s) -> {', '.join(str(t) for t in targets)}"
            )
        return targets

    def _stages(self) -> list[str]:
        return ["output.zarr", *(["labels.zarr"] if self.spec.labels is not None else [])]

    def _progress_bar(self, total: int, done: int, what: str):
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=done,
            desc=f"{self.image.path.name}: {what}",
            unit="block",
            disable=True if self.quiet else None,
            leave=False,
        )

    def _axes(self, channels: bool) -> str:
        return ("C" if channels else "") + self.image.spatial

    def _predict_pass(
        self, folder: Path, progress: Progress, offset: np.ndarray, divisor: np.ndarray
    ) -> None:
        image, geometry, sizes = self.image, self.geometry, self.sizes
        ndim = len(image.shape)
        steps, halos, borders = (
            per_axis(v, ndim) for v in (geometry.steps, geometry.halos, geometry.borders)
        )
        halos = [-(-h // s) * s for h, s in zip(halos, steps, strict=True)]
        indices = [virtual_indices(n, b, s) for n, b, s in zip(image.shape, borders, steps, strict=True)]
        blocks = block_windows(image.shape, sizes.block)
        channels = None
        output = None
        done = progress.done("output")
        with self._progress_bar(len(blocks), len(done), "prediction") as bar:
            for number, core in enumerate(blocks):
                if number in done:
                    continue
                shifted = [slice(c.start + b, c.stop + b) for c, b in zip(core, borders, strict=True)]
                window = tuple(
                    _context(c, len(i), h, s)
                    for c, i, h, s in zip(shifted, indices, halos, steps, strict=True)
                )
                raw = read_virtual(image, indices, window)
                normalized = scaled(raw, offset, divisor)
                result = self._model(normalized, steps, halos)
                keep = tuple(
                    slice(s.start - w.start, s.stop - w.start) for s, w in zip(shifted, window, strict=True)
                )
                result = result[keep]
                if self.spec.unscale is not None:
                    result = self.spec.unscale(result)
                if output is None:
                    channels = result.shape[-1]
                    output = self._output_array(folder / "output.zarr", channels)
                output[self._index(core, channels)] = (
                    np.moveaxis(result, -1, 0) if channels > 1 else result[..., 0]
                )
                progress.mark("output", number)
                release_memory()
                bar.update(1)

    def _model(self, normalized: np.ndarray, steps: list[int], halos: list[int]) -> np.ndarray:
        def once(window: np.ndarray) -> np.ndarray:
            return tiled_predict(
                self.predict,
                window,
                step=steps,
                halo=halos,
                tile_size=self.sizes.tile,
                batch_size=self.batch_size,
                max_voxels=self.sizes.call_voxels,
            )

        if not self.spec.tta:
            return once(normalized)
        from training.tiling import predict_tta

        return predict_tta(once, normalized)

    def _output_array(self, path: Path, channels: int) -> zarr.Array:
        shape, chunks = self.image.shape, self.sizes.chunk
        if channels > 1:
            shape, chunks = (channels, *shape), (channels, *chunks)
        attributes = ngff_attributes(self._axes(channels > 1), self.image.pixel_sizes, name=self.spec.output)
        return _create(path, shape, chunks, np.float32, attributes)

    @staticmethod
    def _index(core: tuple[slice, ...], channels: int) -> tuple[slice, ...]:
        return ((slice(None),) if channels > 1 else ()) + tuple(core)

    def _label_pass(self, folder: Path, progress: Progress) -> None:
        image, sizes = self.image, self.sizes
        probabilities = zarr.open_array(str(folder / "output.zarr" / "0"), mode="r")
        count = math.prod(image.shape)
        dtype = np.uint32 if count < 2**32 - 1 else np.uint64
        attributes = ngff_attributes(image.spatial, image.pixel_sizes, name="labels")
        labels = _create(folder / "labels.zarr", image.shape, sizes.chunk, dtype, attributes)
        blocks = block_windows(image.shape, sizes.block)
        done = progress.done("labels")
        with self._progress_bar(len(blocks), len(done), "labels") as bar:
            for number, core in enumerate(blocks):
                if number in done:
                    continue
                window = tuple(_context(c, n, LABEL_CONTEXT) for c, n in zip(core, image.shape, strict=True))
                classes = np.moveaxis(np.asarray(probabilities[(slice(None), *window)]), 0, -1)
                labels[core] = block_labels(classes, window, core, image.shape, self.spec.labels).astype(
                    dtype
                )
                progress.mark("labels", number)
                release_memory()
                bar.update(1)


def write_bigtiff(source: Path, target: Path, pixel_sizes: dict[str, float], tile: int = 512) -> None:
    """Copy an OME-Zarr image written here to an OME-TIFF (BigTIFF, tiles of `tile`), one tile in memory at a
    time, with its axes and pixel sizes; atomically."""
    group = zarr.open_group(str(source), mode="r")
    array = group["0"]
    axes = "".join(a["name"] for a in group.attrs["multiscales"][0]["axes"]).upper()
    leading = array.shape[:-2]

    def tiles() -> Iterator[np.ndarray]:
        for index in itertools.product(*(range(n) for n in leading)):
            for y in range(0, array.shape[-2], tile):
                for x in range(0, array.shape[-1], tile):
                    block = np.asarray(array[(*index, slice(y, y + tile), slice(x, x + tile))])
                    padded = np.zeros((tile, tile), array.dtype)
                    padded[: block.shape[0], : block.shape[1]] = block
                    yield padded

    metadata: dict = {"axes": axes}
    for axis in "ZYX":
        if axis.lower() in pixel_sizes and axis in axes:
            metadata[f"PhysicalSize{axis}"] = pixel_sizes[axis.lower()]
    with atomic_target(target, suffix=".tmp") as tmp:
        tifffile.imwrite(
            tmp, tiles(), shape=array.shape, dtype=array.dtype, tile=(tile, tile), bigtiff=True, ome=True,
            metadata=metadata,
        )  # fmt: skip


def block_labels(
    probabilities: np.ndarray,
    window: tuple[slice, ...],
    core: tuple[slice, ...],
    shape: tuple[int, ...],
    options: dict,
) -> np.ndarray:
    """The labels of a block's core from the probabilities of its window (core plus context): each object
    numbered 1 + the raster index, in the whole image of `shape`, of its seed's first pixel."""
    instances, seeds = instances_and_seeds(probabilities, **options)
    found, first = np.unique(seeds.ravel(), return_index=True)
    local = np.unravel_index(first, seeds.shape)
    where = tuple(index + w.start for index, w in zip(local, window, strict=True))
    names = np.zeros(int(found.max()) + 1, dtype=np.uint64)
    names[found] = np.ravel_multi_index(where, shape).astype(np.uint64) + 1
    names[0] = 0
    inner = tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(core, window, strict=True))
    return names[instances[inner]]
