"""From instance masks to the three training classes, and from class probabilities back to instances.

Classes: 0 background, 1 cell interior, 2 cell boundary. The boundary class is what separates touching
objects: the network learns to draw a line between them, and the interiors it leaves apart are the seeds
of the instances.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

CLASS_NAMES = ("background", "interior", "boundary")


def instance_to_classes(
    labels: np.ndarray, *, boundary_width: int = 2, sampling: tuple[float, ...] | None = None
) -> np.ndarray:
    """Turn an instance mask, 2D (Y, X) or 3D (Z, Y, X), into a uint8 class map (background / interior /
    boundary).

    Boundary pixels are object pixels closer than `boundary_width` pixels to a pixel outside their own
    object: the object's rim, including where it touches another object. Neighbours share a face (4- in
    2D, 6-connectivity in 3D). `sampling` is the pixel size along each axis in units of the width, e.g.
    `(anisotropy, 1, 1)` for a volume whose z spacing is `anisotropy` xy pixels, so the rim is
    `boundary_width` xy pixels wide and correspondingly fewer slices thick; None counts every axis as 1.
    """
    if sampling is not None and len(sampling) != labels.ndim:
        raise ValueError(f"sampling {tuple(sampling)} needs one spacing per axis of labels {labels.shape}")
    inner_rim = find_boundaries(labels, mode="inner") & (labels > 0)
    if boundary_width > 1 and inner_rim.any():
        # Grow the rim inwards: distance to the nearest rim pixel, kept inside the objects.
        distance = ndimage.distance_transform_edt(~inner_rim, sampling=sampling)
        inner_rim = (distance < boundary_width) & (labels > 0)
    classes = (labels > 0).astype(np.uint8)
    classes[inner_rim] = 2
    return classes


def instances_and_seeds(
    probabilities: np.ndarray,
    *,
    interior_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    min_size: int = 15,
) -> tuple[np.ndarray, np.ndarray]:
    """`classes_to_instances` before its labels are renumbered: the instances, each labelled as the seed it
    grew from, and the seeds (face-connected components of the interior), both int32."""
    interior = probabilities[..., 1]
    foreground = (1.0 - probabilities[..., 0]) > foreground_threshold
    seeds = connected_components(interior > interior_threshold, connectivity=1)
    mask = foreground | (seeds > 0)
    instances = watershed(-interior, markers=seeds, mask=mask)
    if min_size > 0:
        # Judge a seed by the object it grows into, not by its own size: with a wide boundary class the
        # interior of a small nucleus is only a few pixels. Pixels of dropped objects go to neighbours.
        too_small = np.bincount(instances.ravel(), minlength=int(seeds.max()) + 1) < min_size
        too_small[0] = False
        seeds[too_small[seeds]] = 0
        instances = watershed(-interior, markers=seeds, mask=mask)
        instances = remove_small_objects(instances, max_size=min_size - 1)
    return instances, seeds


def classes_to_instances(
    probabilities: np.ndarray,
    *,
    interior_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    min_size: int = 15,
) -> np.ndarray:
    """Turn (Y, X, 3) or (Z, Y, X, 3) class probabilities into an instance label image or volume (uint32,
    0 = background).

    Seeds are the face-connected components of `p(interior) > interior_threshold`; each grows by
    watershed on the interior probability into every pixel with `1 - p(background) >
    foreground_threshold`, so the boundary pixels go to the nearest seed. Objects smaller than `min_size`
    pixels (voxels in 3D) are removed and the labels renumbered 1..N.
    """
    instances, _ = instances_and_seeds(
        probabilities,
        interior_threshold=interior_threshold,
        foreground_threshold=foreground_threshold,
        min_size=min_size,
    )
    return relabel_sequential(instances.astype(np.uint32))[0]
