"""What an export reads from a run folder, checked before anything is built.

A run folder of `python -m training.segment` or `python -m training.denoise` holds everything an export
needs: `config.json` (the resolved options), the checkpoints, `metrics.json` (held-out scores),
`normalization.json` (denoising: training mean and std), `postprocessing.json` (segmentation: thresholds
chosen on the validation images) and `sample.npy` (one raw held-out image). The training code itself is
never imported: a package can be made wherever this project and its models (`zoo`) are installed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import zoo  # registers the project's layers, which the checkpoints use
from export.errors import ExportError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
NORMALIZATION_FILE = "normalization.json"
POSTPROCESSING_FILE = "postprocessing.json"
SAMPLE_FILE = "sample.npy"
CHECKPOINTS = {"best": "best.keras", "last": "last.keras"}
TASKS = ("segment", "denoise")
# The options an export reads; a config.json without them is not from a run of this project.
REQUIRED_OPTIONS = {
    "segment": ("model", "depth", "percentile_low", "percentile_high"),
    "denoise": ("model", "depth"),
}


@dataclass
class Run:
    """A finished run, as an export sees it."""

    folder: Path
    task: str
    config: dict
    checkpoint: Path
    model: keras.Model
    geometry: zoo.Geometry
    sample: np.ndarray  # one raw held-out image, (Y, X, C)
    metrics: dict
    normalization: dict | None  # denoising: {"mean": [...], "std": [...]} per channel
    postprocessing: dict | None  # segmentation: the tuned thresholds, if the run tuned them

    @property
    def channels(self) -> int:
        return int(self.model.input_shape[-1])


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ExportError(f"{path.parent}: incomplete run folder (no {path.name}: {what})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: unreadable ({error})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _check_stats(stats: dict, path: Path, channels: int) -> dict:
    for key in ("mean", "std"):
        values = stats.get(key)
        if (
            not isinstance(values, list)
            or len(values) != channels
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        ):
            raise ExportError(
                f"{path}: '{key}' must be a list of {channels} finite numbers, found {values!r}"
            )
    if min(stats["std"]) <= 0:
        raise ExportError(f"{path}: 'std' must be positive, found {stats['std']}")
    return stats


def _read_sample(path: Path, channels: int) -> np.ndarray:
    if not path.is_file():
        raise ExportError(
            f"{path.parent}: incomplete run folder (no {path.name}: the held-out image for the package's "
            "test tensors, written at the end of training)"
        )
    try:
        sample = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: unreadable ({error})") from None
    if sample.ndim != 3 or sample.shape[-1] != channels or min(sample.shape[:2]) < 1:
        raise ExportError(f"{path}: expected a (Y, X, {channels}) image, found shape {sample.shape}")
    if not np.issubdtype(sample.dtype, np.number) or not np.isfinite(sample).all():
        raise ExportError(f"{path}: expected finite numbers, found dtype {sample.dtype} or NaN/inf")
    return sample


def read_run(folder: Path, checkpoint: str | None = None) -> Run:
    """Read and check a run folder; `checkpoint` is `best`, `last` or None (the task's default)."""
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such run folder")
    config = _read_json(folder / CONFIG_FILE, "the run's options")
    task = config.get("task")
    if task not in TASKS:
        raise ExportError(f"{folder / CONFIG_FILE}: 'task' must be one of {', '.join(TASKS)}, found {task!r}")
    missing = [key for key in REQUIRED_OPTIONS[task] if key not in config]
    if missing:
        raise ExportError(f"{folder / CONFIG_FILE}: missing option(s) {', '.join(missing)}")
    metrics = _read_json(folder / METRICS_FILE, "the held-out evaluation, written when training ends")

    # The checkpoint that training evaluated: best for segmentation, last for denoising (see training).
    name = checkpoint or metrics.get("checkpoint", CHECKPOINTS["best" if task == "segment" else "last"])
    name = CHECKPOINTS.get(name, name)
    if name not in CHECKPOINTS.values():
        raise ExportError(f"{folder}: unknown checkpoint {checkpoint!r} (best or last)")
    path = folder / name
    if not path.is_file():
        raise ExportError(f"{folder}: incomplete run folder (no {name})")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged file; all mean the same here
        raise ExportError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.input_shape) != 4:
        raise ExportError(f"{path}: expected a model with one (batch, y, x, channel) input and one output")
    try:
        geometry = zoo.model_geometry(model)
    except (NotImplementedError, ValueError) as error:
        raise ExportError(f"{path}: cannot derive the model's halo ({error})") from None
    channels = int(model.input_shape[-1])

    normalization = postprocessing = None
    if task == "denoise":
        stats_path = folder / NORMALIZATION_FILE
        normalization = _check_stats(
            _read_json(stats_path, "the training mean and std"), stats_path, channels
        )
    elif (folder / POSTPROCESSING_FILE).is_file():
        postprocessing = _read_json(folder / POSTPROCESSING_FILE, "the tuned thresholds")
    return Run(
        folder=folder,
        task=task,
        config=config,
        checkpoint=path,
        model=model,
        geometry=geometry,
        sample=_read_sample(folder / SAMPLE_FILE, channels),
        metrics=metrics,
        normalization=normalization,
        postprocessing=postprocessing,
    )
