"""The Python API, for notebooks and scripts: train, resume, predict and export with the same option
objects as the command line (`docs/python-api.md`). Problems raise `base.errors.UserInputError` (or
`export.errors.FailedChecks` for a package that failed its checks) instead of ending the process."""

from __future__ import annotations

from pathlib import Path

from base.cli import build_options
from training.config import TrainingConfig
from training.tasks import TASKS, get_task


def options(task: str, **values) -> TrainingConfig:
    """The validated options of `task` (`segment`, `denoise`, `care`): the command's flags as keyword
    arguments (`patch_size=64`, not `--patch-size 64`), defaults for the rest."""
    return build_options(get_task(task).options, values, source=f"options({task!r})")


def train(config: TrainingConfig) -> Path:
    """Train (and, unless `export=False`, export) a run with these options; returns its run folder."""
    from training.core import train as train_task

    return train_task(get_task(config.task), config)


def resume(run_dir: str | Path, **overrides) -> Path:
    """Continue a stopped or finished run (`epochs=N` extends it); returns its run folder."""
    from training.cli import resume_config
    from training.core import train as train_task
    from training.upgrade import current_config

    run_dir = Path(run_dir)
    task = get_task(current_config(run_dir).get("task"))
    return train_task(task, resume_config(task, run_dir, overrides), resume_dir=run_dir)


def predict(run_dir: str | Path, inputs: list[str | Path], out: str | Path, **values) -> None:
    """Apply a run to image files or folders, writing the task's outputs into `out`; keyword arguments
    are `python -m training.predict`'s options (`tile_size`, `tta`, `checkpoint`, `overwrite`, ...)."""
    from training.predict import PredictOptions
    from training.predict import predict as predict_with

    predict_with(
        build_options(
            PredictOptions, {"run_dir": run_dir, "inputs": inputs, "out": out} | values, source="predict()"
        )
    )


def export(run_dir: str | Path, out: str | Path, **values) -> Path:
    """Export a run folder as a checked bioimage.io package; keyword arguments are `python -m export`'s
    options (`author=[...]`, `name`, `license`, `overwrite`, ...). Returns the package's path."""
    from export.cli import ExportOptions
    from export.cli import export as export_with

    return export_with(
        build_options(ExportOptions, {"run_dir": run_dir, "out": out} | values, source="export()")
    )


__all__ = ["TASKS", "export", "options", "predict", "resume", "train"]
