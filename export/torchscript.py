"""`python -m export.torchscript MODEL.keras OUT.pt`, run with KERAS_BACKEND=torch: trace a portable
`.keras` model (Keras's own layers only) into TorchScript.

The traced module takes and returns float32 tensors laid out as the rdf declares them, (b, y, x, c).
Keras's PyTorch layers compute paddings and crops from the input shape in Python; the tracer records them
as operations on the traced shape, so the trace is checked here on sizes other than the one it was traced
with, against Keras itself, before it is written.
"""

from __future__ import annotations

import os
import sys


def main(keras_file: str, out_file: str) -> None:
    if os.environ.get("KERAS_BACKEND") != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch")
    import keras
    import numpy as np
    import torch

    model = keras.models.load_model(keras_file, compile=False)
    channels = int(model.input_shape[-1])
    # Every size the package accepts is a multiple of the step; 2^6 covers every depth the zoo builds.
    step = 64

    class Traced(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, x):
            return self.network(x, training=False)

    module = Traced(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.zeros(1, 2 * step, 2 * step, channels), check_trace=False)
        rng = np.random.default_rng(0)
        for shape in [(1, 3 * step, 2 * step, channels), (2, step, 4 * step, channels)]:
            x = rng.normal(size=shape).astype(np.float32)
            expected = keras.ops.convert_to_numpy(model(x, training=False))
            got = traced(torch.from_numpy(x)).numpy()
            if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-5, rtol=1e-5):
                raise SystemExit(f"the trace does not generalise to input shape {shape}")
    torch.jit.save(traced, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
