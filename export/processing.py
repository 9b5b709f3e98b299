"""bioimage.io's pre- and post-processing formulas, computed here for a package's test tensors.

A run's task declares its normalisation as rdf operations (`export.declaration`), chosen among those that
deepImageJ's JDLL implements, so every consumer (bioimageio.core, deepImageJ, ilastik) normalises as
training did:

- `scale_range` per image (or volume) and channel over (y, x) or (z, y, x): `(x - p_low) / (p_high -
  p_low + eps)`;
- `fixed_zero_mean_unit_variance`: `(x - mean) / (std + 1e-6)`;
- `scale_linear`: `x * gain + offset`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from export.declaration import Operation

EPS = 1e-6  # bioimage.io's epsilon of scale_range and fixed_zero_mean_unit_variance


def _per_channel(**values: list[float]) -> dict:
    # One channel: plain numbers (the form every consumer reads); more: lists along the channel axis.
    if len(next(iter(values.values()))) == 1:
        return {name: float(v[0]) for name, v in values.items()}
    return {name: [float(x) for x in v] for name, v in values.items()} | {"axis": "c"}


def scale_range(
    min_percentile: float, max_percentile: float, *, axes: Sequence[str] = ("y", "x")
) -> Operation:
    """Per image (or volume) and channel: percentiles over its spatial `axes`. Leaving `axes` out would
    make bioimageio.core reduce over the batch too (dataset statistics)."""
    kwargs = {"axes": list(axes), "min_percentile": float(min_percentile), "eps": EPS}
    return Operation(id="scale_range", kwargs=kwargs | {"max_percentile": float(max_percentile)})


def fixed_zero_mean_unit_variance(mean: list[float], std: list[float]) -> Operation:
    """`(x - mean) / (std + 1e-6)` with fixed per-channel statistics."""
    return Operation(id="fixed_zero_mean_unit_variance", kwargs=_per_channel(mean=mean, std=std))


def scale_linear(gain: list[float], offset: list[float]) -> Operation:
    """`x * gain + offset` per channel."""
    return Operation(id="scale_linear", kwargs=_per_channel(gain=gain, offset=offset))


def apply(operations: list[Operation], image: np.ndarray) -> np.ndarray:
    """Apply rdf operations to a (..., Y, X, C) or (..., Z, Y, X, C) float array, with the formulas
    bioimage.io defines (`scale_range` over its spatial `axes`, the ones just before the channel)."""
    x = image.astype(np.float64)
    for op in operations:
        k = op.kwargs
        if op.id == "scale_range":
            spatial = tuple(range(-1 - len(k.get("axes", "yx")), -1))
            low = np.percentile(x, k["min_percentile"], axis=spatial, keepdims=True)
            high = np.percentile(x, k["max_percentile"], axis=spatial, keepdims=True)
            x = (x - low) / (high - low + k["eps"])
        elif op.id == "fixed_zero_mean_unit_variance":
            x = (x - np.asarray(k["mean"])) / (np.asarray(k["std"]) + EPS)
        elif op.id == "scale_linear":
            x = x * np.asarray(k["gain"]) + np.asarray(k["offset"])
        else:
            raise ValueError(f"operation {op.id!r} is not one this project declares")
    return x.astype(np.float32)
