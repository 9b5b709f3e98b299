"""Which Keras backend runs a command: chosen before Keras is imported, since Keras reads `KERAS_BACKEND`
once, at its import.

Every command (training, prediction, export) calls `select_backend` first. An explicit choice
(`--backend`, the `backend` key of a config) wins; `auto` keeps a standing choice (the environment's
`KERAS_BACKEND`, or the backend of a Keras already imported in this process) and otherwise takes the
installed backend that trains fastest on this machine's device (`AUTO_ORDER`, measured: see
docs/benchmarks.md). Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from base.errors import UserInputError

BACKENDS = ("tensorflow", "jax", "torch")
# Preference of `auto` among the installed backends, by device. On these CPUs TensorFlow trains the
# standard steps fastest, then JAX; on NVIDIA GPUs TensorFlow is left last because its wheels need one
# exact CUDA and it could not be run on the GPU machines at hand.
AUTO_ORDER = {"cpu": ("tensorflow", "jax", "torch"), "gpu": ("jax", "torch", "tensorflow")}
INSTALL_HINT = {
    "tensorflow": "pip install 'bioimage-keras-zoo[tensorflow]'",
    "jax": "pip install 'bioimage-keras-zoo[jax]'",
    "torch": "pip install 'bioimage-keras-zoo[torch]'",
}


def installed(backend: str) -> bool:
    """Whether the framework of `backend` can be imported (without importing it)."""
    return importlib.util.find_spec(backend) is not None


def has_nvidia_gpu() -> bool:
    """Whether the NVIDIA driver reports a GPU (read from /proc, without loading CUDA)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def loaded_backend() -> str | None:
    """The backend of the Keras already imported in this process, or None."""
    if "keras" not in sys.modules:
        return None
    import keras

    return keras.backend.backend()


def resolve_backend(requested: str = "auto") -> str:
    """The backend that `requested` ("auto" or one of `BACKENDS`) means here."""
    if requested != "auto":
        if requested not in BACKENDS:
            raise UserInputError(f"unknown backend {requested!r}; one of auto, {', '.join(BACKENDS)}")
        return requested
    standing = loaded_backend() or os.environ.get("KERAS_BACKEND")
    if standing:
        return standing
    order = AUTO_ORDER["gpu" if has_nvidia_gpu() else "cpu"]
    for backend in order:
        if installed(backend):
            return backend
    raise UserInputError(f"no Keras backend is installed; install one of {', '.join(BACKENDS)}")


def set_default_backend() -> None:
    """Where nothing chose a backend yet, make `auto`'s choice the one Keras imports with (Keras itself
    would take TensorFlow, installed or not). Called by the packages that import Keras, before it."""
    if "KERAS_BACKEND" not in os.environ and loaded_backend() is None:
        try:
            os.environ["KERAS_BACKEND"] = resolve_backend("auto")
        except UserInputError:
            pass  # none installed: importing Keras will say so


def select_backend(requested: str = "auto") -> str:
    """Resolve `requested` and make it the backend Keras will use; returns its name.

    Refused in one line where the framework is not installed, or where Keras was imported already
    with another backend (a process has one backend: start a new one)."""
    backend = resolve_backend(requested)
    if backend not in BACKENDS:
        raise UserInputError(f"KERAS_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    loaded = loaded_backend()
    if loaded is not None and loaded != backend:
        raise UserInputError(
            f"Keras is already running on {loaded} in this process and cannot switch to {backend}; "
            f"run in a new process (or set KERAS_BACKEND={backend} before importing Keras)"
        )
    if not installed(backend):
        raise UserInputError(f"backend {backend} is not installed ({INSTALL_HINT[backend]})")
    os.environ["KERAS_BACKEND"] = backend
    return backend
