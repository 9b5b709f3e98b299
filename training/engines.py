"""Prediction engines: a trained Keras model run by Keras itself, or exported to ONNX and run by
onnxruntime (the engine of deepImageJ and of most bioimage.io consumers).

Both give a function from a (B, Y, X, C) float32 batch to the model's output, which
`training.tiling.tiled_predict` takes in place of the model. The ONNX path uses the same portable model
and converter as the exported packages (`export.portable`, `export.weights`), so what it computes is
what a package computes.

The Keras engine runs `inference_model(model)`: the same function with each batch normalisation folded
into the convolution before it (which leaves a U-Net's largest tensors to be read and written once per
layer instead of three times), optionally computing in bfloat16 on CPUs that have it natively.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from export.folding import folded_model

ENGINES = ("keras", "onnx")
PRECISIONS = ("float32", "bfloat16")
# Mixed-precision policy of each prediction precision: weights stay float32, layers compute in it.
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def _full_precision_layers(model: keras.Model) -> set[str]:
    """Layers kept in float32 whatever the precision: those that give the model's outputs, and weightless
    layers that take a model input directly (a residual addition keeps the input's full precision)."""
    names = {tensor._keras_history.operation.name for tensor in model.outputs}
    inputs = {id(tensor) for tensor in model.inputs}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.weights:
            continue
        if any(id(tensor) in inputs for tensor in keras.tree.flatten(layer.input)):
            names.add(layer.name)
    return names


def inference_model(model: keras.Model, precision: str = "float32") -> keras.Model:
    """A copy of a trained functional `model` for prediction only, giving float32 outputs.

    Built from `export.portable.portable_model` (Keras's own layers), with every batch normalisation that
    follows a convolution folded into that convolution's kernel and bias (and left out;
    `export.folding`), and every layer computing in `precision` (see `PRECISIONS`) except those of
    `_full_precision_layers`. In float32 the outputs equal the model's up to rounding.
    """
    from export.portable import portable_model

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    source = portable_model(model)
    full_precision = _full_precision_layers(source)
    return folded_model(
        source, lambda layer: "float32" if layer.name in full_precision else _POLICIES[precision]
    )


def has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it oneDNN emulates it,
    slower than float32. Read from /proc/cpuinfo (False where there is none)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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


def predictor(
    model: keras.Model, engine: str, precision: str = "float32"
) -> keras.Model | Callable[[np.ndarray], np.ndarray]:
    """`inference_model(model, precision)` for `keras`, an onnxruntime predictor for `onnx` (float32)."""
    if engine == "keras":
        return inference_model(model, precision)
    if engine == "onnx":
        if precision != "float32":
            raise ValueError(f"the onnx engine computes in float32 only, not {precision}")
        return onnx_predictor(model)
    raise ValueError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")


# What one model call holds at its peak, as a fraction of all its layer outputs together: TensorFlow frees
# each output once its last consumer ran. Measured on the U-Net and N2V with tiles of 1024 and 2048 in
# float32 and bfloat16: 0.21 to 0.31 (docs/benchmarks.md, "Images larger than memory").
LIVE_FRACTION = 0.35


def activation_bytes_per_voxel(model: keras.Model, precision: str = "float32") -> float:
    """Bytes one call of `model` holds at its peak per input pixel (voxel), beyond its weights:
    `LIVE_FRACTION` of all its layer outputs, whose sizes come from running the model's shapes on a
    64-pixel-wide input. Sizes calls to a memory budget (`training.blockwise.choose_sizes`)."""
    item = 2 if precision == "bfloat16" else 4
    spatial = len(model.inputs[0].shape) - 2
    side = 64
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = probe.compute_output_spec(
        keras.KerasTensor((1,) + (side,) * spatial + model.inputs[0].shape[-1:])
    )
    voxels = sum(math.prod(spec.shape[1:]) for spec in keras.tree.flatten(outputs))
    return LIVE_FRACTION * voxels * item / side**spatial
