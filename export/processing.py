"""The normalisation of a run, as bioimage.io pre- and post-processing operations.

Training normalises in numpy; a package must make every consumer (bioimageio.core, deepImageJ, ilastik)
normalise the same way, so it declares the same formulas as rdf operations, chosen among those that
deepImageJ's JDLL implements:

- segmentation: `scale_range` per image and channel over (y, x), percentiles as in training,
  `(x - p_low) / (p_high - p_low + 1e-6)`; the softmax stays inside the network, so no post-processing;
- denoising: `fixed_zero_mean_unit_variance` with the training mean and std, `(x - mean) / (std + 1e-6)`,
  and `scale_linear` back to the input's intensities, `y * (std + 1e-6) + mean`.

`apply` computes the same formulas here, for the package's test tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from export.run_folder import Run

EPS = 1e-6  # bioimage.io's epsilon of scale_range and fixed_zero_mean_unit_variance


@dataclass(frozen=True)
class Operation:
    """One rdf processing step: its id and kwargs as they appear in rdf.yaml."""

    id: str
    kwargs: dict = field(default_factory=dict)


def _per_channel(name: str, values: list[float]) -> dict:
    # One channel: a plain number (the form every consumer reads); more: a list along the channel axis.
    return {name: float(values[0])} if len(values) == 1 else {name: [float(v) for v in values]}


def preprocessing(run: Run) -> list[Operation]:
    if run.task == "segment":
        kwargs = {
            # Per image and channel: percentiles over (y, x), as in training. Leaving `axes` out would
            # make bioimageio.core reduce over the batch too (dataset statistics).
            "axes": ["y", "x"],
            "min_percentile": float(run.config["percentile_low"]),
            "max_percentile": float(run.config["percentile_high"]),
            "eps": EPS,
        }
        return [Operation("scale_range", kwargs)]
    stats = run.normalization
    kwargs = _per_channel("mean", stats["mean"]) | _per_channel("std", stats["std"])
    if run.channels > 1:
        kwargs["axis"] = "c"
    return [Operation("fixed_zero_mean_unit_variance", kwargs)]


def postprocessing(run: Run) -> list[Operation]:
    if run.task == "segment":
        return []
    stats = run.normalization
    gain = [s + EPS for s in stats["std"]]
    kwargs = _per_channel("gain", gain) | _per_channel("offset", stats["mean"])
    if run.channels > 1:
        kwargs["axis"] = "c"
    return [Operation("scale_linear", kwargs)]


def apply(operations: list[Operation], image: np.ndarray) -> np.ndarray:
    """Apply rdf operations to a (..., Y, X, C) float array, with the formulas bioimage.io defines."""
    x = image.astype(np.float64)
    for op in operations:
        k = op.kwargs
        if op.id == "scale_range":
            low = np.percentile(x, k["min_percentile"], axis=(-3, -2), keepdims=True)
            high = np.percentile(x, k["max_percentile"], axis=(-3, -2), keepdims=True)
            x = (x - low) / (high - low + k["eps"])
        elif op.id == "fixed_zero_mean_unit_variance":
            x = (x - np.asarray(k["mean"])) / (np.asarray(k["std"]) + EPS)
        elif op.id == "scale_linear":
            x = x * np.asarray(k["gain"]) + np.asarray(k["offset"])
        else:
            raise ValueError(f"operation {op.id!r} is not one this project declares")
    return x.astype(np.float32)
