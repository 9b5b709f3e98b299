"""`python -m export RUN_DIR --out PACKAGE.zip`: export a run folder as a bioimage.io model package.
`python -m export check PACKAGE.zip`: run the package checks on an existing package.

The package (rdf.yaml in model spec 0.5, ONNX, Keras and TorchScript weights, test tensors, cover,
documentation) is checked with bioimageio.core and onnxruntime before it is written; a package that fails
any check is not written, and the exit status is 1. Bad input (a missing or incomplete run folder, an
unreadable checkpoint, an output in a missing folder or an existing file without --overwrite) gives a
one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from export.check import main as check_main

        return check_main(argv[1:])

    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="run folder of python -m training.segment or .denoise")
    parser.add_argument("--out", type=Path, required=True, help="package to write (.zip)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")
    parser.add_argument(
        "--checkpoint", choices=["best", "last"], default=None, help="default: the one the run evaluated"
    )
    parser.add_argument("--name", default=None, help="model name (default: from the task and run folder)")
    parser.add_argument("--description", default=None, help="one-sentence description")
    parser.add_argument(
        "--author",
        action="append",
        default=[],
        help="'Name' or 'Name; affiliation; ORCID' (repeatable; default: your user name)",
    )
    parser.add_argument("--license", default="MIT", help="SPDX licence id (default: MIT)")
    parser.add_argument("--tag", action="append", default=[], help="tag (repeatable; default: from the task)")
    parser.add_argument("--version", default="0.1.0", help="version of the model (default: 0.1.0)")
    args = parser.parse_args(argv)

    from export.errors import ExportError
    from export.package import Metadata, export_run

    metadata = Metadata(
        name=args.name,
        description=args.description,
        authors=args.author,
        license=args.license,
        tags=args.tag,
        version=args.version,
    )
    try:
        export_run(
            args.run_dir, args.out, metadata=metadata, checkpoint=args.checkpoint, overwrite=args.overwrite
        )
    except ExportError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1 if "failed the checks" in str(error) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
