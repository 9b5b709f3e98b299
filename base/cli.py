"""The one way commands are built: a pydantic options class becomes the parser, the same class validates
the values (from flags, and for training also from a `--config` JSON file), and a `ZooError` becomes its
message on stderr and its own exit status.

Every field of an options class is a flag (`tile_size` -> `--tile-size`) whose help is the field's
description and its default, once. Field extras choose the rest: `{"positional": True}` makes an
argument positional, `{"cli": False}` keeps a field off the command line, `{"repeatable": True}` makes a
list a repeatable flag (`--tag a --tag b`) rather than one flag with several values.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from base.errors import UserInputError, ZooError

T = TypeVar("T", bound=BaseModel)


def _extra(field) -> dict:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _flag_kwargs(annotation: Any, extra: dict) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_kwargs(args[0], extra)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        # Literal numbers (`Literal[2, 3]`) are parsed as numbers, so that a flag's text matches a choice.
        kinds = {type(a) for a in args}
        return {"choices": list(args)} | ({"type": kinds.pop()} if kinds in ({int}, {float}) else {})
    if origin is list:
        return {"action": "append"} if extra.get("repeatable") else {"nargs": "+"}
    return {}


def _help(field) -> str:
    text = field.description or ""
    default = field.default
    if field.is_required():
        return f"{text} (required)"
    if default is None or default == [] or (isinstance(default, bool) and default is False):
        return text
    if isinstance(default, bool):
        return f"{text} (default: on)"
    return f"{text} (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"


def cli_fields(cls: type[BaseModel]) -> dict:
    """The fields of `cls` that the command line sets."""
    return {name: field for name, field in cls.model_fields.items() if _extra(field).get("cli", True)}


def options_parser(
    cls: type[BaseModel], *, prog: str, description: str, group: str | None = None
) -> argparse.ArgumentParser:
    """An argument parser with one argument per command-line field of `cls`; unset flags stay None, so
    the options class's own defaults apply."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options = parser.add_argument_group(group) if group else parser
    for name, field in cli_fields(cls).items():
        extra = _extra(field)
        kwargs = _flag_kwargs(field.annotation, extra)
        if extra.get("positional"):
            if typing.get_origin(field.annotation) is list:
                kwargs = {"nargs": "+"}
            parser.add_argument(name, help=field.description, metavar=extra.get("metavar"), **kwargs)
            continue
        options.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=_help(field),
            metavar=extra.get("metavar"),
            **kwargs,
        )
    return parser


def given_values(cls: type[BaseModel], args: argparse.Namespace) -> dict[str, Any]:
    """The values that the command line gave, unvalidated."""
    return {name: getattr(args, name) for name in cli_fields(cls) if getattr(args, name, None) is not None}


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming where the values came from."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(
                f"{source}: {key}: {message} (got {item.get('input')!r})"
                if item["loc"]
                else f"{source}: {message}"
            )
    return "\n".join(lines)


def build_options(cls: type[T], values: dict[str, Any], *, source: str) -> T:
    """Validate `values` into `cls`; problems become one `UserInputError` with a line each."""
    try:
        return cls(**values)
    except ValidationError as error:
        raise UserInputError(format_validation_error(error, source)) from None


def read_options_file(path: Path) -> dict[str, Any]:
    """A JSON file of options, as a dict (not yet validated)."""
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(values, dict):
        raise UserInputError(f"{path}: expected a JSON object of options, got {type(values).__name__}")
    return values


def run_command(body: Callable[[], object]) -> int:
    """Run a command's body: a `ZooError` becomes its message on stderr (`error: ...` a line) and its exit
    status, Ctrl-C exit status 130; otherwise 0."""
    # Progress lines should reach a log file as they happen, not when a buffer fills.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        body()
    except ZooError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def simple_command(
    cls: type[T], action: Callable[[T], object], argv: Sequence[str] | None, *, prog: str, description: str
) -> int:
    """A command whose options are exactly `cls`: parse, validate, run `action`; returns the exit status."""
    args = options_parser(cls, prog=prog, description=description).parse_args(argv)
    return run_command(lambda: action(build_options(cls, given_values(cls, args), source="command line")))


def dispatch(
    argv: Sequence[str] | None, commands: dict[str, Callable[[list[str]], int]], *, default: str
) -> int:
    """A command with sub-commands (`python -m export check PACKAGE`): a first word that names one runs
    it; anything else goes to the `default` one (`python -m export RUN_DIR --out PACKAGE`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in commands and argv[0] != default:
        return commands[argv[0]](argv[1:])
    return commands[default](argv)
