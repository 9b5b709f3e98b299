"""Prediction engines: a trained Keras model run by Keras itself, or exported to ONNX and run by
onnxruntime (the engine of deepImageJ and of most bioimage.io consumers).

Both give a function from a (B, Y, X, C) float32 batch to the model's output, which
`training.tiling.tiled_predict` takes in place of the model. The ONNX path uses the same portable model
and converter as the exported packages (`export.portable`, `export.weights`), so what it computes is
what a package computes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

ENGINES = ("keras", "onnx")


def onnx_session_options(threads: int | None = None):
    """Session options for batch-of-tiles inference on a CPU: every graph optimisation, one thread per
    core inside an operator and sequential execution between them (a U-Net's operators depend on each
    other, so parallel execution only adds scheduling)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    return options


def onnx_predictor(model: keras.Model, *, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Convert `model` to ONNX (as an export does) and return an onnxruntime batch predictor."""
    import onnxruntime

    from export.portable import portable_model
    from export.weights import write_onnx

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        write_onnx(portable_model(model), path, input_id="input", output_id="output")
        session = onnxruntime.InferenceSession(
            str(path), onnx_session_options(threads), providers=["CPUExecutionProvider"]
        )

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"input": np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return predict


def predictor(model: keras.Model, engine: str) -> keras.Model | Callable[[np.ndarray], np.ndarray]:
    """The model itself for `keras`, an onnxruntime predictor for `onnx`."""
    if engine == "keras":
        return model
    if engine == "onnx":
        return onnx_predictor(model)
    raise ValueError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")
