"""Versioned run folders: config.json says which schema wrote it; older folders are upgraded (by resume,
predict and `python -m training.upgrade`) or, by export, refused with what to do; newer ones are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from base.run_folder import CONFIG_FILE, DECLARATION_FILE, SCHEMA_KEY, SCHEMA_VERSION
from export.__main__ import main as export_main
from training.predict import main as predict_main
from training.segment import main as segment_main
from training.upgrade import main as upgrade_main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_segment_flags) -> Path:
    out = tmp_path_factory.mktemp("schema")
    assert segment_main([*tiny_segment_flags, "--out-dir", str(out), "--run-name", "run"]) == 0
    return out / "run"


def _copy_with_schema(run: Path, tmp_path: Path, version: int | None) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    if version is None:  # as written before schemas were recorded
        config.pop(SCHEMA_KEY)
        (copy / DECLARATION_FILE).unlink()
    else:
        config[SCHEMA_KEY] = version
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    return copy


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_a_new_run_records_the_current_schema(finished_run):
    assert json.loads((finished_run / CONFIG_FILE).read_text())[SCHEMA_KEY] == SCHEMA_VERSION


def test_export_refuses_an_older_run_folder_and_says_how_to_upgrade_it(finished_run, tmp_path, capsys):
    run = _copy_with_schema(finished_run, tmp_path, None)
    assert export_main([str(run), "--out", str(tmp_path / "p.zip")]) == 2
    (error,) = _errors(capsys)
    assert "schema 1" in error and f"python -m training.upgrade {run}" in error
    assert not (tmp_path / "p.zip").exists()


def test_upgrade_writes_the_declaration_the_run_would_have_written(finished_run, tmp_path, capsys):
    run = _copy_with_schema(finished_run, tmp_path, None)
    assert upgrade_main([str(run)]) == 0
    assert "from schema 1 to 2" in capsys.readouterr().out
    assert json.loads((run / CONFIG_FILE).read_text())[SCHEMA_KEY] == SCHEMA_VERSION
    upgraded = json.loads((run / DECLARATION_FILE).read_text())
    assert upgraded == json.loads((finished_run / DECLARATION_FILE).read_text())


def test_redeclare_gives_a_run_declared_by_an_older_version_what_its_task_declares_now(
    finished_run, tmp_path, capsys
):
    run = _copy_with_schema(finished_run, tmp_path, SCHEMA_VERSION)
    declaration = json.loads((run / DECLARATION_FILE).read_text())
    del declaration["instances"]  # as declared before segmentation packages carried the ImageJ macro
    (run / DECLARATION_FILE).write_text(json.dumps(declaration))
    assert upgrade_main([str(run), "--redeclare"]) == 0
    assert "wrote declaration.json anew" in capsys.readouterr().out
    assert json.loads((run / DECLARATION_FILE).read_text()) == json.loads(
        (finished_run / DECLARATION_FILE).read_text()
    )


def test_predict_upgrades_an_older_run_folder_by_itself(finished_run, tiny_segment_data, tmp_path, capsys):
    run = _copy_with_schema(finished_run, tmp_path, None)
    image = next((tiny_segment_data / "images").iterdir())
    assert predict_main([str(run), str(image), "--out", str(tmp_path / "out"), "--precision", "float32"]) == 0
    assert "upgraded the run folder from schema 1" in capsys.readouterr().out
    assert (tmp_path / "out" / f"{image.stem}_labels.tif").is_file()
    assert (run / DECLARATION_FILE).is_file()


@pytest.mark.parametrize("command", ["predict", "resume", "export"])
def test_a_newer_run_folder_is_refused_by_every_command(
    finished_run, tiny_segment_data, tmp_path, capsys, command
):
    run = _copy_with_schema(finished_run, tmp_path, SCHEMA_VERSION + 1)
    before = sorted(p.name for p in run.iterdir())
    argv = {
        "predict": lambda: predict_main(
            [str(run), str(tiny_segment_data / "images"), "--out", str(tmp_path / "o")]
        ),
        "resume": lambda: segment_main(["--resume", str(run), "--epochs", "3"]),
        "export": lambda: export_main([str(run), "--out", str(tmp_path / "p.zip")]),
    }[command]
    assert argv() == 2
    (error,) = _errors(capsys)
    assert f"schema {SCHEMA_VERSION + 1}" in error and "newer" in error
    assert sorted(p.name for p in run.iterdir()) == before
