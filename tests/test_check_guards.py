"""The guards of `python -m export check`, one by one on hand-made inputs (no export, no model): the line a
user reads per check, the JDLL checks of a raw rdf, the ONNX header checks, the `.keras` classes check,
the wrapper that turns a crashing check into a failed one, and the package extraction."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from export.check import (
    Check,
    _guarded,
    _keras_check,
    jdll_checks,
    keras_foreign_classes,
    onnx_checks,
    safe_extract,
)
from export.errors import ExportError

# ---------------------------------------------------------------------------------------------- Check.line


@pytest.mark.parametrize(
    ("check", "line"),
    [
        (Check("rdf.yaml readable", True), "ok   rdf.yaml readable"),
        (Check("rdf.yaml readable", True, "format 0.5.4"), "ok   rdf.yaml readable: format 0.5.4"),
        (Check("per-channel", True, warning=True), "warn per-channel"),
        (Check("per-channel", True, "axis argument", warning=True), "warn per-channel: axis argument"),
        (Check("ONNX opset", False), "FAIL ONNX opset"),
        (Check("ONNX opset", False, "opset 18"), "FAIL ONNX opset: opset 18"),
        (Check("ONNX opset", False, "opset 18", warning=True), "FAIL ONNX opset: opset 18"),
    ],
)
def test_the_line_of_a_check_shows_its_mark_name_and_detail(check, line):
    assert check.line() == line


# ------------------------------------------------------------------------------------------- jdll_checks

MACRO = "ij.IJ::runMacroFile"  # export.imagej.RUN_MACRO_SPEC, written out


def _axes(channel_names):
    return [
        {"type": "batch"},
        {"type": "space", "id": "y", "size": {"min": 16, "step": 16}},
        {"type": "space", "id": "x", "size": {"min": 16, "step": 16}},
        {"type": "channel", "id": "channel", "channel_names": channel_names},
    ]


def good_rdf() -> dict:
    """An rdf as the exporter writes it for a segmentation package with an ImageJ macro."""
    return {
        "format_version": "0.5.4",
        "type": "model",
        "id": "bioimage-keras-zoo/brave-otter",
        "name": "UNet nuclei",
        "documentation": "documentation.md",
        "covers": ["cover.png"],
        "attachments": [{"source": "instances.ijm"}],
        "config": {
            "bioimageio": {"nickname": "brave-otter"},
            "deepimagej": {
                "allow_tiling": True,
                "pyramidal_model": False,
                "prediction": {"postprocess": [{"spec": MACRO, "kwargs": "instances.ijm"}]},
            },
        },
        "inputs": [
            {
                "id": "raw",
                "axes": _axes(["c0"]),
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    {"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -1.0}},
                ],
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "axes": _axes(["background", "interior", "boundary"]),
                "postprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
            }
        ],
        "weights": {
            "keras_v3": {"source": "weights.keras"},
            "onnx": {"source": "weights.onnx"},
            "torchscript": {"source": "weights.pt"},
        },
    }


GOOD_CHECKS = [
    Check("JDLL: format_version 0.5.x as a string", True),
    Check("JDLL: documentation and covers are plain strings", True),
    Check(
        "JDLL: id and config.bioimageio.nickname",
        True,
        "id 'bioimage-keras-zoo/brave-otter', nickname 'brave-otter'",
    ),
    Check("JDLL: config.deepimagej.allow_tiling is true", True),
    Check("deepImageJ: its post-processing macros are attached files", True, "instances.ijm"),
    Check("JDLL: space axes are x, y (and z)", True),
    Check("JDLL: only processing operations it implements", True),
    Check("JDLL: weights it runs (onnx or torchscript)", True, "keras_v3, onnx, torchscript"),
]


def test_jdll_checks_of_an_rdf_as_the_exporter_writes_it_all_pass():
    assert jdll_checks(good_rdf()) == GOOD_CHECKS


def test_jdll_checks_of_an_empty_rdf():
    assert jdll_checks({}) == [
        Check("JDLL: format_version 0.5.x as a string", False),
        Check("JDLL: documentation and covers are plain strings", False, "documentation None"),
        Check("JDLL: id and config.bioimageio.nickname", False, "id None, nickname None"),
        Check("JDLL: config.deepimagej.allow_tiling is true", False),
        Check("JDLL: space axes are x, y (and z)", True),
        Check("JDLL: only processing operations it implements", True),
        Check("JDLL: weights it runs (onnx or torchscript)", False),
    ]


def _set(path: str, value):
    """An edit of the good rdf: set the value at a dotted path (list items by index); `DELETE` removes it."""

    def edit(rdf):
        *parents, last = path.split(".")
        node = rdf
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = value

    return edit


def _both(first, second):
    """Two edits of the good rdf, one after the other."""

    def edit(rdf):
        first(rdf)
        second(rdf)

    return edit


DELETE = object()
DOC = "JDLL: documentation and covers are plain strings"
IDS = "JDLL: id and config.bioimageio.nickname"
MACROS = "deepImageJ: its post-processing macros are attached files"
AXES = "JDLL: space axes are x, y (and z)"
OPS = "JDLL: only processing operations it implements"
WEIGHTS = "JDLL: weights it runs (onnx or torchscript)"
POSTPROCESS = "config.deepimagej.prediction.postprocess"


@pytest.mark.parametrize(
    ("edit", "changed"),
    [
        pytest.param(
            _set("format_version", 0.5),
            [Check("JDLL: format_version 0.5.x as a string", False)],
            id="version-a-number",
        ),
        pytest.param(
            _set("format_version", "0.4.10"),
            [Check("JDLL: format_version 0.5.x as a string", False)],
            id="version-0.4",
        ),
        pytest.param(
            _set("format_version", DELETE),
            [Check("JDLL: format_version 0.5.x as a string", False)],
            id="no-version",
        ),
        pytest.param(
            _set("documentation", {"source": "documentation.md"}),
            [Check(DOC, False, "documentation {'source': 'documentation.md'}")],
            id="documentation-a-file-description",
        ),
        pytest.param(
            _set("covers", [{"source": "cover.png"}]),
            [Check(DOC, False, "documentation 'documentation.md'")],
            id="cover-a-file-description",
        ),
        pytest.param(
            _set("covers", "cover.png"),
            [Check(DOC, False, "documentation 'documentation.md'")],
            id="covers-a-string",
        ),
        pytest.param(_set("covers", DELETE), [], id="no-covers"),
        pytest.param(_set("id", DELETE), [Check(IDS, False, "id None, nickname 'brave-otter'")], id="no-id"),
        pytest.param(
            _set("config.bioimageio.nickname", ""),
            [Check(IDS, False, "id 'bioimage-keras-zoo/brave-otter', nickname ''")],
            id="empty-nickname",
        ),
        pytest.param(
            _set("config.bioimageio", DELETE),
            [Check(IDS, False, "id 'bioimage-keras-zoo/brave-otter', nickname None")],
            id="no-bioimageio-config",
        ),
        pytest.param(
            _set("name", DELETE),
            [Check(IDS, False, "id 'bioimage-keras-zoo/brave-otter', nickname 'brave-otter'")],
            id="no-name",
        ),
        pytest.param(
            _set("config.deepimagej.allow_tiling", DELETE),
            [Check("JDLL: config.deepimagej.allow_tiling is true", False)],
            id="tiling-unset",
        ),
        pytest.param(
            _set("config.deepimagej.allow_tiling", 1),
            [Check("JDLL: config.deepimagej.allow_tiling is true", False)],
            id="tiling-1",
        ),
        pytest.param(
            _set("config.deepimagej.allow_tiling", False),
            [Check("JDLL: config.deepimagej.allow_tiling is true", False)],
            id="tiling-false",
        ),
        pytest.param(
            _set("attachments", DELETE), [Check(MACROS, False, "instances.ijm")], id="macro-not-attached"
        ),
        pytest.param(
            _set("attachments", [{"source": "other.ijm"}]),
            [Check(MACROS, False, "instances.ijm")],
            id="another-file-attached",
        ),
        pytest.param(
            _both(
                _set(POSTPROCESS, [{"spec": MACRO, "kwargs": name} for name in ("a.ijm", "b.ijm", "c.ijm")]),
                _set("attachments", [{"source": "a.ijm"}]),
            ),
            [Check(MACROS, False, "b.ijm, c.ijm")],
            id="two-of-three-macros-not-attached",
        ),
        pytest.param(
            _both(
                _set(POSTPROCESS, [{"spec": MACRO, "kwargs": "a.ijm"}, {"spec": MACRO, "kwargs": "b.ijm"}]),
                _set("attachments", [{"source": "b.ijm"}, {"source": "a.ijm"}]),
            ),
            [Check(MACROS, True, "a.ijm, b.ijm")],
            id="two-macros-attached",
        ),
        pytest.param(_set("inputs.0.axes.1.id", "w"), [Check(AXES, False, "raw.w")], id="input-space-axis-w"),
        pytest.param(_set("inputs.0.axes.1.id", "z"), [], id="input-space-axis-z"),
        pytest.param(
            _set("outputs.0.axes.2.id", "t"),
            [Check(AXES, False, "probabilities.t")],
            id="output-space-axis-t",
        ),
        pytest.param(
            _set("inputs.0.axes.3.channel_names", []),
            [Check(AXES, False, "raw.channel (no channel_names)")],
            id="channel-axis-without-names",
        ),
        pytest.param(
            _both(_set("inputs.0.axes.1.id", "w"), _set("outputs.0.axes.3.channel_names", DELETE)),
            [Check(AXES, False, "raw.w, probabilities.channel (no channel_names)")],
            id="two-bad-axes",
        ),
        pytest.param(_set("inputs.0.axes", DELETE), [], id="input-without-axes"),
        pytest.param(
            _set("inputs.0.preprocessing.0.id", "percentile_normalise"),
            [Check(OPS, False, "percentile_normalise")],
            id="unknown-preprocessing",
        ),
        pytest.param(
            _set("outputs.0.postprocessing.0", {"id": "watershed"}),
            [Check(OPS, False, "watershed")],
            id="unknown-postprocessing",
        ),
        pytest.param(
            _set("outputs.0.postprocessing.0", {"kwargs": {}}),
            [Check(OPS, False, "None")],
            id="processing-without-id",
        ),
        pytest.param(
            _both(
                _set("inputs.0.preprocessing.0.id", "percentile_normalise"),
                _set("outputs.0.postprocessing.0", {"id": "watershed"}),
            ),
            [Check(OPS, False, "percentile_normalise, watershed")],
            id="unknown-pre-and-postprocessing",
        ),
        pytest.param(_set("outputs.0.postprocessing", DELETE), [], id="output-without-postprocessing"),
        pytest.param(
            _set("weights", {"keras_v3": {}}), [Check(WEIGHTS, False, "keras_v3")], id="keras-weights-only"
        ),
        pytest.param(
            _set("weights", {"keras_v3": {}, "torchscript": {}}),
            [Check(WEIGHTS, True, "keras_v3, torchscript")],
            id="torchscript-weights",
        ),
        pytest.param(_set("weights", {"onnx": {}}), [Check(WEIGHTS, True, "onnx")], id="onnx-weights-only"),
        pytest.param(_set("weights", None), [Check(WEIGHTS, False)], id="weights-null"),
    ],
)
def test_one_changed_field_changes_exactly_its_jdll_check(edit, changed):
    rdf = good_rdf()
    edit(rdf)
    checks = jdll_checks(rdf)
    assert [c.name for c in checks] == [c.name for c in GOOD_CHECKS]
    assert [c for c in checks if c not in GOOD_CHECKS] == changed


@pytest.mark.parametrize(
    "postprocess",
    [None, [], [{"spec": "ij.IJ::runPlugIn", "kwargs": "instances.ijm"}]],
    ids=["no-prediction", "no-postprocessing", "a-step-that-is-not-a-macro"],
)
def test_without_a_macro_there_is_no_macro_check(postprocess):
    rdf = good_rdf()
    if postprocess is None:
        del rdf["config"]["deepimagej"]["prediction"]
    else:
        rdf["config"]["deepimagej"]["prediction"]["postprocess"] = postprocess
    del rdf["attachments"]
    assert jdll_checks(rdf) == GOOD_CHECKS[:4] + GOOD_CHECKS[5:]


PER_CHANNEL = "JDLL: per-channel processing arguments"
ALONG_AN_AXIS = "scale_linear along an axis (JDLL has no `axis` argument)"
MAY_REFUSE = ": deepImageJ may refuse this multi-channel package"


def test_scale_linear_along_an_axis_passes_with_a_warning():
    rdf = good_rdf()
    rdf["inputs"][0]["preprocessing"][1]["kwargs"] = {
        "gain": [1.0, 2.0],
        "offset": [0.0, 0.5],
        "axis": "channel",
    }
    warning = Check(PER_CHANNEL, True, ALONG_AN_AXIS + MAY_REFUSE, warning=True)
    assert jdll_checks(rdf) == [*GOOD_CHECKS[:7], warning, GOOD_CHECKS[7]]


def test_every_scale_linear_along_an_axis_is_named_in_the_warning():
    rdf = good_rdf()
    rdf["inputs"][0]["preprocessing"][1]["kwargs"]["axis"] = "channel"
    rdf["outputs"][0]["postprocessing"].append(
        {"id": "scale_linear", "kwargs": {"axis": "channel", "gain": [2.0]}}
    )
    warning = [c for c in jdll_checks(rdf) if c.warning]
    assert warning == [
        Check(PER_CHANNEL, True, ALONG_AN_AXIS + "; " + ALONG_AN_AXIS + MAY_REFUSE, warning=True)
    ]


@pytest.mark.parametrize(
    "op",
    [
        {"id": "zero_mean_unit_variance", "kwargs": {"axis": "channel"}},  # another operation with an `axis`
        {"id": "scale_linear"},  # no kwargs at all
        {"id": "scale_linear", "kwargs": None},
    ],
    ids=["other-op-with-axis", "scale-linear-without-kwargs", "scale-linear-kwargs-null"],
)
def test_no_warning_without_scale_linear_along_an_axis(op):
    rdf = good_rdf()
    rdf["inputs"][0]["preprocessing"].append(op)
    assert jdll_checks(rdf) == GOOD_CHECKS


# ------------------------------------------------------------------------ keras_foreign_classes, _keras_check


def _keras_file(path: Path, config) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", b"")
    return path


OWN_LAYERS = {
    "module": "keras",
    "class_name": "Functional",
    "config": {
        "layers": [
            {
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": {"batch_shape": [None, None, None, 1]},
            },
            {
                "module": "keras.layers",
                "class_name": "Conv2D",
                "config": {"kernel_initializer": {"module": "keras.initializers", "class_name": "HeNormal"}},
            },
        ]
    },
}

FOREIGN_LAYERS = {
    "module": "keras",
    "class_name": "Functional",
    "config": {
        "layers": [
            {"module": "zoo.layers", "class_name": "Resize", "config": {}},
            {"module": "keras.layers", "class_name": "Conv2D", "config": {}},
            {"module": "kerasx", "class_name": "Lookalike"},  # only starts with "keras"
            {"class_name": "NoModule", "config": {}},  # no module: skipped
            {"module": "orphan.module", "config": {}},  # no class name: skipped
            {"module": None, "class_name": "NullModule"},  # a module that is not a string: skipped
            {"module": "zoo.layers", "class_name": "Resize", "config": {}},  # twice, listed once
            {
                "module": "keras.layers",
                "class_name": "Wrapper",
                "config": {"layer": [[{"module": "custom.blocks", "class_name": "Attention"}]]},
            },
        ]
    },
}


def test_a_keras_file_with_keras_layers_only_has_no_foreign_class(tmp_path):
    assert keras_foreign_classes(_keras_file(tmp_path / "own.keras", OWN_LAYERS)) == []


def test_foreign_classes_are_found_at_any_depth_sorted_and_once(tmp_path):
    found = keras_foreign_classes(_keras_file(tmp_path / "foreign.keras", FOREIGN_LAYERS))
    assert found == ["custom.blocks.Attention", "kerasx.Lookalike", "zoo.layers.Resize"]


@pytest.mark.parametrize(
    ("config", "found"),
    [
        ({"module": "zoo.models", "class_name": "UNet"}, ["zoo.models.UNet"]),
        (
            [{"module": "zoo.a", "class_name": "A"}, [{"module": "zoo.b", "class_name": "B"}]],
            ["zoo.a.A", "zoo.b.B"],
        ),
        (
            {
                "module": "keras",
                "class_name": "Sequential",
                "layers": {"module": "keras.src.x", "class_name": "Y"},
            },
            [],
        ),
        ({"module": "keras_hub.layers", "class_name": "X"}, ["keras_hub.layers.X"]),
        ("just a string", []),
    ],
    ids=["the-top-node", "nested-lists", "keras-submodules", "keras-hub-is-foreign", "a-string"],
)
def test_foreign_classes_of_small_configs(tmp_path, config, found):
    assert keras_foreign_classes(_keras_file(tmp_path / "small.keras", config)) == found


def test_keras_check_names_the_foreign_classes(tmp_path):
    assert _keras_check(_keras_file(tmp_path / "foreign.keras", FOREIGN_LAYERS)) == Check(
        "Keras file uses Keras's own layers only",
        False,
        "custom.blocks.Attention, kerasx.Lookalike, zoo.layers.Resize",
    )


def test_keras_check_passes_a_file_with_keras_layers_only(tmp_path):
    assert _keras_check(_keras_file(tmp_path / "own.keras", OWN_LAYERS)) == Check(
        "Keras file uses Keras's own layers only", True, ""
    )


def test_a_keras_file_without_config_json_raises(tmp_path):
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
    with pytest.raises(KeyError, match=r"config\.json"):
        keras_foreign_classes(path)


# ------------------------------------------------------------------------------------------- onnx_checks


def _onnx_file(
    path: Path,
    *,
    opsets=(("", 17),),
    ir_version=8,
    inputs=("raw",),
    outputs=("probabilities",),
    dims=("batch", "y", "x", 1),
) -> Path:
    """An ONNX model of Identity nodes (input i to output i), with the given header and input shape."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [i], [o]) for i, o in zip(inputs, outputs, strict=True)],
        "identity",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims)) for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims)) for name in outputs],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets],
        ir_version=ir_version,
    )
    onnx.save(model, str(path))
    return path


OPSET = "ONNX: opset 15-17 and IR version <= 8 (onnxruntime 1.13)"
NAMES = "ONNX: tensors named after the rdf ids"
DYNAMIC = "ONNX: dynamic batch and spatial axes"
GOOD_ONNX = [
    Check(OPSET, True, "opset 17, IR version 8"),
    Check(NAMES, True, "inputs ['raw'], outputs ['probabilities']"),
    Check(DYNAMIC, True, "input dims ['batch', 'y', 'x', 1]"),
]


def test_onnx_checks_of_a_model_as_the_exporter_writes_it_pass(tmp_path):
    assert onnx_checks(_onnx_file(tmp_path / "m.onnx"), "raw", "probabilities") == GOOD_ONNX


@pytest.mark.parametrize(
    ("header", "changed"),
    [
        ({"opsets": (("", 15),)}, Check(OPSET, True, "opset 15, IR version 8")),
        ({"opsets": (("", 16),), "ir_version": 7}, Check(OPSET, True, "opset 16, IR version 7")),
        ({"opsets": (("", 14),)}, Check(OPSET, False, "opset 14, IR version 8")),
        ({"opsets": (("", 18),)}, Check(OPSET, False, "opset 18, IR version 8")),
        ({"ir_version": 9}, Check(OPSET, False, "opset 17, IR version 9")),
        ({"opsets": (("", 18),), "ir_version": 9}, Check(OPSET, False, "opset 18, IR version 9")),
        ({"opsets": (("ai.onnx", 16),)}, Check(OPSET, True, "opset 16, IR version 8")),
        ({"opsets": (("", 17), ("ai.onnx.ml", 3))}, Check(OPSET, True, "opset 17, IR version 8")),
        ({"opsets": (("com.microsoft", 1), ("", 16))}, Check(OPSET, True, "opset 16, IR version 8")),
    ],
    ids=[
        "opset-15",
        "opset-16-ir-7",
        "opset-14",
        "opset-18",
        "ir-9",
        "opset-18-ir-9",
        "ai.onnx-domain",
        "with-ml-domain",
        "with-ms-domain",
    ],
)
def test_onnx_opset_and_ir_version(tmp_path, header, changed):
    checks = onnx_checks(_onnx_file(tmp_path / "m.onnx", **header), "raw", "probabilities")
    assert checks == [changed, *GOOD_ONNX[1:]]


@pytest.mark.parametrize(
    ("names", "input_id", "output_id", "changed"),
    [
        (
            {"inputs": ("input_1",)},
            "raw",
            "input_1",
            Check(NAMES, False, "inputs ['input_1'], outputs ['probabilities']"),
        ),
        ({}, "raw", "output", Check(NAMES, False, "inputs ['raw'], outputs ['probabilities']")),
        ({}, "input", "probabilities", Check(NAMES, False, "inputs ['raw'], outputs ['probabilities']")),
        (
            {"inputs": ("raw", "mask"), "outputs": ("probabilities", "mask_out")},
            "raw",
            "probabilities",
            Check(NAMES, False, "inputs ['raw', 'mask'], outputs ['probabilities', 'mask_out']"),
        ),
    ],
    ids=["input-misnamed", "output-misnamed", "other-input-id", "two-inputs"],
)
def test_onnx_tensor_names(tmp_path, names, input_id, output_id, changed):
    checks = onnx_checks(_onnx_file(tmp_path / "m.onnx", **names), input_id, output_id)
    assert checks == [GOOD_ONNX[0], changed, GOOD_ONNX[2]]


@pytest.mark.parametrize(
    ("dims", "changed"),
    [
        (("N", "H", "W", "C"), Check(DYNAMIC, True, "input dims ['N', 'H', 'W', 'C']")),
        (("batch", 256, "x", 1), Check(DYNAMIC, False, "input dims ['batch', 256, 'x', 1]")),
        ((1, "y", "x", 1), Check(DYNAMIC, False, "input dims [1, 'y', 'x', 1]")),
        (("batch", "y", None, 1), Check(DYNAMIC, False, "input dims ['batch', 'y', 0, 1]")),
        (("batch", "y", "x"), Check(DYNAMIC, False, "input dims ['batch', 'y', 'x']")),
        (("batch", "z", "y", "x", 1), Check(DYNAMIC, True, "input dims ['batch', 'z', 'y', 'x', 1]")),
        (("batch", 16, "y", "x", 1), Check(DYNAMIC, False, "input dims ['batch', 16, 'y', 'x', 1]")),
        (("b", "t", "z", "y", "x", 1), Check(DYNAMIC, False, "input dims ['b', 't', 'z', 'y', 'x', 1]")),
    ],
    ids=[
        "all-named",
        "fixed-height",
        "fixed-batch",
        "unknown-width",
        "rank-3",
        "rank-5",
        "fixed-depth",
        "rank-6",
    ],
)
def test_onnx_dynamic_input_dims(tmp_path, dims, changed):
    checks = onnx_checks(_onnx_file(tmp_path / "m.onnx", dims=dims), "raw", "probabilities")
    assert checks == [*GOOD_ONNX[:2], changed]


# ---------------------------------------------------------------------------------------------- _guarded


def _raise(error: Exception):
    raise error


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (ValueError("bad magic number"), "ValueError: bad magic number"),
        (ExportError("\n  weights file damaged\nat byte 12\n"), "ExportError: weights file damaged"),
        (OSError("x" * 400), "OSError: " + "x" * 300),
        (RuntimeError(), "RuntimeError: "),
        (KeyError("config.json"), "KeyError: 'config.json'"),
    ],
    ids=["one-line", "first-line-stripped", "cut-at-300", "no-message", "key-error"],
)
def test_an_exception_in_a_check_is_one_failed_check(error, detail):
    assert _guarded("ONNX file", _raise, error) == [Check("ONNX file", False, detail)]


def test_a_single_check_is_wrapped_in_a_list():
    def check(a, b):
        return Check(f"{a} and {b}", True, "fine")

    assert _guarded("ignored", check, "one", "two") == [Check("one and two", True, "fine")]


def test_a_list_of_checks_is_returned_as_it_is():
    checks = [Check("first", True), Check("second", False, "why")]
    assert _guarded("ignored", lambda: list(checks)) == checks


# ------------------------------------------------------------------------------------------ safe_extract


def _package(
    path: Path, members: dict[str, bytes], *, declared: dict[str, int] | None = None, **options
) -> Path:
    """A zip of `members`, stored unless told otherwise; `declared` overrides the uncompressed size that the
    central directory (what the check reads) gives for a member: a package that lies about its sizes."""
    with zipfile.ZipFile(path, "w", **({"compression": zipfile.ZIP_STORED} | options)) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, size in (declared or {}).items():
            archive.getinfo(name).file_size = size
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_package_is_extracted_into_a_new_folder_with_its_subfolders(tmp_path):
    package = _package(
        tmp_path / "p.zip",
        {
            "docs/": b"",
            "rdf.yaml": b"type: model\n",
            "docs/README.md": b"# hi\n",
            "weights/keras/w.bin": b"w" * 10,
        },
    )
    target = tmp_path / "new" / "target"
    assert safe_extract(package, target) == target / "rdf.yaml"
    assert _files(target) == {
        "docs/README.md": b"# hi\n",
        "rdf.yaml": b"type: model\n",
        "weights/keras/w.bin": b"wwwwwwwwww",
    }


def _unreadable_zip(path: Path) -> None:
    """An end-of-archive record (so it looks like a zip) whose central directory is zeros."""
    path.write_bytes(b"\0" * 46 + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 46, 0, 0))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: None, "{package}: no such file"),
        (
            lambda path: path.write_bytes(b"rdf.yaml: no"),
            "{package}: not a bioimage.io package (not a zip file)",
        ),
        (_unreadable_zip, "{package}: unreadable zip (Bad magic number for central directory)"),
        (
            lambda path: _package(path, {"README.md": b"# x\n"}),
            "{package}: not a bioimage.io package (no rdf.yaml at its top level)",
        ),
        (
            lambda path: _package(path, {"model/rdf.yaml": b"type: model\n"}),
            "{package}: not a bioimage.io package (no rdf.yaml at its top level)",
        ),
        (
            lambda path: _package(path, {"rdf.yaml": b"type: model\n", "\\escape.txt": b"x"}),
            "{package}: member '\\\\escape.txt' points outside the package",
        ),
    ],
    ids=["missing", "not-a-zip", "unreadable-zip", "no-rdf", "rdf-in-a-folder", "backslash-name"],
)
def test_what_is_not_a_package_is_refused_with_its_reason(tmp_path, write, message):
    package = tmp_path / "package.zip"
    write(package)
    target = tmp_path / "target"
    with pytest.raises(ExportError) as refused:
        safe_extract(package, target)
    assert str(refused.value) == message.format(package=package)
    assert not target.exists()


def _tiles(count: int) -> dict[str, bytes]:
    """An rdf and `count - 1` empty files: `count` members."""
    return {"rdf.yaml": b"type: model\n"} | {f"tiles/{i}.txt": b"" for i in range(count - 1)}


def test_a_package_of_1000_members_is_extracted(tmp_path):
    package = _package(tmp_path / "many.zip", _tiles(1000))
    safe_extract(package, tmp_path / "target")
    assert len(_files(tmp_path / "target")) == 1000


def test_a_package_of_1001_members_is_refused(tmp_path):
    package = _package(tmp_path / "many.zip", _tiles(1001))
    with pytest.raises(ExportError) as refused:
        safe_extract(package, tmp_path / "target")
    assert str(refused.value) == f"{package}: 1001 files, more than 1000"


def test_a_package_of_exactly_the_total_size_limit_is_extracted(tmp_path, monkeypatch):
    monkeypatch.setattr("export.check.MAX_TOTAL_BYTES", 3000)
    package = _package(tmp_path / "p.zip", {"rdf.yaml": b"type: model\n", "w.bin": b"w" * 2988})  # 3000 bytes
    safe_extract(package, tmp_path / "target")
    assert _files(tmp_path / "target") == {"rdf.yaml": b"type: model\n", "w.bin": b"w" * 2988}


def test_a_package_one_byte_over_the_total_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("export.check.MAX_TOTAL_BYTES", 3000)
    package = _package(tmp_path / "p.zip", {"rdf.yaml": b"type: model\n", "w.bin": b"w" * 2989})  # 3001 bytes
    with pytest.raises(ExportError) as refused:
        safe_extract(package, tmp_path / "target")
    assert str(refused.value) == f"{package}: declares 3001 bytes unpacked from 3001 (zip bomb?)"


@pytest.mark.parametrize(
    ("data", "declared", "refused"),
    [
        # nothing packed counts as 1 byte: 200 * 1 + 2**20 = 1048776 bytes may be declared
        (b"", 1_048_776, None),
        (b"", 1_048_777, "declares 1048777 bytes unpacked from 0 (zip bomb?)"),
        # 1000 bytes packed: 200 * 1000 + 2**20 = 1248576 bytes
        (b"w" * 1000, 1_248_576, None),
        (b"w" * 1000, 1_248_577, "declares 1248577 bytes unpacked from 1000 (zip bomb?)"),
    ],
)
def test_at_most_200_times_the_packed_size_plus_1_mib_may_be_declared(tmp_path, data, declared, refused):
    package = _package(tmp_path / "p.zip", {"rdf.yaml": b"", "w.bin": data}, declared={"w.bin": declared})
    target = tmp_path / "target"
    if refused is None:  # a member may hold less than it declares (it is written as it is)
        safe_extract(package, target)
        assert _files(target) == {"rdf.yaml": b"", "w.bin": data}
    else:
        with pytest.raises(ExportError) as error:
            safe_extract(package, target)
        assert str(error.value) == f"{package}: {refused}"


@pytest.mark.parametrize("declared", [0, 2**20 + 10], ids=["declares-nothing", "declares-more-than-a-chunk"])
def test_a_member_holding_more_than_it_declares_is_refused_as_such(tmp_path, declared):
    """3 MiB, deflated to a few KiB, that declare fewer bytes: refused as too large (not as corrupt, which
    zipfile would say where it reached the declared size) before more than declared is written."""
    data = bytes(range(256)) * (3 * 2**12)
    package = _package(
        tmp_path / "liar.zip",
        {"rdf.yaml": b"type: model\n", "w.bin": data},
        declared={"w.bin": declared},
        compression=zipfile.ZIP_DEFLATED,
    )
    target = tmp_path / "target"
    with pytest.raises(ExportError) as error:
        safe_extract(package, target)
    assert str(error.value) == f"{package}: member 'w.bin' is larger than declared"
    assert (target / "w.bin").stat().st_size <= declared
