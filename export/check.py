"""`python -m export check PACKAGE.zip`: every check a package must pass before it is written.

1. the zip is safe to open (no member escapes the folder, no link, sizes bounded) and has an rdf.yaml;
2. bioimageio.spec reads it as a valid model description (format 0.5);
3. deepImageJ's reader (JDLL) can parse it: plain-string documentation and covers, an id and a
   nickname, tiling allowed, space axes x and y, only processing operations JDLL implements, and the
   ImageJ macros it declares are attached files;
4. the ONNX file is opset 15-17 with IR version at most 8 (onnxruntime 1.10-1.13, JDLL's engines), with
   dynamic batch, height and width and tensors named after the rdf ids; the `.keras` file uses Keras's
   own layers only;
5. bioimageio.core's `test_model` passes (status `passed`) for every declared weight format;
6. ONNX (onnxruntime) and TorchScript give the Keras output, within 1e-4, on the test input and on an input
   of another, non-square size.

This module imports neither `zoo` nor `training` (only `base`, which holds no model code): it runs in a
process that knows only what any bioimage.io consumer knows, so a package that passes here stands on its
own.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from base.backend import set_default_backend

set_default_backend()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402 (after the backend default)
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402 (after the backend default)

from base.cli import simple_command  # noqa: E402 (after the backend default)
from export.errors import ExportError, FailedChecks  # noqa: E402 (after the backend default)
from export.imagej import RUN_MACRO_SPEC  # noqa: E402 (after the backend default)

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
JDLL_OPERATIONS = {
    "binarize",
    "clip",
    "ensure_dtype",
    "fixed_zero_mean_unit_variance",
    "scale_linear",
    "scale_range",
    "sigmoid",
    "zero_mean_unit_variance",
}
ONNX_OPSETS = range(15, 18)
ONNX_MAX_IR_VERSION = 8
PARITY_TOLERANCE = 1e-4
# Bounds for opening a package from anyone: a zip bomb is refused before anything is extracted.
MAX_MEMBERS = 1000
MAX_TOTAL_BYTES = 4 * 2**30
MAX_RATIO = 200


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""
    warning: bool = False  # a passed check with something worth knowing

    def line(self) -> str:
        mark = "ok  " if self.passed and not self.warning else ("warn" if self.passed else "FAIL")
        return f"{mark} {self.name}" + (f": {self.detail}" if self.detail else "")


def safe_extract(package: Path, target: Path) -> Path:
    """Extract a package zip into `target` after checking every member; returns the rdf file."""
    if not package.is_file():
        raise ExportError(f"{package}: no such file")
    if not zipfile.is_zipfile(package):
        raise ExportError(f"{package}: not a bioimage.io package (not a zip file)")
    try:
        archive = zipfile.ZipFile(package)
    except (zipfile.BadZipFile, OSError) as error:
        raise ExportError(f"{package}: unreadable zip ({error})") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise ExportError(f"{package}: {len(members)} files, more than {MAX_MEMBERS}")
        total = sum(m.file_size for m in members)
        packed = sum(m.compress_size for m in members)
        if total > MAX_TOTAL_BYTES or total > MAX_RATIO * max(packed, 1) + 2**20:
            raise ExportError(f"{package}: declares {total} bytes unpacked from {packed} (zip bomb?)")
        for member in members:
            name = member.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise ExportError(f"{package}: member {name!r} points outside the package")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise ExportError(f"{package}: member {name!r} is a symbolic link")
        names = {m.filename for m in members}
        rdf_names = [n for n in RDF_NAMES if n in names]
        if not rdf_names:
            raise ExportError(f"{package}: not a bioimage.io package (no rdf.yaml at its top level)")
        for member in members:
            if member.is_dir():
                continue
            destination = target / member.filename
            destination.parent.mkdir(parents=True, exist_ok=True)
            # zipfile cuts a member at its declared size (silently, where the CRC fits the cut), so it is
            # read with room for one more chunk: a member that holds more than it declares is refused.
            unbounded = copy.copy(member)
            unbounded.file_size = member.file_size + 2**20 + 1
            try:
                with archive.open(unbounded) as source, open(destination, "wb") as sink:
                    written = 0
                    while chunk := source.read(2**20):
                        written += len(chunk)
                        if written > member.file_size:  # a member that lies about its size
                            raise ExportError(
                                f"{package}: member {member.filename!r} is larger than declared"
                            )
                        sink.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # a bad CRC, a broken stream
                raise ExportError(f"{package}: member {member.filename!r} is corrupt ({error})") from None
    return target / rdf_names[0]


def keras_foreign_classes(keras_file: Path) -> list[str]:
    """Classes in a `.keras` file's architecture that plain Keras cannot rebuild (empty: loads anywhere)."""
    with zipfile.ZipFile(keras_file) as archive:
        config = json.loads(archive.read("config.json"))
    foreign = set()

    def visit(node):
        if isinstance(node, dict):
            module = node.get("module")
            if "class_name" in node and isinstance(module, str):
                if module != "keras" and not module.startswith("keras."):
                    foreign.add(f"{module}.{node['class_name']}")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return sorted(foreign)


def jdll_checks(rdf: dict) -> list[Check]:
    """What deepImageJ's reader needs from the raw rdf (it drops files it cannot parse silently)."""
    checks = []
    version = rdf.get("format_version")
    checks.append(
        Check(
            "JDLL: format_version 0.5.x as a string", isinstance(version, str) and version.startswith("0.5")
        )
    )
    documentation_ok = isinstance(rdf.get("documentation"), str)
    covers = rdf.get("covers", [])
    covers_ok = isinstance(covers, list) and all(isinstance(c, str) for c in covers)
    checks.append(
        Check(
            "JDLL: documentation and covers are plain strings",
            documentation_ok and covers_ok,
            "" if documentation_ok and covers_ok else f"documentation {rdf.get('documentation')!r}",
        )
    )
    config = rdf.get("config") or {}
    nickname = (config.get("bioimageio") or {}).get("nickname")
    checks.append(
        Check(
            "JDLL: id and config.bioimageio.nickname",
            bool(rdf.get("id")) and bool(nickname) and bool(rdf.get("name")),
            f"id {rdf.get('id')!r}, nickname {nickname!r}",
        )
    )
    deepimagej = config.get("deepimagej") or {}
    tiling = deepimagej.get("allow_tiling")
    checks.append(Check("JDLL: config.deepimagej.allow_tiling is true", tiling is True))
    macros = [
        step.get("kwargs")
        for step in (deepimagej.get("prediction") or {}).get("postprocess") or []
        if step.get("spec") == RUN_MACRO_SPEC
    ]
    if macros:
        attached = {a.get("source") for a in rdf.get("attachments") or []}
        missing = [str(m) for m in macros if m not in attached]
        checks.append(
            Check(
                "deepImageJ: its post-processing macros are attached files",
                not missing,
                ", ".join(missing) if missing else ", ".join(macros),
            )
        )
    bad_axes, bad_ops, warnings = [], [], []
    for kind, processing in (("inputs", "preprocessing"), ("outputs", "postprocessing")):
        for tensor in rdf.get(kind, []):
            for axis in tensor.get("axes", []):
                if axis.get("type") == "space" and axis.get("id") not in ("x", "y", "z"):
                    bad_axes.append(f"{tensor.get('id')}.{axis.get('id')}")
                if axis.get("type") == "channel" and not axis.get("channel_names"):
                    bad_axes.append(f"{tensor.get('id')}.{axis.get('id')} (no channel_names)")
            for op in tensor.get(processing, []):
                if op.get("id") not in JDLL_OPERATIONS:
                    bad_ops.append(str(op.get("id")))
                kwargs = op.get("kwargs") or {}
                if op.get("id") == "scale_linear" and "axis" in kwargs:
                    warnings.append("scale_linear along an axis (JDLL has no `axis` argument)")
    checks.append(Check("JDLL: space axes are x, y (and z)", not bad_axes, ", ".join(bad_axes)))
    checks.append(Check("JDLL: only processing operations it implements", not bad_ops, ", ".join(bad_ops)))
    if warnings:
        checks.append(
            Check(
                "JDLL: per-channel processing arguments",
                True,
                "; ".join(warnings) + ": deepImageJ may refuse this multi-channel package",
                warning=True,
            )
        )
    weights = rdf.get("weights") or {}
    checks.append(
        Check(
            "JDLL: weights it runs (onnx or torchscript)",
            "onnx" in weights or "torchscript" in weights,
            ", ".join(weights),
        )
    )
    return checks


def onnx_checks(path: Path, input_id: str, output_id: str) -> list[Check]:
    import onnx

    proto = onnx.load(str(path))
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return [
        Check(
            "ONNX: opset 15-17 and IR version <= 8 (onnxruntime 1.13)",
            opset in ONNX_OPSETS and proto.ir_version <= ONNX_MAX_IR_VERSION,
            f"opset {opset}, IR version {proto.ir_version}",
        ),
        Check(
            "ONNX: tensors named after the rdf ids",
            inputs == [input_id] and outputs == [output_id],
            f"inputs {inputs}, outputs {outputs}",
        ),
        Check(
            "ONNX: dynamic batch and spatial axes",
            len(dims) in (4, 5) and all(isinstance(d, str) and d for d in dims[:-1]),
            f"input dims {dims}",
        ),
    ]


# pragma: no mutate start (mutation testing, bench/mutation.py, covers the guards above and below; these run a
# real exported package, minutes per test, and the slow export tests cover them)
def test_model_check(rdf_path: Path, weight_format: str, devices: list[str] | None = None) -> Check:
    """bioimageio.core's `test_model` of one weight format, on `devices` (its default: the CPU)."""
    from bioimageio.core import test_model

    summary = test_model(rdf_path, weight_format=weight_format, devices=devices)
    failures = []
    for detail in summary.details:
        if detail.status != "passed":
            messages = "; ".join(e.msg for e in detail.errors)[:300]
            failures.append(f"{detail.name}: {messages or detail.status}")
    return Check(
        f"bioimageio.core test_model, {weight_format}",
        summary.status == "passed",
        f"status {summary.status}" + (" | " + " | ".join(failures) if failures else ""),
    )


def parity_checks(folder: Path, descr, weights: dict) -> list[Check]:
    """ONNX and TorchScript against the Keras weights on the network's own input (pre-processed)."""
    import keras

    input_descr = descr.inputs[0]
    test_input = np.load(folder / str(input_descr.test_tensor.source), allow_pickle=False)
    sizes = [a.size for a in input_descr.axes if getattr(a, "id", None) in ("z", "y", "x")]
    channels = test_input.shape[-1]
    rng = np.random.default_rng(0)
    # Another size than the test input's: one step more than the minimum along z and y, three along x.
    odd_shape = [size.min + (3 if i == len(sizes) - 1 else 1) * size.step for i, size in enumerate(sizes)]
    odd = rng.normal(size=(1, *odd_shape, channels)).astype(np.float32)
    centred = ((test_input - test_input.mean()) / (test_input.std() + 1e-6)).astype(np.float32)
    model = keras.models.load_model(folder / weights["keras_v3"], compile=False)
    checks = []
    runners = {}
    if "onnx" in weights:
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(folder / weights["onnx"]), providers=["CPUExecutionProvider"]
        )
        runners["ONNX (onnxruntime)"] = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]
    if "torchscript" in weights:
        import torch

        module = torch.jit.load(str(folder / weights["torchscript"]), map_location="cpu").eval()

        def run_torch(x):
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()

        runners["TorchScript"] = run_torch
    for name, run in runners.items():
        worst = 0.0
        for x in (centred, odd):
            expected = keras.ops.convert_to_numpy(model.predict_on_batch(x))
            got = run(x)
            if got.shape != expected.shape:
                worst = float("inf")
                break
            worst = max(worst, float(np.abs(got - expected).max()))
        checks.append(
            Check(
                f"{name} equals Keras (test input and a {'x'.join(map(str, odd.shape[1:-1]))} input)",
                worst <= PARITY_TOLERANCE,
                f"largest difference {worst:.2e}",
            )
        )
    return checks


def check_package(package: Path) -> list[Check]:
    """All checks of a package zip; raises ExportError when it cannot even be opened as a package."""
    import keras

    keras.utils.disable_interactive_logging()  # no progress bar per test prediction
    from bioimageio.spec import InvalidDescr, load_model_description
    from bioimageio.spec.utils import read_yaml

    with tempfile.TemporaryDirectory(prefix="bioimage-check-") as scratch:
        folder = Path(scratch)
        rdf_path = safe_extract(package, folder)
        rdf = read_yaml(rdf_path)
        if not isinstance(rdf, dict) or rdf.get("type") != "model":
            raise ExportError(f"{package}: not a bioimage.io model package (rdf type {rdf.get('type')!r})")
        # The raw rdf is read before bioimageio.spec validates it: a malformed field fails this check.
        checks = _guarded("JDLL: the rdf as deepImageJ reads it", jdll_checks, rdf)
        try:
            descr = load_model_description(rdf_path, perform_io_checks=True)
        except Exception as error:  # an invalid description raises (ValueError) in this spec version
            detail = " ".join(str(error).split())[:500]
            checks.append(Check("bioimageio.spec: valid model description", False, detail))
            return checks
        if isinstance(descr, InvalidDescr):
            errors = "; ".join(
                f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in descr.validation_summary.errors
            )
            checks.append(Check("bioimageio.spec: valid model description", False, errors[:500]))
            return checks
        checks.append(
            Check("bioimageio.spec: valid model description", True, f"format {descr.format_version}")
        )
        weights = {
            name: str(entry.source)
            for name in ("keras_v3", "onnx", "torchscript")
            if (entry := getattr(descr.weights, name, None)) is not None
        }
        input_id, output_id = str(descr.inputs[0].id), str(descr.outputs[0].id)
        if "onnx" in weights:
            checks += _guarded("ONNX file", onnx_checks, folder / weights["onnx"], input_id, output_id)
        if "keras_v3" in weights:
            checks += _guarded("Keras file", _keras_check, folder / weights["keras_v3"])
        for weight_format in weights:
            name = f"bioimageio.core test_model, {weight_format}"
            checks += _guarded(name, test_model_check, rdf_path, weight_format)
        if "keras_v3" in weights:
            checks += _guarded("ONNX and TorchScript against Keras", parity_checks, folder, descr, weights)
    return checks


# pragma: no mutate end
def _keras_check(keras_file: Path) -> Check:
    foreign = keras_foreign_classes(keras_file)
    return Check("Keras file uses Keras's own layers only", not foreign, ", ".join(foreign))


def _guarded(name: str, function, *args) -> list[Check]:
    """Run one check; an exception (a damaged file, a model that refuses to load) is a failed check."""
    try:
        result = function(*args)
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return [Check(name, False, f"{type(error).__name__}: {first}")]
    return result if isinstance(result, list) else [result]


# pragma: no mutate block (the command line around check_package)
class CheckOptions(BaseModel):
    """Options of `python -m export check`."""

    model_config = ConfigDict(extra="forbid")

    package: Path = Field(description="package to check (.zip)", json_schema_extra={"positional": True})


def check(options: CheckOptions) -> None:
    """Print every check of a package and a verdict; a failed check raises `FailedChecks`."""
    checks = check_package(options.package)
    for item in checks:
        print(item.line())
    failed = [c for c in checks if not c.passed]
    if failed:
        print(f"{options.package}: FAILED {len(failed)} check(s)")
        raise FailedChecks(f"{options.package}: {len(failed)} check(s) failed")
    print(f"{options.package}: all checks passed")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m export check`; returns the exit status."""
    return simple_command(CheckOptions, check, argv, prog="python -m export check", description=__doc__)
