"""Shared test helpers: a tiny model factory and the path of the real DSB2018 sample."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from base.backend import set_default_backend

set_default_backend()  # before Keras is imported: KERAS_BACKEND if set, else the installed default

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import zoo  # noqa: E402

DATA_DIR = Path(__file__).parents[1].parent / "shared" / "data"

# onnxruntime 1.13.1, deepImageJ's newest ONNX engine, through Node.js (`npm ci --prefix tests/ort113`).
ORT113 = Path(__file__).parent / "ort113"
needs_ort113 = pytest.mark.skipif(
    not (ORT113 / "node_modules" / "onnxruntime-node").is_dir() or shutil.which("node") is None,
    reason="onnxruntime-node 1.13.1 not installed (npm ci --prefix tests/ort113) or no node",
)


def run_on_ort113(onnx: Path, array: np.ndarray, input_id: str, scratch: Path) -> tuple[dict, np.ndarray]:
    """Run an ONNX file on onnxruntime 1.13.1: its report (`version`, `inputs`, `outputs`, `dims`) and the
    output for `array` (float32), fed as `input_id`."""
    array.astype("<f4").tofile(scratch / "in.f32")
    result = subprocess.run(
        ["node", str(ORT113 / "run.js"), str(onnx), str(scratch / "in.f32"), json.dumps(list(array.shape)),
         input_id, str(scratch / "out.f32")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    info = json.loads(result.stdout)
    return info, np.fromfile(scratch / "out.f32", "<f4").reshape(info["dims"])


# Tests of TensorFlow's own API (its strategies, fused kernel, profiler, gradient tape): skipped where the
# suite runs on another backend (`KERAS_BACKEND=jax` or `torch`, as CI does for the fast tests).
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's own API; this run is on another backend"
)

# The modules in which Keras computes something whose result depends on the backend (models, losses,
# masks, tiling, training, resuming, fine-tuning, TorchScript): CI runs them again on JAX and PyTorch
# (`-m backends`). The rest read files, check inputs, count or export through the checks of
# test_backends.py, which trains, predicts and exports every task on every backend itself.
BACKEND_MODULES = {
    "test_backends",
    "test_care",
    "test_determinism",
    "test_inference",
    "test_init_from",
    "test_losses",
    "test_masking",
    "test_masking3d",
    "test_n2v_models",
    "test_resume",
    "test_task_contract",
    "test_tiling",
    "test_tiling3d",
    "test_torchscript",
    "test_tta",
    "test_volume_cli",
    "test_weight_averaging",
    "test_zoo",
    "test_zoo3d",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in BACKEND_MODULES:
            item.add_marker(pytest.mark.backends)


# Small enough that a model builds and predicts in a fraction of a second on two CPU cores.
TINY_ARGUMENTS = {"depth": 2, "base_filters": 4}


def build_tiny_model(name: str = "unet", *, seed: int = 0, **overrides) -> keras.Model:
    """Build the registered model `name` small, with seeded weights and random batch-norm statistics.

    Only the tiny arguments the builder accepts are passed, so a newly registered model works unchanged.
    The batch-norm moving statistics are random rather than the trivial (mean 0, variance 1), so that
    a test also catches code that drops or mishandles them (saving, tiling).
    """
    builder = zoo.MODELS[name]
    accepted = inspect.signature(builder).parameters
    arguments = {key: value for key, value in TINY_ARGUMENTS.items() if key in accepted} | overrides
    keras.utils.set_random_seed(seed)
    model = zoo.build_model(name, **arguments)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma),
                    rng.normal(0.0, 0.5, beta),
                    rng.normal(0.0, 0.5, mean),
                    rng.uniform(0.5, 2.0, variance),
                ]
            )
    return model


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., keras.Model]:
    """The `build_tiny_model` factory."""
    return build_tiny_model


@pytest.fixture
def dsb_dir() -> Path:
    """The folder of the real DSB2018 nuclei sample (images/ and masks/), or skip where it is absent."""
    path = DATA_DIR / "nuclei_dsb2018"
    if not path.is_dir():
        pytest.skip("../shared/data not present (only in the project workspace)")
    return path


# Options of a segmentation run small enough to train, checkpoint and evaluate in a few seconds on two
# CPU cores. Later flags win in argparse, so a test appends what it changes (e.g. "--epochs", "4").
TINY_SEGMENT_FLAGS = tuple(
    "--epochs 2 --steps-per-epoch 2 --patch-size 32 --batch-size 2 --depth 1 --base-filters 4 "
    "--val-patches 4 --tile-size 64 --no-export".split()
)


@pytest.fixture(scope="session")
def nuclei_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped nuclei model exported as a bioimage.io package, written only if every check passed."""
    from export.cli import export_main

    out = tmp_path_factory.mktemp("nuclei") / "nuclei.zip"
    assert export_main(["nuclei", "--out", str(out)]) == 0, "the shipped model's package failed its checks"
    return out


@pytest.fixture(scope="session")
def tiny_segment_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic 64x64 nuclei images with masks and index.csv (2 train, 1 val, 1 test).

    Shared by the session: tests must not write into it (copy it with `shutil.copytree` to break files).
    """
    from training.synthetic_files import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("segment") / "data", n_images=4, shape=(64, 64))


@pytest.fixture(scope="session")
def tiny_segment_flags(tiny_segment_data: Path) -> tuple[str, ...]:
    """`--data` (the tiny dataset) and the tiny training options, for `training.segment.main`."""
    return ("--data", str(tiny_segment_data), *TINY_SEGMENT_FLAGS)
