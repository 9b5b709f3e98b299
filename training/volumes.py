"""What the data decide about volumes before a 3D network is built: its anisotropy (z spacing over xy
pixel size, from the options or the files' pixel sizes) and whether every volume can give patches of
the network's shape. Problems name the file, as every input check does."""

from __future__ import annotations

import math
from pathlib import Path

from base.errors import UserInputError
from training.images import pixel_sizes


def anisotropy_of(anisotropy: float | None, path: Path, *, depth: int) -> tuple[float, str]:
    """The anisotropy to build with and where it came from: `anisotropy` (the option) if given, else the
    z spacing over the x pixel size in `path`'s metadata, else 1. A network of `depth` levels pools xy
    `2**depth` times at most, so a z spacing coarser than that is refused (its z and xy context would
    never meet), as is a z spacing finer than xy (this network pools z no sooner than xy)."""
    if anisotropy is not None:
        source, value = "--anisotropy", float(anisotropy)
    else:
        sizes = pixel_sizes(path)
        if "z" not in sizes or "x" not in sizes:
            return 1.0, "no pixel sizes in the metadata: 1"
        value = round(sizes["z"] / sizes["x"], 3)
        source = f"pixel sizes of {path.name}: z {sizes['z']:g}, x {sizes['x']:g}"
        if value < 1:
            raise UserInputError(
                f"{path}: z spacing {sizes['z']:g} is finer than the xy pixel size {sizes['x']:g}; this "
                "network pools z no sooner than xy: pass --anisotropy 1 to treat the voxels as cubes, or "
                "resample z"
            )
    if value > 2**depth:
        where = f"{path}: " if anisotropy is None else ""
        raise UserInputError(
            f"{where}anisotropy {value:g} ({source}): a depth-{depth} network pools xy only {2**depth}x, "
            f"so its z and xy context never match; use --depth {math.ceil(math.log2(value))} or more, or "
            "resample z"
        )
    return value, source


def files_anisotropy(anisotropy: float | None, paths: list[Path], *, depth: int) -> tuple[float, str]:
    """`anisotropy_of` over every file: the option if given, else the one value that the files with
    pixel sizes agree on (one that differs by more than 1 % is refused: one network has one anisotropy),
    else 1."""
    known = [path for path in paths if {"z", "x"} <= pixel_sizes(path).keys()]
    if anisotropy is not None or not known:
        return anisotropy_of(anisotropy, paths[0], depth=depth)
    value, source = anisotropy_of(None, known[0], depth=depth)
    for path in known[1:]:
        other, _ = anisotropy_of(None, path, depth=depth)
        if abs(other - value) > 0.01 * value:
            raise UserInputError(
                f"{path}: z spacing / xy pixel size {other:g} differs from {value:g} ({source}); "
                "resample to one spacing, or pass --anisotropy to treat all as one"
            )
    return value, source


def z_step(pool_sizes: list[tuple[int, ...]]) -> int:
    """How many slices one voxel of the network's deepest level spans: patch depths are multiples."""
    return math.prod(size[0] for size in pool_sizes)


def thin_volumes(shapes: dict[str, tuple[int, ...]], *, patch_depth: int) -> list[str]:
    """One problem line per volume (name: (Z, Y, X, C) shape) thinner than one training patch in z."""
    return [
        f"{name}: {shape[0]} slices, fewer than one training patch ({patch_depth}); lower --patch-depth "
        "(a multiple of the network's z step)"
        for name, shape in shapes.items()
        if shape[0] < patch_depth
    ]


def spacing_note(anisotropy: float | None) -> str:
    """What a 3D package's input description says about the voxels it was trained on."""
    return (
        f" Volumes (z, y, x) whose z spacing is {anisotropy or 1:g} times their xy pixel size, as in "
        "training; resample volumes of another spacing first."
    )


def voxel_size(paths: list[Path]) -> dict[str, float] | None:
    """The voxel size (micrometres along z, y, x) of the first file whose metadata gives all three, for
    the run's record; None where no file does."""
    for path in paths:
        sizes = pixel_sizes(path)
        if {"z", "y", "x"} <= sizes.keys():
            return {axis: round(sizes[axis], 6) for axis in ("z", "y", "x")}
    return None
