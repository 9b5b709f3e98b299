"""docs/python-api.md: every example on the page runs, in order, in an empty folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).parents[1] / "docs" / "python-api.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_the_page_has_examples_of_each_call():
    code = "\n".join(_examples())
    for call in ("api.options(", "api.train(", "api.resume(", "api.predict(", "api.export("):
        assert call in code


@pytest.mark.slow
def test_every_example_of_the_python_api_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, example in enumerate(_examples()):
        try:
            exec(compile(example, f"{PAGE.name} example {index + 1}", "exec"), namespace)
        except Exception as error:  # name the example that failed
            raise AssertionError(f"example {index + 1} of {PAGE.name} failed:\n{example}") from error
    out = capsys.readouterr().out
    assert (tmp_path / "care-model.zip").is_file()
    assert (tmp_path / "predictions" / "new_image_restored.tif").is_file()
    assert list((tmp_path / "cells").glob("*_labels.tif"))
    assert "must be a multiple of 2**depth" in out
