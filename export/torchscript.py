"""`python -m export.torchscript MODEL.keras OUT.pt`, run with KERAS_BACKEND=torch: trace a portable
`.keras` model (Keras's own layers only) into TorchScript.

The traced module takes and returns float32 tensors laid out as the rdf declares them, (b, y, x, c).
What is traced is a prediction copy (`prediction_copy`): batch norm folded into the convolutions
(`export.folding`, as the Keras prediction engine does) and every spatial layer channels-first
(`export.layout`). Traced as it is, the model keeps each batch norm as three passes over the whole
tensor and Keras's layout changes around every convolution (a permute and two copies in, a permute out),
which took more time than the convolutions themselves (docs/benchmarks.md). Folding changes rounding,
so the trace is checked against the model itself, not the copy.

Keras's PyTorch layers compute paddings and crops from the input shape in Python; the tracer records them
as operations on the traced shape, so the trace is checked here on sizes other than the one it was traced
with, against Keras itself, before it is written.

Keras's PyTorch backend moves every tensor it touches to its default device (`x.to("cpu")` when traced
on a CPU), and the tracer records each move with the device as a constant. Left in, they pin the whole
network to the CPU: on a GPU the input and the weights would be copied back to the CPU at every layer
and the computation would run there. `drop_device_moves` removes them from the graph, so the module runs
wherever its weights and input are (`torch.jit.load(..., map_location="cuda")`).
"""

from __future__ import annotations

import os
import sys

_FLOAT32, _STRIDED = 6, 0  # TorchScript's codes for torch.float32 and torch.strided
# Largest difference allowed between the trace and the model, relative to the output's largest magnitude.
# Folding rounds differently, by far less than this on the zoo's models (measured: docs/benchmarks.md),
# and the package's own test allows far more (`export.describe.REPRODUCIBILITY`).
TRACE_TOLERANCE = 1e-4
# Every size the package accepts is a multiple of the step; 2^6 covers every depth the zoo builds.
_STEP = 64


def _is_device_move(node) -> bool:
    """An `aten::to(self, dtype, layout, device, pin_memory, non_blocking, copy, memory_format)` to
    float32, strided, on a constant device: `x.to(device)` of a float32 tensor as the tracer records it
    (every tensor of the network is float32, as the package declares its input)."""
    args = list(node.inputs())
    if node.kind() != "aten::to" or len(args) != 8 or args[3].type().kind() != "DeviceObjType":
        return False
    if not all(args[i].node().kind() == "prim::Constant" for i in (1, 2, 3, 4, 7)):
        return False
    return (args[1].toIValue(), args[2].toIValue(), args[4].toIValue(), args[7].toIValue()) == (
        _FLOAT32,
        _STRIDED,
        None,
        None,
    )


def drop_device_moves(module) -> int:
    """Remove the device-only `aten::to` calls from the forward graph of the traced `module` and of each
    of its submodules, wiring their inputs to their users; returns how many were removed. Raises if a
    constant device is left in a graph."""
    import torch

    removed = 0
    for submodule in module.modules():
        script = getattr(submodule, "_c", None)  # the TorchScript object behind a traced (sub)module
        if script is None or not script._has_method("forward"):
            continue
        graph = script._get_method("forward").graph
        for node in [n for n in graph.nodes() if _is_device_move(n)]:
            node.output().replaceAllUsesWith(next(node.inputs()))
            node.destroy()
            removed += 1
        torch._C._jit_pass_dce(graph)
        for node in graph.nodes():
            if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
                raise RuntimeError(f"the trace still fixes a device: {node}")
    return removed


def prediction_copy(model):
    """What is traced from the portable `model`: batch norm folded, channels-first inside (module doc)."""
    from export.folding import folded_model
    from export.layout import channels_first_model

    return channels_first_model(folded_model(model))


def inference_module(network):
    """The Keras `network` (under the PyTorch backend) as a PyTorch module that calls it in inference
    mode: what TorchScript and `torch.onnx` trace."""
    import torch

    class Inference(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, x):
            return self.network(x, training=False)

    return Inference(network).eval()


def traced_shape(network) -> tuple[int, ...]:
    """The input the trace records: (1, 128, 128, c), or a volume of two z steps by four y and x steps."""
    channels = int(network.input_shape[-1])
    if len(network.input_shape) == 5:
        depth, side = _volume_steps(network)
        return (1, 2 * depth, 4 * side, 4 * side, channels)
    return (1, 2 * _STEP, 2 * _STEP, channels)


def _volume_steps(network) -> tuple[int, int]:
    """A 3D network's size steps along z and along y and x: its traces stay small (a volume of 64 x 128 x
    128 voxels would need gigabytes), so they follow the network's own pooling."""
    import zoo

    steps = zoo.model_geometry(network).steps
    return steps[0], steps[1]


def trace(network):
    """The Keras `network` (under the PyTorch backend) traced in inference mode on a (1, 128, 128, c)
    input (a volume's: see `traced_shape`), its device moves dropped."""
    import torch

    shape = traced_shape(network)
    with torch.no_grad():
        traced = torch.jit.trace(inference_module(network), torch.zeros(*shape), check_trace=False)
    drop_device_moves(traced)
    return traced


def trace_error(traced, model) -> float:
    """The largest difference between `traced` and the Keras `model` on two input shapes other than the
    traced one, relative to the largest magnitude of the model's output; inf where a shape differs."""
    import keras
    import numpy as np
    import torch

    channels = int(model.input_shape[-1])
    rng = np.random.default_rng(0)
    worst = 0.0
    shapes = [(1, 3 * _STEP, 2 * _STEP, channels), (2, _STEP, 4 * _STEP, channels)]
    if len(model.input_shape) == 5:  # a volume: other depths too
        depth, side = _volume_steps(model)
        shapes = [(1, 3 * depth, 5 * side, 4 * side, channels), (2, depth, 4 * side, 6 * side, channels)]
    for shape in shapes:
        x = rng.normal(size=shape).astype(np.float32)
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        with torch.no_grad():
            got = traced(torch.from_numpy(x)).numpy()
        if got.shape != expected.shape:
            return float("inf")
        scale = max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
        worst = max(worst, float(np.abs(got - expected).max()) / scale)
    return worst


def main(keras_file: str, out_file: str) -> None:
    if os.environ.get("KERAS_BACKEND") != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch")
    import keras
    import torch

    model = keras.models.load_model(keras_file, compile=False)
    traced = trace(prediction_copy(model))
    error = trace_error(traced, model)
    if not error <= TRACE_TOLERANCE:
        raise SystemExit(
            f"the trace does not reproduce the model on other input shapes (difference {error:.1e} of "
            "the output's magnitude)"
        )
    torch.jit.save(traced, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
