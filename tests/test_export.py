"""bioimage.io export: packages from real (tiny) training runs, checked the way consumers read them.

Two runs are trained once per session: a segmentation run that exports itself at the end of
`training.segment` (the default), and a denoising run exported with `python -m export`. The tests read
those packages: rdf fields and sizes, halo arithmetic, JDLL's requirements, ONNX parity (onnxruntime, and
onnxruntime 1.13.1 through Node.js where `tests/ort113` is installed), the round trip of a 1024 x 1024
image through bioimageio.core's tiling, and every refusal (nothing written).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from bioimageio.spec import load_model_description
from bioimageio.spec.utils import read_yaml
from conftest import needs_ort113, run_on_ort113

import zoo
from export import describe
from export.__main__ import main as export_main
from export.check import check_package
from export.declaration import Declaration, Operation
from export.errors import ExportError
from export.portable import portable_model
from export.weights import write_onnx, write_torchscript
from training import denoise, segment
from training.config import build_config
from training.images import percentile_normalize
from training.restoration import restore_image
from training.tasks.denoise import DenoiseConfig
from training.tiling import tiled_predict

TINY_DENOISE = (
    "--epochs 1 --steps-per-epoch 2 --batch-size 4 --patch-size 32 --base-filters 4 --depth 2 "
    "--val-patches 4 --mask-fraction 0.01 --no-export"
).split()


def _unzip(package: Path, folder: Path) -> Path:
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def segment_run(tmp_path_factory, tiny_segment_flags) -> Path:
    """A tiny segmentation run (depth 2, so step 4) that exports itself at the end, as by default."""
    out = tmp_path_factory.mktemp("export-segment")
    flags = [*tiny_segment_flags, "--depth", "2", "--export", "--out-dir", str(out), "--run-name", "seg"]
    assert segment.main(flags) == 0
    return out / "seg"


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory) -> Path:
    """A tiny N2V run on a noisy ramp (two images), exported with `python -m export`."""
    import tifffile

    out = tmp_path_factory.mktemp("export-denoise")
    rng = np.random.default_rng(3)
    data = out / "data"
    data.mkdir()
    for i in range(2):
        ramp = np.add.outer(np.linspace(80, 160, 72), np.linspace(0, 40, 80)).astype(np.float32)
        tifffile.imwrite(data / f"img{i}.tif", ramp + rng.normal(0, 10, ramp.shape).astype(np.float32))
    assert denoise.main(["--data", str(data), "--out-dir", str(out), "--run-name", "den", *TINY_DENOISE]) == 0
    run = out / "den"
    assert export_main([str(run), "--out", str(out / "den.zip"), "--author", "Ada Lovelace; Analytical"]) == 0
    return run


@pytest.fixture(scope="module")
def segment_package(segment_run) -> Path:
    return segment_run / "package.zip"


@pytest.fixture(scope="module")
def denoise_package(denoise_run) -> Path:
    return denoise_run.parent / "den.zip"


# === The description ===


def test_training_ends_with_a_package_that_bioimageio_reads_as_a_valid_model(segment_package):
    descr = load_model_description(segment_package)
    assert descr.type == "model" and str(descr.format_version).startswith("0.5")
    assert {"keras_v3", "onnx", "torchscript"} <= {
        name for name in ("keras_v3", "onnx", "torchscript") if getattr(descr.weights, name) is not None
    }
    assert descr.weights.onnx.parent == "keras_v3" and descr.weights.torchscript.parent == "keras_v3"
    assert descr.weights.onnx.opset_version == 15


def test_rdf_sizes_and_halo_follow_the_model_geometry(segment_run, segment_package, tmp_path):
    rdf = read_yaml(_unzip(segment_package, tmp_path) / "rdf.yaml")
    model = keras.models.load_model(segment_run / "best.keras", compile=False)
    geometry = zoo.model_geometry(model)
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "space", "space", "channel"]
    assert [a.get("id") for a in inp["axes"][1:3]] == ["y", "x"]
    for axis in inp["axes"][1:3]:
        size = axis["size"]
        assert size["step"] == geometry.step == 4  # 2^depth
        assert size["min"] % size["step"] == 0
    for axis in out["axes"][1:3]:
        assert axis["size"] == {"tensor_id": inp["id"], "axis_id": axis["id"]}
        assert axis["halo"] >= geometry.halo
        assert (2 * axis["halo"]) % geometry.step == 0
        assert inp["axes"][1]["size"]["min"] - 2 * axis["halo"] >= 1
    assert out["axes"][3]["channel_names"] == ["background", "interior", "boundary"]
    # The test tensors are a valid size and the output has the input's height and width.
    test_in = np.load(tmp_path / inp["test_tensor"]["source"])
    test_out = np.load(tmp_path / out["test_tensor"]["source"])
    assert test_in.shape[0] == 1 and test_in.shape[-1] == 1
    assert test_out.shape == (*test_in.shape[:3], 3)
    for length in test_in.shape[1:3]:
        assert (length - inp["axes"][1]["size"]["min"]) % geometry.step == 0
    np.testing.assert_allclose(test_out.sum(axis=-1), 1.0, atol=1e-5)  # softmax inside the network


# U-Nets of several depths and kernel sizes: halos 3 to 107 pixels, one already aligned, most not.
REAL_UNETS = [(1, 3), (2, 1), (2, 3), (3, 3), (3, 5), (4, 3)]


def test_halo_is_rounded_so_that_twice_it_is_a_multiple_of_the_step():
    class FakeRun:
        channels = 1
        declaration = Declaration(
            task="segment",
            checkpoint="best",
            name="fake",
            description="fake",
            tags=[],
            cite=[{"text": "fake", "doi": "10.0/fake"}],
            input={"id": "raw", "channels": ["channel0"], "description": "fake"},
            output={"id": "probabilities", "channels": ["a", "b", "c"], "description": "fake"},
            training=[],
            validation=[],
        )

    rounded = 0
    for depth, kernel_size in REAL_UNETS:
        model = zoo.build_model("unet", depth=depth, base_filters=2, kernel_size=kernel_size)
        geometry = zoo.model_geometry(model)
        step, halo = geometry.step, geometry.halo
        case = f"depth {depth}, kernel {kernel_size}: {geometry}"
        assert step == 2**depth and halo >= 1, case
        # The border is the smallest number of pixels, at least the halo, whose double is a multiple of
        # the step (found by counting up, not by the formula of the code).
        assert geometry.border == next(b for b in itertools.count(halo) if 2 * b % step == 0), case
        rounded += geometry.border > halo
        # The package declares that border as its halo, and as its smallest input the smallest multiple
        # of the step that leaves at least one pixel inside the halo on both sides.
        FakeRun.geometry = geometry
        sizes = describe.tensors(FakeRun)
        assert (sizes.steps, sizes.halos) == ((step, step), (geometry.border, geometry.border)), case
        smallest = next(m for m in itertools.count(step, step) if m - 2 * geometry.border >= 1)
        assert sizes.min_sizes == (smallest, smallest), case
    assert 2 <= rounded < len(REAL_UNETS)  # the control: the rounding changes some halos and not others


def test_rdf_meets_every_point_deepimagej_needs(segment_package, denoise_package, tmp_path):
    for package in (segment_package, denoise_package):
        rdf = read_yaml(_unzip(package, tmp_path / package.stem) / "rdf.yaml")
        assert isinstance(rdf["documentation"], str) and rdf["documentation"].endswith(".md")
        assert rdf["covers"] and all(isinstance(c, str) for c in rdf["covers"])
        assert rdf["format_version"] < "0.5.11"
        assert rdf["id"] and rdf["config"]["bioimageio"]["nickname"]
        assert rdf["config"]["deepimagej"]["allow_tiling"] is True
        for tensor in rdf["inputs"] + rdf["outputs"]:
            assert {a["id"] for a in tensor["axes"] if a["type"] == "space"} == {"x", "y"}
            for op in tensor.get("preprocessing", []) + tensor.get("postprocessing", []):
                assert op["id"] in {
                    "binarize",
                    "clip",
                    "ensure_dtype",
                    "fixed_zero_mean_unit_variance",
                    "scale_linear",
                    "scale_range",
                    "sigmoid",
                    "zero_mean_unit_variance",
                }


def test_segmentation_normalisation_is_declared_as_training_did_it(segment_run, segment_package, tmp_path):
    rdf = read_yaml(_unzip(segment_package, tmp_path) / "rdf.yaml")
    config = json.loads((segment_run / "config.json").read_text())
    (scale_range,) = [op for op in rdf["inputs"][0]["preprocessing"] if op["id"] == "scale_range"]
    assert scale_range["kwargs"]["axes"] == ["y", "x"]
    assert scale_range["kwargs"]["min_percentile"] == config["percentile_low"]
    assert scale_range["kwargs"]["max_percentile"] == config["percentile_high"]
    assert [op["id"] for op in rdf["outputs"][0].get("postprocessing", [])] in ([], ["ensure_dtype"])


def test_denoising_normalisation_is_the_training_mean_and_std(denoise_run, denoise_package, tmp_path):
    rdf = read_yaml(_unzip(denoise_package, tmp_path) / "rdf.yaml")
    stats = json.loads((denoise_run / "normalization.json").read_text())
    (zmuv,) = [op for op in rdf["inputs"][0]["preprocessing"] if op["id"] == "fixed_zero_mean_unit_variance"]
    assert zmuv["kwargs"] == {"mean": pytest.approx(stats["mean"][0]), "std": pytest.approx(stats["std"][0])}
    (linear,) = [op for op in rdf["outputs"][0]["postprocessing"] if op["id"] == "scale_linear"]
    assert linear["kwargs"]["gain"] == pytest.approx(stats["std"][0] + 1e-6)
    assert linear["kwargs"]["offset"] == pytest.approx(stats["mean"][0])
    assert rdf["authors"][0] == {"name": "Ada Lovelace", "affiliation": "Analytical"}


def test_segmentation_package_carries_its_imagej_macro_where_deepimagej_looks(
    segment_run, segment_package, denoise_package, tmp_path
):
    folder = _unzip(segment_package, tmp_path / "segment")
    rdf = read_yaml(folder / "rdf.yaml")
    assert rdf["config"]["deepimagej"]["prediction"]["postprocess"] == [
        {"spec": "ij.IJ::runMacroFile", "kwargs": "instances.ijm"}
    ]
    assert [a["source"] for a in rdf["attachments"]] == ["instances.ijm"]
    tuned = json.loads((segment_run / "postprocessing.json").read_text())
    macro = (folder / "instances.ijm").read_text()
    assert f"var interiorThreshold = {tuned['interior_threshold']!r};" in macro
    assert f"var foregroundThreshold = {tuned['foreground_threshold']!r};" in macro
    assert f"var minObjectSize = {tuned['min_object_size']};" in macro
    text = (folder / rdf["documentation"]).read_text()
    assert "## Cells, not probabilities" in text and "training.targets.classes_to_instances" in text
    # A denoising package's output is the result: no macro.
    denoised = read_yaml(_unzip(denoise_package, tmp_path / "denoise") / "rdf.yaml")
    assert "prediction" not in denoised["config"]["deepimagej"] and not denoised.get("attachments")


def test_documentation_carries_the_held_out_metrics_and_the_citations(segment_run, segment_package, tmp_path):
    folder = _unzip(segment_package, tmp_path)
    rdf = read_yaml(folder / "rdf.yaml")
    text = (folder / rdf["documentation"]).read_text()
    metrics = json.loads((segment_run / "metrics.json").read_text())
    assert "\n# Validation\n" in text
    assert f"| instance F1 at IoU 0.5 | {metrics['instances']['f1_at_0.5']:.3f} |" in text
    assert "10.1007/978-3-319-24574-4_28" in text
    assert [c["doi"] for c in rdf["cite"]] == ["10.1007/978-3-319-24574-4_28"]


def test_denoising_cites_n2v_and_the_cover_is_input_beside_output(denoise_package, tmp_path):
    import imageio.v3 as iio

    folder = _unzip(denoise_package, tmp_path)
    rdf = read_yaml(folder / "rdf.yaml")
    assert [c["doi"] for c in rdf["cite"]] == ["10.1109/CVPR.2019.00223"]
    cover = iio.imread(folder / rdf["covers"][0])
    assert cover.shape[1] == 2 * cover.shape[0] and cover.shape[2] == 3
    # Two panels: the left and right halves differ (noisy input, denoised output).
    half = cover.shape[1] // 2
    assert np.abs(cover[:, :half].astype(int) - cover[:, half:].astype(int)).mean() > 1


# === Weights ===


# A volume's network: pooling y and x only at the first level, as for a z spacing of twice the xy pixel.
VOLUME_POOLS = [(1, 2, 2), (2, 2, 2)]


def _odd_shapes(steps: tuple[int, ...]) -> list[tuple[int, ...]]:
    """(batch, *spatial) shapes of odd multiples of the steps, the trace's own shape among none of them;
    a volume's z axis takes 3, 1 and 5 steps."""
    multiples = [(1, 3, 3, 5), (2, 1, 7, 1), (1, 5, 9, 11)]
    return [
        (batch, *(m * s for m, s in zip(rest[-len(steps) :], steps, strict=True)))
        for batch, *rest in multiples
    ]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unet", {"depth": 2, "base_filters": 4, "input_channels": 2}),
        ("n2v2", {"depth": 2, "base_filters": 4, "input_channels": 2, "independent_channels": True}),
        ("unet", {"depth": 2, "base_filters": 4, "input_channels": 2, "ndim": 3, "pool_sizes": VOLUME_POOLS}),
        ("n2v2", {"depth": 2, "base_filters": 4, "input_channels": 2, "ndim": 3, "pool_sizes": VOLUME_POOLS}),
    ],
    ids=["unet-batchnorm", "n2v2-blurpool-per-channel", "unet-3d", "n2v2-3d-blurpool"],
)
@pytest.mark.parametrize("converter", ["tensorflow", "torch"])
def test_onnx_and_torchscript_equal_keras_on_odd_sizes(name, options, converter, tmp_path):
    import onnxruntime
    import torch

    model = zoo.build_model(name, **options)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial batch-norm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [w + rng.uniform(0.1, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()]
            )
    portable = portable_model(model)
    write_onnx(portable, tmp_path / "m.onnx", input_id="raw", output_id="out", converter=converter)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    portable.save(tmp_path / "m.keras")
    write_torchscript(tmp_path / "m.keras", tmp_path / "m.pt")
    traced = torch.jit.load(str(tmp_path / "m.pt"), map_location="cpu")
    for shape in _odd_shapes(zoo.model_geometry(model).steps):
        x = rng.normal(size=(*shape, 2)).astype(np.float32)
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(portable(x, training=False)), expected)
        np.testing.assert_allclose(session.run(None, {"raw": x})[0], expected, atol=1e-4)
        with torch.no_grad():
            np.testing.assert_allclose(traced(torch.from_numpy(x)).numpy(), expected, atol=1e-4)


@needs_ort113
def test_onnx_runs_on_onnxruntime_1_13_1_and_reproduces_the_test_output(
    segment_package, denoise_package, tmp_path
):
    for package in (segment_package, denoise_package):
        folder = _unzip(package, tmp_path / package.stem)
        rdf = read_yaml(folder / "rdf.yaml")
        (inp,), (out,) = rdf["inputs"], rdf["outputs"]
        model = keras.models.load_model(folder / "weights.keras", compile=False)
        from export.processing import apply

        def ops(entries):
            return [Operation(id=e["id"], kwargs=e["kwargs"]) for e in entries if e["id"] != "ensure_dtype"]

        raw = np.load(folder / inp["test_tensor"]["source"])
        normalized = apply(ops(inp.get("preprocessing", [])), raw)
        info, network = run_on_ort113(folder / "weights.onnx", normalized, inp["id"], tmp_path)
        assert info["version"] == "1.13.1"
        assert info["inputs"] == [inp["id"]] and info["outputs"] == [out["id"]]
        np.testing.assert_allclose(network, keras.ops.convert_to_numpy(model(normalized)), atol=1e-4)
        final = apply(ops(out.get("postprocessing", [])), network)
        expected = np.load(folder / out["test_tensor"]["source"])
        np.testing.assert_allclose(final, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


@needs_ort113
def test_onnx_converted_under_pytorch_runs_on_onnxruntime_1_13_1(tmp_path):
    model = portable_model(zoo.build_model("unet", depth=2, base_filters=4, input_channels=1))
    write_onnx(model, tmp_path / "m.onnx", input_id="raw", output_id="out", converter="torch")
    x = np.random.default_rng(0).normal(size=(1, 36, 44, 1)).astype("<f4")
    info, network = run_on_ort113(tmp_path / "m.onnx", x, "raw", tmp_path)
    assert info["version"] == "1.13.1" and info["inputs"] == ["raw"] and info["outputs"] == ["out"]
    np.testing.assert_allclose(network, keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-4)


def test_torchscript_weights_pass_bioimageio_test_model(denoise_package):
    from bioimageio.core import test_model

    summary = test_model(denoise_package, weight_format="torchscript")
    assert summary.status == "passed", summary.format()


def test_torchscript_weights_fix_no_device(segment_package, tmp_path):
    """Keras's PyTorch backend calls `x.to(device)` on every tensor, and a trace on the CPU records each
    call with the CPU as a constant. Left in, they ran the whole network on the CPU on an H100: 3.2 s for
    a 2048^2 N2V prediction, against 0.057 s without them (bench/package_torch.py, docs/benchmarks.md).
    No device may be written into the graph, so the module runs where its weights and input are."""
    import torch

    module = torch.jit.load(str(_unzip(segment_package, tmp_path) / "weights.pt"), map_location="cpu")
    graph = module.inlined_graph
    devices = [n for n in graph.nodes() if any(o.type().kind() == "DeviceObjType" for o in n.outputs())]
    assert devices == [], devices[0]
    assert any(n.kind() == "aten::_convolution" for n in graph.nodes())  # the graph was read whole


# === Round trip through bioimageio.core ===


def _core_tiled(package: Path, image: np.ndarray, blocksize: int) -> np.ndarray:
    from bioimageio.core import Tensor, create_prediction_pipeline, predict

    descr = load_model_description(package)
    pipeline = create_prediction_pipeline(descr, weight_format="onnx")
    sample = predict(
        model=pipeline,
        inputs={str(descr.inputs[0].id): Tensor(image[None], dims=("batch", "y", "x", "channel"))},
        blocksize_parameter=blocksize,
    )
    return np.asarray(sample.members[str(descr.outputs[0].id)].data)[0]


def _large_image() -> np.ndarray:
    from skimage import data, transform

    rng = np.random.default_rng(7)
    coins = transform.resize(data.coins().astype(np.float32), (1024, 1024), preserve_range=True)
    return (coins + rng.normal(0, 5, coins.shape)).astype(np.float32)[..., None]


def test_round_trip_of_a_1024_image_matches_the_projects_own_tiled_prediction(segment_run, segment_package):
    image = _large_image()
    config = json.loads((segment_run / "config.json").read_text())
    model = keras.models.load_model(segment_run / "best.keras", compile=False)
    geometry = zoo.model_geometry(model)
    ours = tiled_predict(
        model,
        percentile_normalize(image, config["percentile_low"], config["percentile_high"]),
        step=geometry.step,
        halo=geometry.halo,
        tile_size=256,
        border=geometry.border,
    )
    theirs = _core_tiled(segment_package, image, blocksize=8)
    assert theirs.shape == ours.shape == (1024, 1024, 3)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_round_trip_of_a_denoising_package_matches_training_restore_image(denoise_run, denoise_package):
    image = _large_image()
    config = build_config(
        DenoiseConfig, json.loads((denoise_run / "config.json").read_text()), source="run"
    ).model_copy(update={"tile_size": 256})
    stats = json.loads((denoise_run / "normalization.json").read_text())
    model = keras.models.load_model(denoise_run / "last.keras", compile=False)
    ours = restore_image(model, image, stats=stats, tile_size=config.tile_size, tta=config.tta)
    theirs = _core_tiled(denoise_package, image, blocksize=12)
    # Relative to the intensities (about 0-255): 1e-4 of the network's normalised output, scaled back.
    np.testing.assert_allclose(theirs, ours, atol=1e-4 * stats["std"][0] + 1e-4)


# === Checks and refusals ===


def test_check_command_passes_an_exported_package(segment_package, capsys):
    assert export_main(["check", str(segment_package)]) == 0
    out = capsys.readouterr().out
    assert "bioimageio.core test_model, onnx: status passed" in out
    assert "FAIL" not in out


def test_a_package_whose_test_output_the_model_does_not_reproduce_is_not_written(
    segment_run, tmp_path, monkeypatch, capsys
):
    real = describe.test_output
    # 4x the tolerance the package declares (0.5 % of the probabilities' maximum of 1)
    monkeypatch.setattr(describe, "test_output", lambda *args: real(*args) + 0.02)
    target = tmp_path / "broken.zip"
    assert export_main([str(segment_run), "--out", str(target)]) == 1
    captured = capsys.readouterr()
    assert "FAIL bioimageio.core test_model" in captured.out
    assert "not written" in captured.err
    assert list(tmp_path.iterdir()) == []  # no package, no temporary file


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_run_folders_are_refused_and_nothing_is_written(segment_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert export_main([str(tmp_path / "missing"), "--out", str(out / "p.zip")]) == 2
    assert "no such run folder" in _error(capsys)

    # Export reads the checkpoint, sample.npy, declaration.json and config.json (for its schema version).
    for removed, words in [("declaration.json", "no declaration.json"), ("sample.npy", "no sample.npy")]:
        broken = tmp_path / f"without-{removed}"
        shutil.copytree(segment_run, broken)
        (broken / removed).unlink()
        assert export_main([str(broken), "--out", str(out / "p.zip")]) == 2
        message = _error(capsys)
        assert str(broken) in message and words in message

    damaged = tmp_path / "damaged"
    shutil.copytree(segment_run, damaged)
    (damaged / "best.keras").write_bytes(b"not a keras file")
    assert export_main([str(damaged), "--out", str(out / "p.zip")]) == 2
    assert "best.keras: unreadable checkpoint" in _error(capsys)
    assert list(out.iterdir()) == []


def test_bad_output_paths_are_refused(segment_run, tmp_path, capsys):
    assert export_main([str(segment_run), "--out", str(tmp_path / "no" / "such" / "p.zip")]) == 2
    assert "does not exist" in _error(capsys)
    existing = tmp_path / "mine.zip"
    existing.write_bytes(b"the user's own file")
    assert export_main([str(segment_run), "--out", str(existing)]) == 2
    assert "exists already (use --overwrite" in _error(capsys)
    assert existing.read_bytes() == b"the user's own file"
    assert export_main([str(segment_run), "--out", str(tmp_path / "p.tar")]) == 2
    assert "ending in .zip" in _error(capsys)


def test_check_refuses_what_is_not_a_package(tmp_path, capsys):
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    assert export_main(["check", str(text)]) == 2
    assert "not a zip file" in _error(capsys)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "no rdf here")
    assert export_main(["check", str(empty)]) == 2
    assert "no rdf.yaml" in _error(capsys)
    assert export_main(["check", str(tmp_path / "absent.zip")]) == 2
    assert "no such file" in _error(capsys)


def test_check_refuses_members_that_escape_the_package(tmp_path):
    for name in ("../evil.txt", "/etc/evil.txt", "a/../../evil.txt"):
        package = tmp_path / "slip.zip"
        with zipfile.ZipFile(package, "w") as archive:
            archive.writestr("rdf.yaml", "type: model\n")
            archive.writestr(name, "x")
        with pytest.raises(ExportError, match="points outside the package"):
            check_package(package)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_check_runs_without_the_project_importable(segment_package, tmp_path):
    """The checker is what any consumer sees: run it where `zoo` cannot be imported."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('zoo', 'training'):\n"
        "        raise ImportError('project code imported: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from export.check import main\n"
        f"sys.exit(main([{str(segment_package)!r}]))\n"
    )
    result = subprocess.run(
        [os.sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ | {"CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "Keras file uses Keras's own layers only" in result.stdout
