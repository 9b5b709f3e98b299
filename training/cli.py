"""The training commands (`python -m training.segment`, `.denoise`, `.care`): a task's options become
flags through `base.cli`, beside `--config FILE` (the same options as JSON) and `--resume RUN_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from base.cli import build_options, given_values, options_parser, read_options_file, run_command
from base.errors import UserInputError
from training.config import TrainingConfig
from training.task import Task
from training.tasks import get_task


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


def task_main(name: str, argv: list[str] | None = None) -> int:
    """A training command: parse, then start a run or resume one; returns the exit status."""
    task = get_task(name)
    args = training_parser(task).parse_args(argv)

    def body():
        from training.core import train

        values = read_options_file(args.config) if args.config else {}
        values |= given_values(task.options, args)
        if args.resume is not None:
            config = resume_config(task, args.resume, values)
        else:
            source = f"{args.config} + command line" if args.config else "command line"
            config = build_options(task.options, values, source=source)
        train(task, config, resume_dir=args.resume)

    return run_command(body)
