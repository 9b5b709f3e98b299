"""Synthetic fluorescence-nuclei images with exact instance masks.

This is the project's embedded default dataset (written to files by `training.synthetic_files`):
``python -m training.segment`` must be able to train
offline, without downloading anything, on data that still looks like the real thing. The generator is
calibrated against DSB2018 fluorescence nuclei crops (uint8, dark background of a few to ~15 counts,
nuclei of roughly 100-600 px at 256x256, mean nuclear intensity ~20-110 counts, clusters in which
neighbouring nuclei touch), so a model trained here is exercised on the same difficulties: touching
objects, dim nuclei, blurred edges, uneven illumination and shot noise.

The mask is the ground truth the image is rendered *from* (not segmented from it afterwards), so every
labelled pixel is exactly where the fluorophore was placed, and objects removed while cleaning the mask
are absent from the image as well.

Volumes (``synthetic_nuclei_volume``) go through the same code in three dimensions: ellipsoids placed in
physical units (a z slice is ``anisotropy`` xy pixels thick), then textured, blurred and noised with every
length scaled per axis, so a volume is as hard in each slice as a 2D image is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["synthetic_nuclei_image", "synthetic_nuclei_volume"]

# Objects smaller than this are dropped: they would be unrealistic slivers left by occlusion, and
# the downstream boundary/interior encoding needs some interior to be meaningful.
MIN_OBJECT_PX = 20
MIN_OBJECT_VOXELS = 60
# Nuclei may overlap a little so that neighbours share a border (which is what the boundary class is
# for) without one nucleus being swallowed by another.
_MAX_NEW_OVERLAP = 0.20
_MAX_OCCLUDED_LOSS = 0.30
# Fraction of nuclei placed next to an existing one; real cultures grow in clusters and a uniform
# layout at this density would almost never produce touching pairs.
_P_CLUSTER = 0.45
_ATTEMPTS_PER_NUCLEUS = 25
# A confocal PSF is about two (a widefield one more) times longer along the optical axis than across it.
_AXIAL_PSF_ELONGATION = 2.0
# Fraction of the volume the nuclei are meant to fill when the number of nuclei is not given.
_VOLUME_FILL = (0.10, 0.22)


def _validate_args(
    shape: tuple[int, ...], n_nuclei: tuple[int, int], radius: tuple[float, float], *, ndim: int
) -> tuple[int, ...]:
    # z may be thin (a few slices); y and x must hold at least one nucleus.
    if len(shape) != ndim or min(shape[-2:]) < 16 or min(shape) < 4:
        raise ValueError(f"shape must be {ndim} ints (y and x >= 16, z >= 4), got {shape!r}")
    if len(n_nuclei) != 2 or not 0 <= n_nuclei[0] <= n_nuclei[1]:
        raise ValueError(f"n_nuclei must be (lo, hi) with 0 <= lo <= hi, got {n_nuclei!r}")
    if len(radius) != 2 or not 1.0 <= radius[0] <= radius[1]:
        raise ValueError(f"radius must be (lo, hi) with 1 <= lo <= hi, got {radius!r}")
    return tuple(int(n) for n in shape)


def _rasterise_nucleus(
    rng: np.random.Generator,
    center: tuple[float, ...],
    axes: tuple[float, ...],
    shape: tuple[int, ...],
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """Rasterise one irregular ellipse (an ellipsoid in 3D) inside its bounding box.

    ``center`` and the semi-``axes`` are in pixels, ordered like ``shape`` ((z,) y, x); the y and x axes
    are turned by a random angle, z stays the optical axis. Returns ``(bbox, inside, rho)`` where ``rho``
    is the normalised radius (0 at the centre, 1 at the outline), later used for the nuclear intensity
    profile, or ``None`` if the nucleus lies outside.
    """
    cy, cx = center[-2:]
    a, b = axes[-2:]
    theta = rng.uniform(0.0, np.pi)
    # Low harmonics only: real nuclear envelopes are smooth, slightly lumpy or kidney-shaped, never
    # jagged. Amplitudes decay with order and stay small so the shape remains star-shaped and simply
    # connected.
    orders = np.arange(2, 6)
    amps = rng.normal(0.0, 0.045, size=orders.size) / np.sqrt(orders - 1)
    phases = rng.uniform(0.0, 2 * np.pi, size=orders.size)

    lumps = 1.0 + np.abs(amps).sum()
    reach = [axis * lumps + 1.0 for axis in axes[:-2]] + [max(a, b) * lumps + 1.0] * 2
    bbox = tuple(
        slice(max(int(np.floor(c - r)), 0), min(int(np.ceil(c + r)) + 1, n))
        for c, r, n in zip(center, reach, shape, strict=True)
    )
    if any(sl.start >= sl.stop for sl in bbox):
        return None

    grid = np.mgrid[bbox].astype(np.float32)
    dy, dx = grid[-2] - cy, grid[-1] - cx
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    u = dx * cos_t + dy * sin_t
    v = -dx * sin_t + dy * cos_t
    ellipse_r2 = (u / a) ** 2 + (v / b) ** 2
    for coords, c, axis in zip(grid[:-2], center[:-2], axes[:-2], strict=True):
        ellipse_r2 = ellipse_r2 + ((coords - c) / axis) ** 2
    ellipse_r = np.sqrt(ellipse_r2)
    # The lumps follow the azimuth only: seen from above a nucleus is kidney-shaped, not its z profile.
    phi = np.arctan2(v, u)
    per_order = (-1,) + (1,) * phi.ndim
    outline = 1.0 + (
        amps.reshape(per_order) * np.cos(orders.reshape(per_order) * phi + phases.reshape(per_order))
    ).sum(0)
    rho = ellipse_r / outline
    inside = rho <= 1.0
    if not inside.any():
        return None
    return bbox, inside, rho.astype(np.float32)


def _cluster_direction(rng: np.random.Generator, ndim: int) -> tuple[float, ...]:
    """Unit vector from a nucleus to a neighbour placed against it, ordered (z,) y, x."""
    angle = rng.uniform(0.0, 2 * np.pi)
    if ndim == 2:
        return np.sin(angle), np.cos(angle)
    # Mostly sideways: nuclei touch above one another too, but a tilted contact is the common case.
    dz = rng.uniform(-0.6, 0.6)
    across = np.sqrt(1.0 - dz * dz)
    return dz, across * np.sin(angle), across * np.cos(angle)


def _place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    n_target: int,
    radius: tuple[float, float],
    *,
    spacing: tuple[float, ...],
    min_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place nuclei with limited overlap; later nuclei occlude earlier ones.

    Positions and sizes are drawn in physical units (``spacing`` is the size of a pixel along each axis,
    in xy pixels) and rasterised in pixels. In 3D the z semi-axis is 0.7-1 times the xy ones. Returns
    the raw label map (int32, ids 1..k in placement order, possibly with fragments), the
    normalised-radius map and a per-id "condensed" flag array (index 0 unused).
    """
    labels = np.zeros(shape, dtype=np.int32)
    rho_map = np.ones(shape, dtype=np.float32)
    centers: list[tuple[float, ...]] = []
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
        semi_axes = (a, b) if len(shape) == 2 else (rng.uniform(0.7, 1.0) * 0.5 * (a + b), a, b)
        r_new = sum(semi_axes) / len(semi_axes)

        if centers and rng.random() < _P_CLUSTER:
            j = int(rng.integers(len(centers)))
            direction = _cluster_direction(rng, len(shape))
            # Slightly less than the sum of radii gives a shared border after occlusion; slightly more
            # gives the near-touching pairs separated by a 1-2 px gap that are just as common.
            dist = (mean_radii[j] + r_new) * rng.uniform(0.78, 1.03)
            center = tuple(c + dist * d for c, d in zip(centers[j], direction, strict=True))
        else:
            # Centres may fall just outside the frame so that nuclei are cut by the border, as in crops.
            center = tuple(
                rng.uniform(-0.3 * r_new, n * step + 0.3 * r_new)
                for n, step in zip(shape, spacing, strict=True)
            )

        raster = _rasterise_nucleus(
            rng,
            tuple(c / step for c, step in zip(center, spacing, strict=True)),
            tuple(axis / step for axis, step in zip(semi_axes, spacing, strict=True)),
            shape,
        )
        if raster is None:
            continue
        bbox, inside, rho = raster
        n_px = int(inside.sum())
        if n_px < min_size:
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
        centers.append(center)
        mean_radii.append(r_new)
        condensed.append(is_condensed)
        areas.append(n_px)
    return labels, rho_map, np.asarray(condensed, dtype=bool)


def _clean_labels(labels: np.ndarray, *, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop tiny or fragmented objects and relabel 1..N; returns (mask uint16, old ids kept)."""
    keep: list[int] = []
    for old_id, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == old_id
        if obj.sum() < min_size:
            continue
        # Default (4-, in 3D 6-)connectivity: the strictest common definition, so the mask is valid for any
        # consumer. Fragments are dropped rather than trimmed because a nucleus split by an occluder
        # is not something the image should teach.
        _, n_comp = ndi.label(obj)
        if n_comp == 1:
            keep.append(old_id)
    lut = np.zeros(labels.max() + 1, dtype=np.uint16)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    return lut[labels], np.asarray(keep, dtype=np.int64)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float, spacing: tuple[float, ...]
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ~sigma xy pixels."""
    sigmas = tuple(sigma / step for step in spacing)
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigmas)
    return (field - field.mean()) / (field.std() + 1e-8)


def _render(
    rng: np.random.Generator,
    mask: np.ndarray,
    rho_map: np.ndarray,
    condensed: np.ndarray,
    *,
    spacing: tuple[float, ...],
    detector: bool = True,
) -> np.ndarray:
    """The uint8 fluorescence image of the nuclei in `mask` (labels 1..N, `condensed` flags per label);
    without `detector`, the float32 intensities that reach the detector (no shot or read noise)."""
    shape, n = mask.shape, int(mask.max())
    h, w = shape[-2:]

    # --- emission (fluorophore density) -------------------------------------------------------
    # Per-image staining level, then per-nucleus variation (cell cycle / DNA content), with a
    # minority of clearly dim nuclei that a model must not miss.
    level = rng.uniform(30.0, 110.0)
    bright = level * rng.lognormal(0.0, 0.22, size=n)
    dim = rng.random(n) < 0.18
    bright[dim] *= rng.uniform(0.3, 0.55, size=int(dim.sum()))
    bright[condensed] *= rng.uniform(1.6, 2.4, size=int(condensed.sum()))
    per_label = np.concatenate([[0.0], bright]).astype(np.float32)

    # Chromatin texture: fine grain plus coarser blotches (nucleoli read as darker patches), and sparse
    # bright chromocentres, which is what makes real DAPI/Hoechst nuclei look mottled rather than flat.
    texture = 0.6 * _smooth_noise(rng, shape, 1.2, spacing) + 0.4 * _smooth_noise(rng, shape, 3.0, spacing)
    texture_contrast = rng.uniform(0.06, 0.45)
    chromocentres = np.clip(_smooth_noise(rng, shape, 1.0, spacing) - 1.6, 0.0, None)
    texture = texture + rng.uniform(1.0, 3.0) * chromocentres
    # Slight dome: DNA is thicker in the middle of a flattened nucleus.
    dome = 1.0 - 0.2 * np.clip(rho_map, 0.0, 1.0) ** 2
    fg = mask > 0
    emission = np.where(fg, per_label[mask] * dome * (1.0 + texture_contrast * texture), 0.0)
    emission = np.maximum(emission, 0.0).astype(np.float32)

    # --- optics ---------------------------------------------------------------------------------
    psf_sigma = rng.uniform(0.8, 1.6)
    elongation = (_AXIAL_PSF_ELONGATION,) * (len(shape) - 2) + (1.0, 1.0)
    blur = tuple(psf_sigma * e / step for e, step in zip(elongation, spacing, strict=True))
    defocus = tuple(8.0 * e / step for e, step in zip(elongation, spacing, strict=True))
    # Widefield images carry out-of-focus haze around bright objects; a broad second Gaussian is a
    # cheap stand-in for the defocused part of the PSF.
    haze = rng.uniform(0.04, 0.12)
    signal = (1.0 - haze) * ndi.gaussian_filter(emission, blur) + haze * ndi.gaussian_filter(
        emission, defocus
    )

    # Uneven illumination: vignetting multiplies everything, a smooth offset field adds to the
    # background (autofluorescence / stray light). Both vary in xy; in a volume the blotches vary in z too.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vy, vx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
    r2 = ((yy - vy) / h) ** 2 + ((xx - vx) / w) ** 2
    vignette = 1.0 - rng.uniform(0.1, 0.35) * r2 / r2.max()
    bg_level = rng.uniform(2.0, 14.0)
    gradient = rng.uniform(-0.3, 0.3) * (yy / h - 0.5) + rng.uniform(-0.3, 0.3) * (xx / w - 0.5)
    blotches = 0.25 * _smooth_noise(rng, shape, max(h, w) / 8, spacing)
    if len(shape) == 3:
        # Scattering and absorption dim the deeper slices of a volume.
        depth = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)[:, None, None]
        signal = signal * (1.0 - rng.uniform(0.0, 0.35) * depth)
    background = bg_level * np.clip(1.0 + gradient + blotches, 0.3, None)
    expected = (signal + background) * vignette

    if not detector:
        return expected.astype(np.float32)
    # --- detector -------------------------------------------------------------------------------
    # Photons per count sets how strong shot noise is relative to the signal; read noise only matters
    # in the dark background.
    photons_per_count = rng.uniform(6.0, 20.0)
    photons = rng.poisson(np.maximum(expected, 0.0) * photons_per_count)
    counts = photons / photons_per_count + rng.normal(0.0, rng.uniform(0.3, 1.0), size=shape)
    return np.clip(np.rint(counts), 0, 255).astype(np.uint8)


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
    shape = _validate_args(shape, n_nuclei, radius, ndim=2)
    n_target = int(rng.integers(n_nuclei[0], n_nuclei[1] + 1))
    spacing = (1.0, 1.0)
    raw, rho_map, condensed = _place_nuclei(
        rng, shape, n_target, radius, spacing=spacing, min_size=MIN_OBJECT_PX
    )
    mask, kept = _clean_labels(raw, min_size=MIN_OBJECT_PX)
    return _render(rng, mask, rho_map, condensed[kept], spacing=spacing), mask


def synthetic_nuclei_volume(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int, int] = (32, 96, 96),
    anisotropy: float = 2.0,
    n_nuclei: tuple[int, int] | None = None,
    radius: tuple[float, float] = (4.0, 7.0),
    detector: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One fluorescence-like nuclei volume (Z, Y, X) and its exact instance mask: the 3D counterpart of
    `synthetic_nuclei_image`, with the same staining, texture, PSF, illumination and noise model.

    Args:
        rng: source of all randomness; the same generator state gives identical outputs.
        shape: ``(depth, height, width)`` in voxels.
        anisotropy: z spacing over the xy pixel size; nuclei are ellipsoids in physical space, so they
            span ``1 / anisotropy`` as many slices as xy pixels, and the blur and texture scale alike.
        n_nuclei: inclusive range for the number of nuclei to attempt; by default enough to fill about
            10-22% of the volume. Objects left under 60 voxels or fragmented by occlusion are removed.
        radius: range of the xy semi-axes in pixels; the z semi-axis is 0.7-1 times their mean.
        detector: False gives, instead of the uint8 volume, the float32 intensities before the detector's
            shot and read noise: a clean reference for denoising.

    Returns:
        ``(volume, mask)``: **uint8** and **uint16** ZYX arrays, labels 1..N sequential and 6-connected,
        touching nuclei sharing a face.
    """
    if not anisotropy > 0:
        raise ValueError(f"anisotropy must be positive, got {anisotropy!r}")
    if n_nuclei is None:
        mean_r = 0.5 * (radius[0] + radius[1])
        nucleus_volume = 4 / 3 * np.pi * mean_r**3 * 0.8
        per_fill = float(np.prod(shape)) * anisotropy / nucleus_volume
        n_nuclei = (max(1, round(_VOLUME_FILL[0] * per_fill)), max(1, round(_VOLUME_FILL[1] * per_fill)))
    shape = _validate_args(shape, n_nuclei, radius, ndim=3)
    n_target = int(rng.integers(n_nuclei[0], n_nuclei[1] + 1))
    spacing = (float(anisotropy), 1.0, 1.0)
    raw, rho_map, condensed = _place_nuclei(
        rng, shape, n_target, radius, spacing=spacing, min_size=MIN_OBJECT_VOXELS
    )
    mask, kept = _clean_labels(raw, min_size=MIN_OBJECT_VOXELS)
    return _render(rng, mask, rho_map, condensed[kept], spacing=spacing, detector=detector), mask
