"""What an export reads from a run folder, checked before anything is built.

An export reads the checkpoint, `sample.npy` (one raw held-out image) and `declaration.json` (what the
run's task declares for its package; see `export.declaration`), and `config.json` only for its schema
version. The training code is never imported: a package can be made wherever this project and its models
(`zoo`) are installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import zoo  # registers the project's layers, which the checkpoints use
from base.errors import UserInputError
from base.run_folder import (
    CONFIG_FILE,
    DECLARATION_FILE,
    SAMPLE_FILE,
    check_schema,
    checkpoint_file,
    read_record,
)
from export.declaration import Declaration, read_declaration
from export.errors import ExportError
from zoo.pretrained import resolve_run


@dataclass
class Run:
    """A finished run, as an export sees it."""

    folder: Path
    declaration: Declaration
    checkpoint: Path
    model: keras.Model
    geometry: zoo.Geometry
    sample: np.ndarray  # one raw held-out image, (Y, X, C), or volume, (Z, Y, X, C)

    @property
    def channels(self) -> int:
        return int(self.model.input_shape[-1])


def _read_sample(path: Path, channels: int, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise ExportError(
            f"{path.parent}: incomplete run folder (no {path.name}: the held-out image for the package's "
            "test tensors, written at the end of training)"
        )
    try:
        sample = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: unreadable ({error})") from None
    if sample.ndim != ndim + 1 or sample.shape[-1] != channels or min(sample.shape[:-1]) < 1:
        expected = "Z, Y, X" if ndim == 3 else "Y, X"
        raise ExportError(f"{path}: expected a ({expected}, {channels}) image, found shape {sample.shape}")
    if not np.issubdtype(sample.dtype, np.number) or not np.isfinite(sample).all():
        raise ExportError(f"{path}: expected finite numbers, found dtype {sample.dtype} or NaN/inf")
    return sample


def _as_export_error(function, *args):
    try:
        return function(*args)
    except ExportError:
        raise
    except UserInputError as error:
        raise ExportError(str(error)) from None


def read_run(folder: Path, checkpoint: str | None = None) -> Run:
    """Read and check a run folder (or a shipped model, by name); `checkpoint` is `best`, `last` or None
    (the one the run's results come from, as its declaration says)."""
    folder = _as_export_error(resolve_run, folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such run folder")
    config = _as_export_error(read_record, folder / CONFIG_FILE, "the run's options")
    _as_export_error(check_schema, folder, config)
    declaration = _as_export_error(read_declaration, folder)
    path = _as_export_error(checkpoint_file, folder, checkpoint or declaration.checkpoint)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged file; all mean the same here
        raise ExportError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.input_shape) not in (4, 5):
        raise ExportError(
            f"{path}: expected a model with one (batch, y, x, channel) or (batch, z, y, x, channel) input "
            "and one output"
        )
    try:
        geometry = zoo.model_geometry(model)
    except (NotImplementedError, ValueError) as error:
        raise ExportError(f"{path}: cannot derive the model's halo ({error})") from None
    channels = int(model.input_shape[-1])
    declared = (len(declaration.input.channels), len(declaration.output.channels))
    if declared != (channels, int(model.output_shape[-1])):
        raise ExportError(
            f"{folder / DECLARATION_FILE}: declares {declared[0]} input and {declared[1]} output "
            f"channel(s), but {path.name} has {channels} and {model.output_shape[-1]}"
        )
    return Run(
        folder=folder,
        declaration=declaration,
        checkpoint=path,
        model=model,
        geometry=geometry,
        sample=_read_sample(folder / SAMPLE_FILE, channels, geometry.ndim),
    )
