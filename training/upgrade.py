"""`python -m training.upgrade RUN_DIR`: bring a run folder written by an older version of this project to
the current schema (`base.run_folder.SCHEMA_VERSION`), so it can be resumed, predicted from and exported.

Schema 1 to 2: config.json gains `schema_version`, and a finished run gains declaration.json (what its
package declares), written by its task from the run's own files. Resuming and predicting upgrade a run
folder by themselves; export, which never imports training code, asks for this command.

`--redeclare` also writes declaration.json anew from the run's files, for a run declared by an older
version of its task (a segmentation run declared before its packages carried the ImageJ macro).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from base.cli import build_options, simple_command
from base.errors import UserInputError
from base.run_folder import (
    CONFIG_FILE,
    DECLARATION_FILE,
    METRICS_FILE,
    SAMPLE_FILE,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    check_schema,
    read_record,
    schema_version,
)
from training.files import write_json
from training.tasks import get_task


def current_config(run_dir: Path) -> dict:
    """The config.json values of a run folder, after upgrading the folder to this schema if it is older;
    a folder of a newer schema is refused."""
    if not run_dir.is_dir():
        raise UserInputError(f"{run_dir}: no such run folder")
    values = read_record(run_dir / CONFIG_FILE, "the run's options")
    version = schema_version(values)
    if version >= SCHEMA_VERSION:
        check_schema(run_dir, values)
        return values
    task = get_task(values.get("task"), source=str(run_dir / CONFIG_FILE))
    config = build_options(
        task.options, values | {SCHEMA_KEY: SCHEMA_VERSION}, source=str(run_dir / CONFIG_FILE)
    )
    if (run_dir / METRICS_FILE).is_file() and (run_dir / SAMPLE_FILE).is_file():
        write_json(run_dir / DECLARATION_FILE, task.declare(run_dir, config).model_dump(mode="json"))
    write_json(run_dir / CONFIG_FILE, config.model_dump(mode="json"))
    print(f"{run_dir}: upgraded the run folder from schema {version} to {SCHEMA_VERSION}")
    return config.model_dump(mode="json")


def redeclare(run_dir: Path) -> None:
    """Write a finished run's declaration.json anew, as its task declares it today."""
    values = current_config(run_dir)
    task = get_task(values.get("task"), source=str(run_dir / CONFIG_FILE))
    config = build_options(task.options, values, source=str(run_dir / CONFIG_FILE))
    if not ((run_dir / METRICS_FILE).is_file() and (run_dir / SAMPLE_FILE).is_file()):
        raise UserInputError(f"{run_dir}: the run has not finished (no {METRICS_FILE}): nothing to declare")
    write_json(run_dir / DECLARATION_FILE, task.declare(run_dir, config).model_dump(mode="json"))
    print(f"{run_dir}: wrote {DECLARATION_FILE} anew")


class UpgradeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: Path = Field(description="run folder to upgrade", json_schema_extra={"positional": True})
    redeclare: bool = Field(
        False, description="also write declaration.json anew (a run declared by an older version)"
    )


def _upgrade(options: UpgradeOptions) -> None:
    if options.redeclare:
        redeclare(options.run_dir)
    else:
        current_config(options.run_dir)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.upgrade`; returns the exit status."""
    return simple_command(
        UpgradeOptions,
        _upgrade,
        argv,
        prog="python -m training.upgrade",
        description=__doc__,
    )


if __name__ == "__main__":
    sys.exit(main())
