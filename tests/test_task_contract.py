"""The task contract: every registered task is complete, and what is task-specific stays in its module.

These tests loop over the registry, so a new task gets them for free; the source scans keep task
branches and run-folder file names from creeping back into the shared code.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import base.run_folder
from base.cli import cli_fields
from training.task import Task
from training.tasks import TASKS, get_task

ROOT = Path(__file__).parents[1]
SHARED_CODE = [
    path
    for folder in ("base", "export", "training", "zoo")
    for path in sorted((ROOT / folder).rglob("*.py"))
    if "tasks" not in path.relative_to(ROOT).parts
]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_implements_the_whole_contract(name):
    task = TASKS[name]
    assert task.name == name
    assert task.options.model_fields["task"].default == name
    assert task.results_checkpoint in base.run_folder.CHECKPOINTS
    for method in vars(Task):
        if (
            callable(getattr(Task, method))
            and not method.startswith("_")
            and method not in ("prediction_config", "resolve")
        ):
            assert getattr(type(task), method) is not getattr(Task, method), f"{name} lacks {method}"
    entry = importlib.import_module(f"training.{name}")
    assert callable(entry.main)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_help_shows_each_default_once_and_no_measurements(name, capsys):
    entry = importlib.import_module(f"training.{name}")
    with pytest.raises(SystemExit) as stop:
        entry.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[default:" not in text and "(default: None)" not in text
    learning_rate = TASKS[name].options.model_fields["learning_rate"].default
    assert text.count("initial (peak, with warm-up) learning rate") <= 1
    assert text.count(f"(default: {learning_rate})") >= 1
    assert not re.search(r"\d\s*(dB|ms)\b", text), "figures belong in docs/benchmarks.md"
    for field in cli_fields(TASKS[name].options):
        assert f"--{field.replace('_', '-')}" in text


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(Exception, match="known tasks: segment, denoise, care"):
        get_task("classify")


def _compared_strings(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                    found.append(operand.value)
    return found


def test_no_code_outside_the_task_modules_branches_on_a_task_name():
    branches = [
        f"{path.relative_to(ROOT)}: {value!r}"
        for path in SHARED_CODE
        for value in _compared_strings(ast.parse(path.read_text()))
        if value in TASKS
    ]
    assert not branches


def test_run_folder_file_names_are_defined_only_in_base_run_folder():
    names = {
        value
        for key, value in vars(base.run_folder).items()
        if key.isupper() and isinstance(value, str) and "." in value
    }
    assert {"config.json", "best.keras", "last.keras", "declaration.json", "package.zip"} <= names
    # export.check reads the package's own files and the `.keras` zip's config.json, not a run folder.
    defined_again = [
        f"{path.relative_to(ROOT)}: {node.value!r}"
        for path in [*SHARED_CODE, *sorted((ROOT / "training" / "tasks").glob("*.py"))]
        if path not in (Path(base.run_folder.__file__), ROOT / "export" / "check.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert not defined_again


@pytest.mark.parametrize("module", ["training.predict", "training.upgrade", "export.cli", "export.check"])
def test_other_commands_help_marks_required_options_and_no_placeholders(module, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "PydanticUndefined" not in text and "(default: None)" not in text
    if module == "training.predict":
        assert "output folder (created if missing) (required)" in text
