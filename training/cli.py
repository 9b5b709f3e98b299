"""The training commands (`python -m training.segment`, `.denoise`, `.care`): a task's options become
flags through `base.cli`, beside `--config FILE` (the same options as JSON) and `--resume RUN_DIR`.

The Keras backend is chosen first (`--backend`, else the config file's, else the resumed run's, else
`auto`: `base.backend`), before the tasks, and with them Keras, are imported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from base.backend import select_backend
from base.cli import build_options, given_values, options_parser, read_options_file, run_command
from base.errors import UserInputError
from base.run_folder import CONFIG_FILE
from training.config import TrainingConfig

if TYPE_CHECKING:
    from training.task import Task


def training_parser(task: Task) -> argparse.ArgumentParser:
    """The parser of a task's training command: one flag per option, `--config` and `--resume`."""
    parser = options_parser(
        task.options,
        prog=f"python -m training.{task.name}",
        description=task.summary,
        group="options (also accepted as keys of --config)",
    )
    parser.add_argument("--config", type=Path, help="JSON file of options (flags override it)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    return parser


def resume_config(task: Task, run_dir: Path, overrides: dict) -> TrainingConfig:
    """The config to continue `run_dir` with: its own, upgraded to this schema, with `overrides`."""
    from training.runs import resumed_config
    from training.upgrade import current_config

    values = current_config(run_dir)
    if values.get("task") != task.name:
        raise UserInputError(
            f"{run_dir}: a run of task {values.get('task')!r}; resume it with "
            f"python -m training.{values.get('task')} --resume {run_dir}"
        )
    return resumed_config(run_dir, task.options, values, overrides)


def requested_backend(argv: list[str] | None) -> str:
    """The backend a training command line asks for, read before its full parse (which needs the tasks,
    and so Keras): `--backend`, else the `backend` of `--config`, else that of the run to `--resume`,
    else auto. Files that cannot be read count as silent here; the full parse reports them."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--backend", "--config", "--resume"):
        parser.add_argument(flag)
    known, _ = parser.parse_known_args(argv)
    if known.backend:
        return known.backend
    for path in (known.config, known.resume and Path(known.resume) / CONFIG_FILE):
        try:
            backend = json.loads(Path(path).read_text()).get("backend") if path else None
        except (OSError, ValueError, AttributeError):
            backend = None
        if isinstance(backend, str):
            return backend
    return "auto"


def task_main(name: str, argv: list[str] | None = None) -> int:
    """A training command: choose the backend, parse, then start a run or resume one; returns the exit
    status."""

    def body():
        select_backend(requested_backend(argv))  # before the tasks import Keras
        from training.core import train
        from training.tasks import get_task

        task = get_task(name)
        args = training_parser(task).parse_args(argv)
        values = read_options_file(args.config) if args.config else {}
        values |= given_values(task.options, args)
        if args.resume is not None:
            config = resume_config(task, args.resume, values)
        else:
            source = f"{args.config} + command line" if args.config else "command line"
            config = build_options(task.options, values, source=source)
        train(task, config, resume_dir=args.resume)  # records the backend it runs on

    return run_command(body)
