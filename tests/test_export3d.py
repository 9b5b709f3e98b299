"""3D packages, from a tiny segmentation run on synthetic volumes that exports itself (the package is only
written when every export check passes): axes z, y, x and channel with a `min` and `step` per axis, the
ONNX weights on onnxruntime 1.13.1 (deepImageJ's newest engine), and bioimageio.core's tiled prediction
of a volume larger than one tile against the project's own tiled prediction."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from bioimageio.spec import load_model_description
from bioimageio.spec.utils import read_yaml
from conftest import needs_ort113, run_on_ort113
from scipy import ndimage

import training.segment
import zoo
from export.declaration import Operation
from export.processing import apply
from training.images import percentile_normalize
from training.synthetic_files import write_synthetic_volumes
from training.tiling import tiled_predict

pytestmark = pytest.mark.slow

FLAGS = (
    "--epochs 1 --steps-per-epoch 2 --patch-size 32 --patch-depth 8 --batch-size 2 --depth 2 "
    "--base-filters 4 --val-patches 2 --tile-size 64 --export".split()
)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3D run (z spacing 2 in the files: pooling (1, 2, 2) then (2, 2, 2)), exported and checked."""
    out = tmp_path_factory.mktemp("export3d")
    data = write_synthetic_volumes(out / "data", n_volumes=4, seed=5, shape=(16, 48, 48))
    argv = [*FLAGS, "--data", str(data), "--out-dir", str(out), "--run-name", "vol"]
    assert training.segment.main(argv) == 0
    assert (out / "vol" / "package.zip").is_file()
    return out / "vol"


@pytest.fixture(scope="module")
def rdf3d(run3d: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("unzipped3d")
    with zipfile.ZipFile(run3d / "package.zip") as archive:
        archive.extractall(folder)
    return read_yaml(folder / "rdf.yaml"), folder


def test_the_rdf_declares_z_y_x_with_the_network_step_min_and_halo_per_axis(run3d, rdf3d):
    rdf, _ = rdf3d
    geometry = zoo.model_geometry(keras.models.load_model(run3d / "best.keras", compile=False))
    assert geometry.steps == (2, 4, 4)
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["id"] if "id" in a else a["type"] for a in inp["axes"]] == ["batch", "z", "y", "x", "channel"]
    for axis, step, border in zip(inp["axes"][1:4], geometry.steps, geometry.borders, strict=True):
        assert axis["size"]["step"] == step
        # The smallest multiple of the step that leaves one voxel inside the halo on both sides.
        assert axis["size"]["min"] == next(m for m in range(step, 10_000, step) if m - 2 * border >= 1)
    halos = [a["halo"] for a in out["axes"] if a.get("type") == "space"]
    assert halos == list(geometry.borders)
    assert np.load(rdf3d[1] / inp["test_tensor"]["source"]).ndim == 5
    config = json.loads((run3d / "config.json").read_text())
    assert (config["ndim"], config["anisotropy"]) == (3, 2.0)


@needs_ort113
def test_3d_onnx_runs_on_onnxruntime_1_13_1_and_reproduces_the_test_output(rdf3d, tmp_path):
    rdf, folder = rdf3d
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    raw = np.load(folder / inp["test_tensor"]["source"])
    (scale,) = [
        Operation(id=p["id"], kwargs=p["kwargs"]) for p in inp["preprocessing"] if p["id"] == "scale_range"
    ]
    assert scale.kwargs["axes"] == ["z", "y", "x"]  # percentiles of the whole volume, as in training
    normalized = apply([scale], raw).astype(np.float32)
    info, network = run_on_ort113(folder / "weights.onnx", normalized, inp["id"], tmp_path)
    assert info["version"] == "1.13.1" and info["inputs"] == [inp["id"]] and info["outputs"] == [out["id"]]
    expected = np.load(folder / out["test_tensor"]["source"])
    assert network.shape == expected.shape and network.ndim == 5
    np.testing.assert_allclose(network, expected, atol=1e-4)


def test_bioimageio_core_tiles_a_volume_larger_than_one_tile_as_the_project_does(run3d):
    from bioimageio.core import Tensor, create_prediction_pipeline, predict

    config = json.loads((run3d / "config.json").read_text())
    model = keras.models.load_model(run3d / "best.keras", compile=False)
    geometry = zoo.model_geometry(model)
    descr = load_model_description(run3d / "package.zip")
    # Blocks of min + 1 step along each axis; the volume is 3 steps longer, so it takes several per axis.
    spaces = [a for a in descr.inputs[0].axes if a.type == "space"]
    block = [a.size.min + a.size.step for a in spaces]
    shape = tuple(b + 3 * a.size.step for b, a in zip(block, spaces, strict=True))
    rng = np.random.default_rng(11)
    volume = ndimage.gaussian_filter(rng.normal(100, 60, shape), 2).astype(np.float32)[..., None]
    pipeline = create_prediction_pipeline(descr, weight_format="onnx")
    sample = predict(
        model=pipeline,
        inputs={str(descr.inputs[0].id): Tensor(volume[None], dims=("batch", "z", "y", "x", "channel"))},
        blocksize_parameter=1,
    )
    theirs = np.asarray(sample.members[str(descr.outputs[0].id)].data)[0]
    ours = tiled_predict(
        model,
        percentile_normalize(volume, config["percentile_low"], config["percentile_high"]),
        step=geometry.steps,
        halo=geometry.halos,
        tile_size=(16, 32, 32),
        border=geometry.borders,
    )
    assert theirs.shape == ours.shape == (*shape, 3)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
