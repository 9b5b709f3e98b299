"""`python -m export.to_onnx MODEL.keras OUT.onnx INPUT_ID`, run with KERAS_BACKEND set to the converter's
backend: convert a portable `.keras` model to ONNX with dynamic batch and spatial axes.

Under TensorFlow, Keras converts through tf2onnx. Under PyTorch, `torch.onnx`'s TorchScript exporter traces
the network on a 128 x 128 input (a volume: `export.torchscript.traced_shape`; Keras's own torch export
would trace a 1 x 1 one, too small for a U-Net), with batch and spatial axes declared dynamic; the package
checks then run the ONNX file on other sizes. `export.weights.write_onnx` runs this in a child process, so
a run trained on any backend converts with whichever converter is installed.
"""

from __future__ import annotations

import contextlib
import os
import sys


def main(keras_file: str, out_file: str, input_id: str) -> None:
    backend = os.environ.get("KERAS_BACKEND")
    if backend not in ("tensorflow", "torch"):
        raise SystemExit("run with KERAS_BACKEND=tensorflow or KERAS_BACKEND=torch")
    import keras

    from export.weights import ONNX_OPSET

    model = keras.models.load_model(keras_file, compile=False)
    channels = int(model.input_shape[-1])
    if backend == "torch":
        _export_with_torch(model, out_file, input_id, channels)
        return
    spatial = (None,) * (len(model.input_shape) - 2)
    model.export(
        out_file,
        format="onnx",
        input_signature=[keras.InputSpec(shape=(None, *spatial, channels), dtype="float32", name=input_id)],
        opset_version=ONNX_OPSET,
        verbose=False,
    )


def _export_with_torch(model, out_file: str, input_id: str, channels: int) -> None:
    import torch

    from export.torchscript import inference_module, traced_shape
    from export.weights import ONNX_OPSET

    shape = traced_shape(model)
    names = ("batch", "z", "y", "x") if len(shape) == 5 else ("batch", "y", "x")
    dynamic = dict(enumerate(names))
    with torch.no_grad(), _plain_memory_format():
        torch.onnx.export(
            inference_module(model),
            (torch.zeros(*shape),),
            out_file,
            input_names=[input_id],
            output_names=["output"],
            dynamic_axes={input_id: dynamic, "output": dynamic},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


@contextlib.contextmanager
def _plain_memory_format():
    """Keras's torch convolutions ask for a channels-last memory layout (`contiguous(memory_format=...)`,
    a speed hint that changes no value), which the TorchScript ONNX exporter cannot express for 3D
    kernels; the trace skips it."""
    from keras.src.backend.torch import nn

    hint = getattr(nn, "_maybe_convert_to_channels_last", None)
    if hint is None:
        yield
        return
    nn._maybe_convert_to_channels_last = lambda tensor: tensor
    try:
        yield
    finally:
        nn._maybe_convert_to_channels_last = hint


if __name__ == "__main__":
    main(*sys.argv[1:])
