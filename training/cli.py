"""Command-line plumbing shared by the entry points: flags generated from a config class, error handling.

Every config field becomes a flag (`patch_size` -> `--patch-size`), with the field's description as help,
so the command line, the JSON config file and `config.json` in a run folder always agree.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import TrainingConfig, build_config, read_config_file
from training.errors import UserInputError


def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_kwargs(args[0])
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args)}
    if origin is list:
        return {"nargs": "+"}
    return {}


def config_parser(cls: type[TrainingConfig], *, prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with `--config`, `--resume` and one flag per field of `cls` (default: unset)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="JSON file of options (flags override it)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    options = parser.add_argument_group("options (also accepted as keys of --config)")
    for name, field in cls.model_fields.items():
        if name == "task":
            continue  # fixed by the entry point
        options.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=f"{field.description} [default: {field.default}]",
            **_flag_kwargs(field.annotation),
        )
    return parser


def config_from_args(cls: type[TrainingConfig], args: argparse.Namespace) -> tuple[TrainingConfig, dict]:
    """The validated config from defaults < `--config` file < flags, and the flags that were given."""
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    flags = {name: getattr(args, name) for name in cls.model_fields if getattr(args, name, None) is not None}
    values.update(flags)
    source = f"{args.config} + command line" if args.config else "command line"
    return build_config(cls, values, source=source), flags


def resume_flags(cls: type[TrainingConfig], args: argparse.Namespace) -> dict:
    """The flags given on the command line, unvalidated: a resumed run checks them against its own config."""
    return {name: getattr(args, name) for name in cls.model_fields if getattr(args, name, None) is not None}


def run_main(body: Callable[[], Any]) -> int:
    """Run an entry point body: a `UserInputError` becomes its message on stderr and exit status 2,
    Ctrl-C exit status 130."""
    # Progress lines should reach a log file as they happen, not when a buffer fills.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        body()
    except UserInputError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
