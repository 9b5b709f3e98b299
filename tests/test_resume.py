"""Tests of resuming a segmentation run: a run interrupted and resumed must end where an uninterrupted run
ends (same patches, optimizer state and schedule counters), whether it was stopped cleanly, killed with
SIGKILL, or crashed between two of the files written at the end of an epoch.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from training.segment import main

# With a patience of 2 the tiny run reduces the learning rate at the end of epoch 3 (val_loss rises after
# epoch 1), so a run split after epoch 2 only matches if the plateau counters survive the resume.
PLATEAU = ("--plateau-patience", "2")


def _history(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "history.csv").open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _epochs(run_dir: Path) -> list[int]:
    return [int(row["epoch"]) for row in _history(run_dir)]


def _column(run_dir: Path, key: str) -> np.ndarray:
    return np.array([row[key] for row in _history(run_dir)])


def _weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_segment_flags: tuple[str, ...]) -> Path:
    """Four epochs in one go."""
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    assert (
        main([*tiny_segment_flags, *PLATEAU, "--out-dir", str(out_dir), "--run-name", "A", "--epochs", "4"])
        == 0
    )
    return out_dir / "A"


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory, tiny_segment_flags: tuple[str, ...]) -> Path:
    """The first two of those four epochs, stopped there (shared: copy it before resuming it)."""
    out_dir = tmp_path_factory.mktemp("two-epochs")
    assert (
        main([*tiny_segment_flags, *PLATEAU, "--out-dir", str(out_dir), "--run-name", "two", "--epochs", "2"])
        == 0
    )
    return out_dir / "two"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory, two_epochs: Path) -> Path:
    """Two epochs, then resumed to four."""
    run_dir = Path(shutil.copytree(two_epochs, tmp_path_factory.mktemp("resumed") / "B"))
    assert main(["--resume", str(run_dir), "--epochs", "4"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def crashed_before_commit(tmp_path_factory: pytest.TempPathFactory, two_epochs: Path) -> Path:
    """Four epochs, with a crash after epoch 3 wrote history.csv, best.keras and state.json but before it
    replaced last.keras (simulated by putting the epoch-2 last.keras back), then resumed."""
    run_dir = Path(shutil.copytree(two_epochs, tmp_path_factory.mktemp("crashed") / "C"))
    assert main(["--resume", str(run_dir), "--epochs", "3"]) == 0
    shutil.copy(two_epochs / "last.keras", run_dir / "last.keras")
    assert _state(run_dir)["epochs_done"] == 3 and _epochs(run_dir) == [1, 2, 3]
    assert main(["--resume", str(run_dir), "--epochs", "4"]) == 0
    return run_dir


# === Stopped after epoch 2, resumed ===


def test_resumed_run_has_every_epoch_once(resumed: Path) -> None:
    assert _epochs(resumed) == [1, 2, 3, 4]
    assert _state(resumed)["epochs_done"] == 4


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(
    uninterrupted: Path, resumed: Path
) -> None:
    for expected, actual in zip(
        _weights(uninterrupted / "last.keras"), _weights(resumed / "last.keras"), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_resumed_run_has_the_loss_and_learning_rate_curves_of_an_uninterrupted_run(
    uninterrupted: Path, resumed: Path
) -> None:
    learning_rates = _column(uninterrupted, "learning_rate")
    assert learning_rates[-1] < learning_rates[0], "precondition: the plateau reduction did not happen"
    np.testing.assert_array_equal(_column(resumed, "learning_rate"), learning_rates)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(_column(resumed, key), _column(uninterrupted, key), rtol=1e-5)


# === Crash between state.json and last.keras (the commit point) ===


def test_crash_before_the_commit_point_leaves_no_gap_or_duplicate(crashed_before_commit: Path) -> None:
    assert _epochs(crashed_before_commit) == [1, 2, 3, 4]
    assert _state(crashed_before_commit)["epochs_done"] == 4
    assert (crashed_before_commit / "metrics.json").is_file()


def test_crash_before_the_commit_point_resumes_like_an_uninterrupted_run(
    uninterrupted: Path, crashed_before_commit: Path
) -> None:
    """The redone epoch 3 must see the plateau counters of epoch 2, not lose them because state.json was
    already a step ahead of last.keras."""
    np.testing.assert_array_equal(
        _column(crashed_before_commit, "learning_rate"), _column(uninterrupted, "learning_rate")
    )
    for expected, actual in zip(
        _weights(uninterrupted / "last.keras"), _weights(crashed_before_commit / "last.keras"), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


# === SIGKILL ===


def _wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training exited with {process.returncode} before epoch {epochs} was done")
        state_file = run_dir / "state.json"
        if (run_dir / "last.keras").is_file() and state_file.is_file():
            if json.loads(state_file.read_text())["epochs_done"] >= epochs:
                return
        time.sleep(0.05)
    pytest.fail(f"epoch {epochs} not done after {timeout} s")


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_every_epoch_once(
    tiny_segment_flags: tuple[str, ...], tmp_path: Path
) -> None:
    epochs = 10
    run_dir = tmp_path / "runs" / "killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [
        sys.executable,
        "-m",
        "training.segment",
        *tiny_segment_flags,
        "--out-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "killed",
        "--epochs",
        str(epochs),
        "--steps-per-epoch",
        "30",
    ]
    with (tmp_path / "first.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_for_epochs(run_dir, 2, process, timeout=300)
            time.sleep(0.5)  # into epoch 3 or later
            assert process.poll() is None, "the run finished before it was killed: give it more epochs"
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == -signal.SIGKILL
    assert _state(run_dir)["epochs_done"] < epochs
    assert not (run_dir / "metrics.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "training.segment", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _epochs(run_dir) == list(range(1, epochs + 1))
    assert _state(run_dir)["epochs_done"] == epochs
    assert (run_dir / "metrics.json").is_file()
