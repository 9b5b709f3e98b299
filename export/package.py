"""Build a bioimage.io model package from a run folder, check it, and only then write it.

`export_run` stages every file in a temporary folder, zips it under a temporary name next to the target,
runs `python -m export check` on that zip in a fresh process (which has not imported this project, so the
package must stand on its own), and renames it into place only if every check passed. On any failure
nothing is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import pydantic

from export import describe
from export.describe import Metadata, Tensors
from export.documentation import documentation
from export.errors import ExportError, FailedChecks
from export.imagej import deepimagej_config, write_macro
from export.portable import portable_model
from export.run_folder import Run, read_run
from export.weights import ONNX_OPSET, torch_version, write_onnx, write_torchscript

RDF_FILE = "rdf.yaml"


def check_output_path(out: Path, *, overwrite: bool) -> None:
    if out.suffix.lower() != ".zip":
        raise ExportError(f"{out}: a package is a .zip file; give a path ending in .zip")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder")
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: exists already (use --overwrite to replace it)")
    if not os.access(out.parent, os.W_OK):
        raise ExportError(f"{out}: the folder {out.parent} is not writable")


def _axes(sizes: Tensors, v0_5, *, output: bool) -> list:
    channel_names = sizes.output_channels if output else sizes.input_channels
    if output:
        space = [
            v0_5.SpaceOutputAxisWithHalo(
                id=v0_5.AxisId(axis),
                size=v0_5.SizeReference(tensor_id=v0_5.TensorId(sizes.input_id), axis_id=v0_5.AxisId(axis)),
                halo=halo,
            )
            for axis, halo in zip(sizes.axes, sizes.halos, strict=True)
        ]
    else:
        space = [
            v0_5.SpaceInputAxis(id=v0_5.AxisId(axis), size=v0_5.ParameterizedSize(min=low, step=step))
            for axis, low, step in zip(sizes.axes, sizes.min_sizes, sizes.steps, strict=True)
        ]
    channel = v0_5.ChannelAxis(channel_names=[v0_5.Identifier(name) for name in channel_names])
    return [v0_5.BatchAxis(), *space, channel]


def _processing(operations, v0_5) -> list:
    """The rdf descriptions of declared operations, checked by bioimageio.spec's own classes."""
    descriptions = {
        "scale_range": (v0_5.ScaleRangeDescr, v0_5.ScaleRangeKwargs, v0_5.ScaleRangeKwargs),
        "fixed_zero_mean_unit_variance": (
            v0_5.FixedZeroMeanUnitVarianceDescr,
            v0_5.FixedZeroMeanUnitVarianceKwargs,
            v0_5.FixedZeroMeanUnitVarianceAlongAxisKwargs,
        ),
        "scale_linear": (v0_5.ScaleLinearDescr, v0_5.ScaleLinearKwargs, v0_5.ScaleLinearAlongAxisKwargs),
    }
    descrs = []
    for op in operations:
        descr, plain, along_axis = descriptions[op.id]
        descrs.append(descr(kwargs=(along_axis if "axis" in op.kwargs else plain)(**op.kwargs)))
    return descrs


def _authors(metadata: Metadata, v0_5) -> list:
    authors = []
    for entry in metadata.authors or [getpass_name()]:
        name, affiliation, orcid = ([part.strip() for part in entry.split(";")] + ["", ""])[:3]
        authors.append(v0_5.Author(name=name, affiliation=affiliation or None, orcid=orcid or None))
    return authors


def getpass_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment (some containers)
        return "anonymous"


def build_description(run: Run, staging: Path, metadata: Metadata) -> dict:
    """Write every file of the package into `staging` and return the rdf as a YAML-ready dict."""
    from bioimageio.spec import dump_description

    sizes = describe.tensors(run)
    portable = portable_model(run.model)

    # weights
    keras_file = staging / "weights.keras"
    portable.save(keras_file)
    write_onnx(portable, staging / "weights.onnx", input_id=sizes.input_id, output_id=sizes.output_id)
    torch = torch_version()
    if torch is not None:
        write_torchscript(keras_file, staging / "weights.pt")
    else:
        print(
            "note: PyTorch is not installed, so the package has no TorchScript weights (for ilastik); "
            "pip install 'bioimage-keras-zoo[torch]' adds them"
        )

    # test and sample tensors, cover
    raw = describe.test_input(run, sizes)
    output = describe.test_output(run, portable, raw)
    np.save(staging / "test_input.npy", raw)
    np.save(staging / "test_output.npy", output)
    describe.write_image(staging / "sample_input.tif", raw[0])
    describe.write_image(staging / "sample_output.tif", output[0])
    describe.write_image(staging / "cover.png", describe.cover(run, raw, output))
    nickname = describe.nickname(describe.sha256(keras_file))
    # Segmentation: the macro that turns the probabilities into cells in Fiji.
    # Its watershed is 2D: a volume's package leaves instances to Python (documentation.md says how).
    instances = run.declaration.instances
    macro = write_macro(instances, staging) if instances is not None and run.geometry.ndim == 2 else None
    (staging / "documentation.md").write_text(
        documentation(run, sizes, name=metadata.name or run.declaration.name, torchscript=torch is not None)
    )

    try:
        descr = _model_descr(
            run,
            staging,
            metadata,
            sizes,
            torch=torch,
            nickname=nickname,
            atol=describe.absolute_tolerance(output),
            macro=macro,
        )
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ExportError(f"{run.folder}: cannot describe this model ({problems})") from None
    rdf = _without_nulls(dump_description(descr))
    # deepImageJ (JDLL) reads documentation and covers as plain strings only.
    rdf["format_version"] = describe.RDF_FORMAT_VERSION
    rdf["documentation"] = "documentation.md"
    rdf["covers"] = ["cover.png"]
    return rdf


def _model_descr(
    run: Run, staging: Path, metadata: Metadata, sizes: Tensors, *, torch, nickname, atol, macro: str | None
):
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5

    declared = run.declaration
    with ValidationContext(root=staging, file_name=RDF_FILE, perform_io_checks=True):
        weights = v0_5.WeightsDescr(
            keras_v3=v0_5.KerasV3WeightsDescr(
                source="weights.keras",
                keras_version=v0_5.Version(keras.__version__),
                backend=(keras.backend.backend(), v0_5.Version(_backend_version())),
            ),
            onnx=v0_5.OnnxWeightsDescr(source="weights.onnx", opset_version=ONNX_OPSET, parent="keras_v3"),
            torchscript=(
                v0_5.TorchscriptWeightsDescr(
                    source="weights.pt", pytorch_version=v0_5.Version(torch.split("+")[0]), parent="keras_v3"
                )
                if torch is not None
                else None
            ),
        )
        descr = v0_5.ModelDescr(
            name=metadata.name or declared.name,
            description=metadata.description or declared.description,
            authors=_authors(metadata, v0_5),
            cite=[v0_5.CiteEntry(text=c.text, doi=v0_5.Doi(c.doi)) for c in declared.cite],
            license=v0_5.LicenseId(metadata.license),
            tags=metadata.tags or declared.tags,
            version=metadata.version,
            documentation=v0_5.FileDescr(source="documentation.md"),
            covers=[v0_5.FileDescr(source="cover.png")],
            attachments=[v0_5.FileDescr(source=macro)] if macro is not None else [],
            id=v0_5.ModelId(f"bioimage-keras-zoo/{nickname}"),
            inputs=[
                v0_5.InputTensorDescr(
                    id=v0_5.TensorId(sizes.input_id),
                    axes=_axes(sizes, v0_5, output=False),
                    test_tensor=v0_5.FileDescr(source="test_input.npy"),
                    sample_tensor=v0_5.FileDescr(source="sample_input.tif"),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=_processing(declared.input.processing, v0_5),
                )
            ],
            outputs=[
                v0_5.OutputTensorDescr(
                    id=v0_5.TensorId(sizes.output_id),
                    axes=_axes(sizes, v0_5, output=True),
                    test_tensor=v0_5.FileDescr(source="test_output.npy"),
                    sample_tensor=v0_5.FileDescr(source="sample_output.tif"),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                    postprocessing=_processing(declared.output.processing, v0_5),
                )
            ],
            weights=weights,
            config=v0_5.Config(
                bioimageio=v0_5.BioimageioConfig(
                    nickname=nickname,
                    reproducibility_tolerance=[v0_5.ReproducibilityTolerance(absolute_tolerance=atol)],
                ),
                deepimagej=deepimagej_config(macro),
            ),
        )
    return descr


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def zip_folder(folder: Path, target: Path) -> None:
    """Zip every file of `folder` (rdf.yaml first) into `target`."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    names.remove(RDF_FILE)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in [RDF_FILE, *names]:
            archive.write(folder / name, arcname=name)


def _backend_version() -> str:
    """The version of the framework of this process's Keras backend (which wrote weights.keras)."""
    from importlib.metadata import version

    return version(keras.backend.backend()).split("+")[0]


def run_checks(package: Path) -> tuple[bool, str]:
    """Run `python -m export check` on `package` in a fresh process, on the Keras backend of this one;
    (passed, its report)."""
    env = os.environ | {"KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(
        [sys.executable, "-m", "export", "check", str(package)], env=env, capture_output=True, text=True
    )
    report = result.stdout.strip()
    if result.returncode != 0 and result.stderr.strip():
        # The checker's own error (an unreadable package, a crash): its last lines say why.
        report += "\n" + "\n".join(result.stderr.strip().splitlines()[-5:])
    return result.returncode == 0, report


@contextmanager
def _atomic_package(out: Path) -> Iterator[Path]:
    """A temporary zip beside `out`, renamed onto it when the block ends without an error; removed
    otherwise. A failed write (disk full, read-only folder) is a one-line `ExportError`."""
    tmp = None
    try:
        handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
        os.close(handle)
        tmp = Path(name)
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except OSError as error:
        raise ExportError(f"{out}: cannot write it ({error.strerror or error})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def export_run(
    run_dir: Path,
    out: Path,
    *,
    metadata: Metadata | None = None,
    checkpoint: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the run folder `run_dir` as the bioimage.io package `out` (a .zip); returns `out`."""
    check_output_path(out, overwrite=overwrite)
    run = read_run(run_dir, checkpoint)
    metadata = metadata or Metadata()
    from bioimageio.spec.utils import write_yaml

    with tempfile.TemporaryDirectory(prefix="bioimage-export-") as scratch:
        staging = Path(scratch) / "package"
        staging.mkdir()
        rdf = build_description(run, staging, metadata)
        write_yaml(rdf, staging / RDF_FILE)
        with _atomic_package(out) as tmp:
            zip_folder(staging, tmp)
            passed, report = run_checks(tmp)
            print(report.replace(str(tmp), str(out)))
            if not passed:
                raise FailedChecks(f"{out}: not written, the package failed the checks above")
    print(f"package: {out}")
    return out
