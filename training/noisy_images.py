"""Denoising data: noisy images (a file or folder; 3D stacks as 2D slices, or as volumes for a 3D network)
with optional clean references, the embedded demos, and the split into training and validation pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from base.errors import UserInputError
from training.images import read_image_slices, read_volume
from training.lazy import LazyView, image_stem, is_zarr, list_inputs, open_lazy, read_lazily
from training.volumes import thin_volumes


def _constant(image: np.ndarray | LazyView) -> bool:
    if isinstance(image, LazyView):
        first = next(image.pieces())[0]
        return all(np.all(piece == first) for piece in image.pieces())
    return bool(np.all(image == image.reshape(-1, image.shape[-1])[0]))


@dataclass
class NoisyImage:
    """One noisy image (Y, X, C) or volume (Z, Y, X, C) in its original intensities, with its clean
    reference if any."""

    name: str
    noisy: np.ndarray | LazyView  # a view for an image read patch by patch (`read_lazily`)
    clean: np.ndarray | None = None
    where: str = ""  # the file (and slice) it came from, for messages


def _files(path: Path) -> list[Path]:
    if is_zarr(path):
        return [path]
    if path.is_dir():
        files = list_inputs(path)
        if not files:
            raise UserInputError(f"{path}: no images (.tif, .tiff, .png) in this folder")
        return files
    if not path.exists():
        raise UserInputError(f"{path}: no such file or folder")
    return [path]


def load_noisy_images(
    data: Path, clean: Path | None, *, channel_axis: int | None, ndim: int = 2, axes: str | None = None
) -> list[NoisyImage]:
    """Read every noisy image and its clean reference; all problems at once. `ndim` 2 reads 3D stacks as
    2D slices; 3 reads each file as one volume (its axes from `axes` or the file's metadata)."""

    def read(path: Path) -> list[np.ndarray | LazyView]:
        if read_lazily(path):
            view = LazyView(open_lazy(path, axes=axes if ndim == 3 else None))
            if view.ndim - 1 != ndim:
                raise UserInputError(
                    f"{path}: a {view.ndim - 1}D image ({view.image.axes}) read lazily, for a {ndim}D "
                    "network; give a large stack as a volume (--ndim 3)"
                )
            return [view]
        if ndim == 3:
            return [read_volume(path, axes=axes).data]
        return read_image_slices(path, channel_axis=channel_axis)

    images, problems = [], []
    clean_files = {p.stem: p for p in _files(clean)} if clean is not None else {}
    for path in _files(data):
        try:
            slices = read(path)
            references: list[np.ndarray | None] = [None] * len(slices)
            if clean is not None and isinstance(slices[0], LazyView):
                raise UserInputError(
                    f"{path}: read lazily (too big to hold), so it cannot be scored against "
                    "a clean reference; leave out --clean"
                )
            if clean is not None:
                reference = clean_files.get(path.stem) or (
                    clean_files.popitem()[1] if clean.is_file() else None
                )
                if reference is None:
                    raise UserInputError(f"{path}: no clean reference named {path.stem}.* in {clean}")
                references = read(reference)
                if [r.shape for r in references] != [s.shape for s in slices]:
                    raise UserInputError(f"{reference}: clean reference shape differs from {path.name}")
        except UserInputError as error:
            problems.append(str(error))
            continue
        for index, (noisy, reference) in enumerate(zip(slices, references, strict=True)):
            if len(slices) == 1:
                images.append(NoisyImage(image_stem(path), noisy, reference, str(path)))
            else:
                images.append(
                    NoisyImage(f"{path.stem}_z{index:04d}", noisy, reference, f"{path} (slice {index})")
                )
    if problems:
        raise UserInputError("\n".join(problems))
    channels = {image.noisy.shape[-1] for image in images}
    if len(channels) > 1:
        raise UserInputError(f"{data}: images have different numbers of channels {sorted(channels)}")
    return images


def embedded_demo(out_dir: Path, *, sigma: float, seed: int) -> tuple[Path, Path]:
    """scikit-image's `cell` (a quantitative phase image of a cell, CC0, shipped in its wheel), with
    Gaussian noise of `sigma` on the 0-255 scale; writes noisy.tif and clean.tif into `out_dir`."""
    from skimage import data as skimage_data

    clean = skimage_data.cell().astype(np.float32)
    noisy = clean + np.random.default_rng(seed).normal(0.0, sigma, clean.shape).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out_dir / "noisy.tif", noisy)
    tifffile.imwrite(out_dir / "clean.tif", clean)
    return out_dir / "noisy.tif", out_dir / "clean.tif"


def embedded_demo_volume(out_dir: Path, *, sigma: float, seed: int) -> tuple[Path, Path]:
    """A synthetic nuclei volume (`training.synthetic`, 32 x 96 x 96, z spacing 2 xy pixels) before the
    detector's noise, scaled to 0-255, with Gaussian noise of `sigma`; writes noisy.tif and clean.tif
    (ImageJ stacks with their axes and spacing) into `out_dir`."""
    from training.synthetic import synthetic_nuclei_volume

    anisotropy = 2.0
    clean, _ = synthetic_nuclei_volume(np.random.default_rng(seed), anisotropy=anisotropy, detector=False)
    clean = (255.0 * clean / clean.max()).astype(np.float32)
    noisy = clean + np.random.default_rng([seed, 1]).normal(0.0, sigma, clean.shape).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"imagej": True, "resolution": (1.0, 1.0)}
    options["metadata"] = {"axes": "ZYX", "spacing": anisotropy, "unit": "um"}
    tifffile.imwrite(out_dir / "noisy.tif", noisy, **options)
    tifffile.imwrite(out_dir / "clean.tif", clean, **options)
    return out_dir / "noisy.tif", out_dir / "clean.tif"


def split_images(
    images: list[NoisyImage], *, val_fraction: float, patch_size: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training and validation arrays: whole images held out when there are at least 3, otherwise the
    bottom rows of every image (of every slice of a volume), so validation patches never overlap training
    pixels."""
    arrays = [image.noisy for image in images]
    if len(arrays) >= 3:
        order = np.random.default_rng(seed).permutation(len(arrays))
        n_val = max(1, round(val_fraction * len(arrays)))
        return [arrays[i] for i in order[n_val:]], [arrays[i] for i in order[:n_val]]
    train, val = [], []
    for image in images:
        height = image.noisy.shape[-3]
        rows = max(round(val_fraction * height), patch_size // 2)
        if height - rows < patch_size // 2:
            raise UserInputError(
                f"{image.where or image.name}: {height} rows are too few to hold out "
                f"{rows} validation rows and train on patches of {patch_size}"
            )
        train.append(image.noisy[..., :-rows, :, :])
        val.append(image.noisy[..., -rows:, :, :])
    return train, val


def check_sizes(images: list[NoisyImage], patch_size: int, *, patch_depth: int | None = None) -> None:
    """Refuse images too small for the patches (`patch_depth`: of volumes, in z) and constant images."""
    problems = []
    for image in images:
        height, width = image.noisy.shape[-3:-1]
        # Mirror padding can stretch an image to the patch size, but not from less than half of it.
        if min(height, width) < patch_size // 2:
            problems.append(
                f"{image.where or image.name}: image of {height}x{width} pixels is too small for patches of "
                f"{patch_size} (needs at least {patch_size // 2} per side; lower --patch-size)"
            )
        if patch_depth is not None:
            problems += thin_volumes({image.where or image.name: image.noisy.shape}, patch_depth=patch_depth)
        if _constant(image.noisy):
            problems.append(f"{image.where or image.name}: image is constant; there is nothing to denoise")
    if problems:
        raise UserInputError("\n".join(problems))
