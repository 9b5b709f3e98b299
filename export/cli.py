"""The export commands, over plain functions (`export.package.export_run`, `export.check.check_package`).

`python -m export RUN_DIR --out PACKAGE.zip`: export a run folder as a bioimage.io model package.
`python -m export check PACKAGE.zip`: run the package checks on an existing package.

The package (rdf.yaml in model spec 0.5, ONNX, Keras and TorchScript weights, test tensors, cover,
documentation) is checked with bioimageio.core and onnxruntime before it is written; a package that fails
any check is not written, and the exit status is 1. Bad input (a missing or incomplete run folder, an
unreadable checkpoint, an output in a missing folder or an existing file without --overwrite) gives a
one-line error and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from base.cli import dispatch, simple_command


class ExportOptions(BaseModel):
    """Options of `python -m export`, also the arguments of `export.package.export_run`'s metadata."""

    model_config = ConfigDict(extra="forbid")

    run_dir: Path = Field(
        description="run folder of a training command, or the name of a shipped model",
        json_schema_extra={"positional": True},
    )
    out: Path = Field(description="package to write (.zip)")
    overwrite: bool = Field(False, description="replace an existing package")
    checkpoint: Literal["best", "last"] | None = Field(
        None, description="checkpoint to export (default: the one the run's results come from)"
    )
    name: str | None = Field(None, description="model name (default: from the task and run folder)")
    description: str | None = Field(None, description="one-sentence description (default: from the task)")
    author: list[str] = Field(
        [],
        description="'Name' or 'Name; affiliation; ORCID' (repeatable; default: your user name)",
        json_schema_extra={"repeatable": True},
    )
    license: str = Field("MIT", description="SPDX licence id")
    tag: list[str] = Field(
        [], description="tag (repeatable; default: from the task)", json_schema_extra={"repeatable": True}
    )
    version: str = Field("0.1.0", description="version of the model")


def export(options: ExportOptions) -> Path:
    """Export a run folder as a checked package; returns the package's path."""
    from export.package import Metadata, export_run

    metadata = Metadata(
        name=options.name,
        description=options.description,
        authors=options.author,
        license=options.license,
        tags=options.tag,
        version=options.version,
    )
    return export_run(
        options.run_dir,
        options.out,
        metadata=metadata,
        checkpoint=options.checkpoint,
        overwrite=options.overwrite,
    )


def export_main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m export RUN_DIR --out PACKAGE.zip`; returns the exit status."""
    return simple_command(ExportOptions, export, argv, prog="python -m export", description=__doc__)


def check_main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m export check PACKAGE.zip`; returns the exit status."""
    from export.check import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m export`: `check` as the first word checks a package, anything else
    exports a run folder."""
    return dispatch(argv, {"export": export_main, "check": check_main}, default="export")
