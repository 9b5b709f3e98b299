"""The registry of tasks: one object per task, by the name its run folders record (`config.json`'s
`task`). Adding a task: a module here with a `training.task.Task` subclass, one entry below, and a thin
entry point (`training/<name>.py`)."""

from __future__ import annotations

from base.errors import UserInputError
from training.task import Task
from training.tasks.care import CareTask
from training.tasks.denoise import DenoiseTask
from training.tasks.segment import SegmentTask

TASKS: dict[str, Task] = {task.name: task for task in (SegmentTask(), DenoiseTask(), CareTask())}


def get_task(name: object, *, source: str = "") -> Task:
    """The registered task `name`; an unknown name is a one-line error listing the known ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        where = f"{source}: " if source else ""
        raise UserInputError(f"{where}unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
