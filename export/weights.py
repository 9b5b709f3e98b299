"""The package's weights: the `.keras` file, ONNX for deepImageJ and any ONNX runtime, and TorchScript for
ilastik (which runs PyTorch weights only). All three come from the portable float32 model
(`export.portable`), so each runs without this project installed. ONNX and TorchScript are converted in
child processes under the backend their converter needs, so a run of any backend exports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras

from export.check import ONNX_MAX_IR_VERSION
from export.errors import ExportError

# Opset 15 and IR version 8 (the most `export.check` accepts) run on onnxruntime 1.10 to 1.13, the
# engines that deepImageJ's JDLL ships.
ONNX_OPSET = 15
# Dimension names of the dynamic ONNX axes (b, (z,) y, x; the channel count is fixed).
ONNX_DYNAMIC_AXES = {4: ("batch", "y", "x"), 5: ("batch", "z", "y", "x")}


def onnx_converter() -> str:
    """The backend that converts to ONNX: TensorFlow (tf2onnx, the converter of every package so far)
    where it is installed, else PyTorch (`torch.onnx`)."""
    from importlib.util import find_spec

    for backend in ("tensorflow", "torch"):
        if find_spec(backend) is not None:
            return backend
    raise ExportError(
        "converting to ONNX needs TensorFlow or PyTorch; pip install 'bioimage-keras-zoo[torch]'"
    )


def write_onnx(
    model: keras.Model, path: Path, *, input_id: str, output_id: str, converter: str | None = None
) -> None:
    """Export `model` to ONNX with dynamic batch and spatial axes, its input and output named after the
    rdf tensor ids. The conversion runs in a child process under the `converter` backend (default:
    `onnx_converter()`), whatever backend this process runs."""
    import onnx

    converter = converter or onnx_converter()
    with tempfile.TemporaryDirectory() as scratch:
        keras_file, raw = Path(scratch) / "model.keras", Path(scratch) / "model.onnx"
        model.save(keras_file)
        _run_child(
            ["export.to_onnx", str(keras_file), str(raw), input_id],
            backend=converter,
            failure=f"{path.name}: ONNX conversion under {converter} failed",
        )
        proto = onnx.load(str(raw))
    graph = proto.graph
    renames = {graph.input[0].name: input_id, graph.output[0].name: output_id}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    rank = len(graph.input[0].type.tensor_type.shape.dim)
    for value in (graph.input[0], graph.output[0]):
        value.name = renames[value.name]
        for dim, name in zip(value.type.tensor_type.shape.dim, ONNX_DYNAMIC_AXES[rank], strict=False):
            dim.dim_param = name
    proto.ir_version = min(proto.ir_version, ONNX_MAX_IR_VERSION)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def torch_version() -> str | None:
    """The installed PyTorch version, or None when PyTorch is absent (TorchScript weights are skipped)."""
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return None


def write_torchscript(keras_file: Path, path: Path) -> None:
    """Trace the `.keras` model under Keras's PyTorch backend into a TorchScript file.

    The backend is chosen when Keras is imported, so the tracing runs in a child process.
    """
    _run_child(
        ["export.torchscript", str(keras_file), str(path)],
        backend="torch",
        failure=f"{keras_file}: TorchScript tracing failed",
    )


def _run_child(arguments: list[str], *, backend: str, failure: str) -> None:
    """`python -m ARGUMENTS...` under Keras backend `backend`, on the CPU (a package's weights are
    written from CPU computations, the same on every machine); an `ExportError` ending in the child's
    last line if it fails."""
    env = os.environ | {"KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", *arguments], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ExportError(f"{failure} ({last})")
