"""Synthetic fluorescence-nuclei images with exact instance masks.

This is the project's embedded default dataset: ``python -m training.segment`` must be able to train
offline, without downloading anything, on data that still looks like the real thing. The generator is
calibrated against DSB2018 fluorescence nuclei crops (uint8, dark background of a few to ~15 counts,
nuclei of roughly 100-600 px at 256x256, mean nuclear intensity ~20-110 counts, clusters in which
neighbouring nuclei touch), so a model trained here is exercised on the same difficulties: touching
objects, dim nuclei, blurred edges, uneven illumination and shot noise.

The mask is the ground truth the image is rendered *from* (not segmented from it afterwards), so every
labelled pixel is exactly where the fluorophore was placed, and objects removed while cleaning the mask
are absent from the image as well.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

__all__ = ["synthetic_nuclei_image", "write_synthetic_dataset"]

# Objects smaller than this are dropped: they would be unrealistic slivers left by occlusion, and
# the downstream boundary/interior encoding needs some interior to be meaningful.
MIN_OBJECT_PX = 20
# Nuclei may overlap a little so that neighbours share a border (which is what the boundary class is
# for) without one nucleus being swallowed by another.
_MAX_NEW_OVERLAP = 0.20
_MAX_OCCLUDED_LOSS = 0.30
# Fraction of nuclei placed next to an existing one; real cultures grow in clusters and a uniform
# layout at this density would almost never produce touching pairs.
_P_CLUSTER = 0.45
_ATTEMPTS_PER_NUCLEUS = 25
_SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}


def _validate_image_args(
    shape: tuple[int, int], n_nuclei: tuple[int, int], radius: tuple[float, float]
) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be two ints >= 16, got {shape!r}")
    if len(n_nuclei) != 2 or not 0 <= n_nuclei[0] <= n_nuclei[1]:
        raise ValueError(f"n_nuclei must be (lo, hi) with 0 <= lo <= hi, got {n_nuclei!r}")
    if len(radius) != 2 or not 1.0 <= radius[0] <= radius[1]:
        raise ValueError(f"radius must be (lo, hi) with 1 <= lo <= hi, got {radius!r}")
    return int(shape[0]), int(shape[1])


def _rasterise_nucleus(
    rng: np.random.Generator,
    center: tuple[float, float],
    axes: tuple[float, float],
    shape: tuple[int, int],
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Rasterise one irregular ellipse inside its bounding box.

    Returns ``(bbox, inside, rho)`` where ``rho`` is the normalised radius (0 at the centre, 1 at the
    outline), later used for the nuclear intensity profile, or ``None`` if the nucleus lies outside.
    """
    cy, cx = center
    a, b = axes
    theta = rng.uniform(0.0, np.pi)
    # Low harmonics only: real nuclear envelopes are smooth, slightly lumpy or kidney-shaped, never
    # jagged. Amplitudes decay with order and stay small so the shape remains star-shaped and simply
    # connected.
    orders = np.arange(2, 6)
    amps = rng.normal(0.0, 0.045, size=orders.size) / np.sqrt(orders - 1)
    phases = rng.uniform(0.0, 2 * np.pi, size=orders.size)

    reach = max(a, b) * (1.0 + np.abs(amps).sum()) + 1.0
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, shape[0])
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None

    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    u = dx * cos_t + dy * sin_t
    v = -dx * sin_t + dy * cos_t
    ellipse_r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phi = np.arctan2(v, u)
    outline = 1.0 + (amps[:, None, None] * np.cos(orders[:, None, None] * phi + phases[:, None, None])).sum(0)
    rho = ellipse_r / outline
    inside = rho <= 1.0
    if not inside.any():
        return None
    return (slice(y0, y1), slice(x0, x1)), inside, rho.astype(np.float32)


def _place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_target: int,
    radius: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place nuclei with limited overlap; later nuclei occlude earlier ones.

    Returns the raw label map (int32, ids 1..k in placement order, possibly with fragments), the
    normalised-radius map and a per-id "condensed" flag array (index 0 unused).
    """
    labels = np.zeros(shape, dtype=np.int32)
    rho_map = np.ones(shape, dtype=np.float32)
    centers: list[tuple[float, float]] = []
    mean_radii: list[float] = []
    condensed: list[bool] = [False]
    areas: list[int] = [0]
    r_lo, r_hi = radius

    attempts = 0
    while len(centers) < n_target and attempts < n_target * _ATTEMPTS_PER_NUCLEUS:
        attempts += 1
        # A few small, compact nuclei (mitotic / apoptotic) are much brighter in DAPI/Hoechst images.
        is_condensed = rng.random() < 0.06
        hi = r_lo + 0.35 * (r_hi - r_lo) if is_condensed else r_hi
        a, b = rng.uniform(r_lo, hi, size=2)
        r_new = 0.5 * (a + b)

        if centers and rng.random() < _P_CLUSTER:
            j = int(rng.integers(len(centers)))
            direction = rng.uniform(0.0, 2 * np.pi)
            # Slightly less than the sum of radii gives a shared border after occlusion; slightly more
            # gives the near-touching pairs separated by a 1-2 px gap that are just as common.
            dist = (mean_radii[j] + r_new) * rng.uniform(0.78, 1.03)
            cy = centers[j][0] + dist * np.sin(direction)
            cx = centers[j][1] + dist * np.cos(direction)
        else:
            # Centres may fall just outside the frame so that nuclei are cut by the border, as in crops.
            cy = rng.uniform(-0.3 * r_new, shape[0] + 0.3 * r_new)
            cx = rng.uniform(-0.3 * r_new, shape[1] + 0.3 * r_new)

        raster = _rasterise_nucleus(rng, (cy, cx), (a, b), shape)
        if raster is None:
            continue
        bbox, inside, rho = raster
        n_px = int(inside.sum())
        if n_px < MIN_OBJECT_PX:
            continue
        covered = labels[bbox][inside]
        if np.count_nonzero(covered) > _MAX_NEW_OVERLAP * n_px:
            continue
        lost = np.bincount(covered, minlength=len(areas))[1:]
        if lost.size and np.any(lost > _MAX_OCCLUDED_LOSS * np.asarray(areas[1:])):
            continue

        new_id = len(centers) + 1
        labels[bbox][inside] = new_id
        rho_map[bbox][inside] = rho[inside]
        centers.append((cy, cx))
        mean_radii.append(r_new)
        condensed.append(is_condensed)
        areas.append(n_px)
    return labels, rho_map, np.asarray(condensed, dtype=bool)


def _clean_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop tiny or fragmented objects and relabel 1..N; returns (mask uint16, old ids kept)."""
    keep: list[int] = []
    for old_id, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == old_id
        if obj.sum() < MIN_OBJECT_PX:
            continue
        # Default (4-)connectivity: the strictest common definition, so the mask is valid for any
        # consumer. Fragments are dropped rather than trimmed because a nucleus split by an occluder
        # is not something the image should teach.
        _, n_comp = ndi.label(obj)
        if n_comp == 1:
            keep.append(old_id)
    lut = np.zeros(labels.max() + 1, dtype=np.uint16)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    return lut[labels], np.asarray(keep, dtype=np.int64)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ~sigma."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def synthetic_nuclei_image(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (256, 256),
    n_nuclei: tuple[int, int] = (15, 40),
    radius: tuple[float, float] = (6.0, 14.0),
) -> tuple[np.ndarray, np.ndarray]:
    """One fluorescence-like nuclei image and its exact instance mask.

    Args:
        rng: source of all randomness; the same generator state gives identical outputs.
        shape: ``(height, width)`` of the image.
        n_nuclei: inclusive range for the number of nuclei to attempt. Fewer may end up in the mask
            when the frame is too crowded to place them or when occlusion leaves an object tiny
            (< 20 px) or fragmented; such objects are removed from both mask and image.
        radius: range of the ellipse semi-axes in pixels (each axis drawn independently).

    Returns:
        ``(image, mask)``. ``image`` is **uint8** (0..255, like DSB2018 fluorescence crops): dark,
        unevenly lit background of ~2-15 counts, mean nuclear intensity ~30-110 counts, some dim
        nuclei and a few very bright condensed ones, Gaussian PSF blur, Poisson shot noise and
        Gaussian read noise. ``mask`` is **uint16** with 0 for background and nuclei labelled 1..N
        sequentially; every label is non-empty, 4-connected and at least 20 px, and touching nuclei
        share a border.
    """
    h, w = _validate_image_args(shape, n_nuclei, radius)
    n_target = int(rng.integers(n_nuclei[0], n_nuclei[1] + 1))

    raw, rho_map, condensed = _place_nuclei(rng, (h, w), n_target, radius)
    mask, kept = _clean_labels(raw)
    n = kept.size

    # --- emission (fluorophore density) -------------------------------------------------------
    # Per-image staining level, then per-nucleus variation (cell cycle / DNA content), with a
    # minority of clearly dim nuclei that a model must not miss.
    level = rng.uniform(30.0, 110.0)
    bright = level * rng.lognormal(0.0, 0.22, size=n)
    dim = rng.random(n) < 0.18
    bright[dim] *= rng.uniform(0.3, 0.55, size=int(dim.sum()))
    bright[condensed[kept]] *= rng.uniform(1.6, 2.4, size=int(condensed[kept].sum()))
    per_label = np.concatenate([[0.0], bright]).astype(np.float32)

    # Chromatin texture: fine grain plus coarser blotches (nucleoli read as darker patches), and sparse
    # bright chromocentres, which is what makes real DAPI/Hoechst nuclei look mottled rather than flat.
    texture = 0.6 * _smooth_noise(rng, (h, w), 1.2) + 0.4 * _smooth_noise(rng, (h, w), 3.0)
    texture_contrast = rng.uniform(0.06, 0.45)
    chromocentres = np.clip(_smooth_noise(rng, (h, w), 1.0) - 1.6, 0.0, None)
    texture = texture + rng.uniform(1.0, 3.0) * chromocentres
    # Slight dome: DNA is thicker in the middle of a flattened nucleus.
    dome = 1.0 - 0.2 * np.clip(rho_map, 0.0, 1.0) ** 2
    fg = mask > 0
    emission = np.where(fg, per_label[mask] * dome * (1.0 + texture_contrast * texture), 0.0)
    emission = np.maximum(emission, 0.0).astype(np.float32)

    # --- optics ---------------------------------------------------------------------------------
    psf_sigma = rng.uniform(0.8, 1.6)
    # Widefield images carry out-of-focus haze around bright objects; a broad second Gaussian is a
    # cheap stand-in for the defocused part of the PSF.
    haze = rng.uniform(0.04, 0.12)
    signal = (1.0 - haze) * ndi.gaussian_filter(emission, psf_sigma) + haze * ndi.gaussian_filter(
        emission, 8.0
    )

    # Uneven illumination: vignetting multiplies everything, a smooth offset field adds to the
    # background (autofluorescence / stray light).
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vy, vx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
    r2 = ((yy - vy) / h) ** 2 + ((xx - vx) / w) ** 2
    vignette = 1.0 - rng.uniform(0.1, 0.35) * r2 / r2.max()
    bg_level = rng.uniform(2.0, 14.0)
    gradient = rng.uniform(-0.3, 0.3) * (yy / h - 0.5) + rng.uniform(-0.3, 0.3) * (xx / w - 0.5)
    blotches = 0.25 * _smooth_noise(rng, (h, w), max(h, w) / 8)
    background = bg_level * np.clip(1.0 + gradient + blotches, 0.3, None)
    expected = (signal + background) * vignette

    # --- detector -------------------------------------------------------------------------------
    # Photons per count sets how strong shot noise is relative to the signal; read noise only matters
    # in the dark background.
    photons_per_count = rng.uniform(6.0, 20.0)
    photons = rng.poisson(np.maximum(expected, 0.0) * photons_per_count)
    counts = photons / photons_per_count + rng.normal(0.0, rng.uniform(0.3, 1.0), size=(h, w))
    image = np.clip(np.rint(counts), 0, 255).astype(np.uint8)
    return image, mask


def _split_names(names: list[str], rng: np.random.Generator) -> dict[str, str]:
    n = len(names)
    n_val = max(1, round(_SPLIT_FRACTIONS["val"] * n))
    n_test = max(1, round(_SPLIT_FRACTIONS["test"] * n))
    order = rng.permutation(n)
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return {names[i]: splits[k] for k, i in enumerate(order)}


def write_synthetic_dataset(
    out_dir: Path,
    *,
    n_images: int = 32,
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> Path:
    """Write a synthetic nuclei dataset in the same layout as the real DSB2018 subset.

    Creates ``out_dir/images/synth_XXX.tif`` (uint8) and ``out_dir/masks/synth_XXX.tif`` (uint16
    instance labels) with tifffile, plus ``out_dir/index.csv`` with columns ``name,split`` where
    ``name`` is the file stem and ``split`` is ``train`` / ``val`` / ``test`` (~70/15/15, seeded, at
    least one image in each split, so ``n_images`` must be >= 3).

    Deterministic: the same ``seed`` gives byte-identical arrays and the same split. Each image gets
    its own child seed, so image ``i`` does not depend on ``n_images``.

    Returns:
        ``out_dir``.
    """
    if n_images < 3:
        raise ValueError(f"n_images must be >= 3 to fill train/val/test, got {n_images}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(seed)
    split_seq, images_seq = root.spawn(2)
    names = [f"synth_{i:03d}" for i in range(n_images)]
    for name, child in zip(names, images_seq.spawn(n_images), strict=True):
        image, mask = synthetic_nuclei_image(np.random.default_rng(child), shape=shape)
        tifffile.imwrite(out_dir / "images" / f"{name}.tif", image)
        tifffile.imwrite(out_dir / "masks" / f"{name}.tif", mask)

    split_of = _split_names(names, np.random.default_rng(split_seq))
    with open(out_dir / "index.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "split"])
        for name in names:
            writer.writerow([name, split_of[name]])
    return out_dir
