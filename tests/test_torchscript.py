"""`export.torchscript`: the TorchScript weights are traced from a prediction copy (batch norm folded,
channels-first inside) and still compute what the Keras model computes."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from export.portable import portable_model
from export.torchscript import TRACE_TOLERANCE
from tests.conftest import build_tiny_model

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
# What Keras's PyTorch batch normalisation becomes in a trace: its own arithmetic
# (`keras.src.backend.torch.nn.batch_normalization`), or PyTorch's operator should Keras call it.
BATCH_NORM_KINDS = {"aten::rsqrt", "aten::rsqrt_", "aten::batch_norm"}
# The export's trace, and the model traced as Keras computes it, in one child process (the backend is
# chosen when Keras is imported).
_TRACE_BOTH = """
import sys, keras, torch
from export.torchscript import main, trace
keras_file, folder = sys.argv[1:]
main(keras_file, folder + "/export.pt")
torch.jit.save(trace(keras.models.load_model(keras_file, compile=False)), folder + "/as_keras.pt")
"""


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> tuple[object, dict, dict]:
    """A tiny N2V with batch norm, a residual addition of the input and a concatenation, and the
    operation counts of the export's trace and of the trace of the model as Keras computes it."""
    folder = tmp_path_factory.mktemp("torchscript")
    model = portable_model(build_tiny_model("n2v", residual=True))
    model.save(folder / "m.keras")
    env = os.environ | {"KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, "-c", _TRACE_BOTH, str(folder / "m.keras"), str(folder)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    exported = torch.jit.load(str(folder / "export.pt"), map_location="cpu")
    counts = [
        collections.Counter(node.kind() for node in torch.jit.load(str(folder / name)).inlined_graph.nodes())
        for name in ("export.pt", "as_keras.pt")
    ]
    return model, exported, counts


def _batch_norm_operations(counts: collections.Counter) -> int:
    return sum(counts[kind] for kind in BATCH_NORM_KINDS)


def test_exported_trace_has_no_batch_norm_operations(traces):
    _, _, (exported, as_keras) = traces
    assert _batch_norm_operations(as_keras) > 0  # the count sees batch norm where it is
    assert _batch_norm_operations(exported) == 0
    assert exported["aten::_convolution"] == as_keras["aten::_convolution"] > 0


def test_exported_trace_copies_no_tensor_between_layouts(traces):
    """Keras's channels-last convolutions copy their input twice under PyTorch (`export.layout`)."""
    _, _, (exported, as_keras) = traces
    assert as_keras["aten::contiguous"] > 0
    assert exported["aten::contiguous"] == 0


def test_exported_trace_equals_the_unfolded_model_within_the_tolerance(traces):
    model, exported, _ = traces
    x = np.random.default_rng(3).normal(size=(2, 96, 160, 1)).astype(np.float32)  # not the traced shape
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    with torch.no_grad():
        got = exported(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TRACE_TOLERANCE * float(np.abs(expected).max()))
