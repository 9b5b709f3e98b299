"""Faults: training processes killed at random points, Ctrl-C, a full disk and a read-only folder.

Kills are real SIGKILLs of real training processes. Some land at random times; others are aimed with a
small wrapper (`KILLER` below) that patches `os.replace` or `zipfile.ZipFile.writestr/write` in the child
and kills the child at the N-th call: after a checkpoint's temporary file is written but before it is
renamed, or half-way through writing a checkpoint or the package zip. After every kill, every file in the
run folder must be complete, and `--resume` must finish the run with each epoch exactly once.

The full disk and the read-only folder are small tmpfs mounts, made where `mount` works (as root) and
skipped elsewhere; a write refused by the file-size limit (RLIMIT_FSIZE) takes the same failure path of
the atomic writes without root or mount, so that path is tested on every machine.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import training.losses  # noqa: F401  (registers the loss the checkpoints were compiled with)
import zoo

KILLER = r"""
import os, signal, sys, zipfile
mode, n = os.environ["KILL_MODE"], int(os.environ["KILL_AT"])
calls = [0]

def counting(real):
    def wrapper(*args, **kwargs):
        if calls[0] == n:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return real(*args, **kwargs)
    return wrapper

if mode == "replace":
    os.replace = counting(os.replace)
elif mode == "zipwrite":
    zipfile.ZipFile.writestr = counting(zipfile.ZipFile.writestr)
    zipfile.ZipFile.write = counting(zipfile.ZipFile.write)
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
import runpy
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _history_epochs(run_dir: Path) -> list[int]:
    with (run_dir / "history.csv").open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def _assert_nothing_corrupt(run_dir: Path, steps_per_epoch: int) -> int:
    """Every visible file of the run folder is whole; returns the epochs held by last.keras."""
    epochs_done = 0
    if (run_dir / "last.keras").exists():
        model = keras.models.load_model(run_dir / "last.keras")
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        assert iterations % steps_per_epoch == 0, "last.keras holds part of an epoch"
        epochs_done = iterations // steps_per_epoch
    if (run_dir / "best.keras").exists():
        keras.models.load_model(run_dir / "best.keras", compile=False)
    for name in ("state.json", "config.json", "metrics.json", "split.json", "postprocessing.json"):
        if (run_dir / name).exists():
            json.loads((run_dir / name).read_text())
    if (run_dir / "history.csv").exists():
        epochs = _history_epochs(run_dir)
        assert epochs == list(range(1, len(epochs) + 1)), f"gap or duplicate in history: {epochs}"
        # history.csv is written before last.keras (the commit point), so it may be one epoch ahead.
        assert len(epochs) >= epochs_done
    if (run_dir / "sample.npy").exists():
        np.load(run_dir / "sample.npy")
    if (run_dir / "package.zip").exists():
        with zipfile.ZipFile(run_dir / "package.zip") as archive:
            assert archive.testzip() is None
            assert "rdf.yaml" in archive.namelist()
    return epochs_done


def _run(argv: list[str], *, kill: tuple[str, int] | None = None, kill_after: float | None = None, log: Path):
    if kill is None:
        command = [sys.executable, "-m", *argv]
        env = ENV
    else:
        command = [sys.executable, "-c", KILLER, *argv]
        env = {**ENV, "KILL_MODE": kill[0], "KILL_AT": str(kill[1])}
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            process.wait(timeout=kill_after if kill_after is not None else 600)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the process and any export check it started
            process.wait()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return process.returncode


@pytest.mark.slow  # about 3 minutes on 2 cores
def test_twelve_kills_across_epochs_checkpoint_writes_and_export_lose_nothing(tiny_segment_flags, tmp_path):
    rng = random.Random(20261126)
    steps, epochs, wanted = 3, 8, 12
    out = tmp_path / "runs"
    run_dir = out / "chaos"
    log = tmp_path / "chaos.log"
    flags = [*tiny_segment_flags, "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--export"]
    start = ["training.segment", *flags, "--out-dir", str(out), "--run-name", "chaos"]
    resume = ["training.segment", "--resume", str(run_dir)]

    # A run folder is resumable once its first epoch is checkpointed (a kill before that leaves nothing
    # to lose): the first start is killed at a random moment after that.
    with log.open("ab") as handle:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", *start], stdout=handle, stderr=subprocess.STDOUT, env=ENV
        )
        deadline = time.monotonic() + 300
        while not (run_dir / "last.keras").exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        # Start-up and one epoch: the unit of the timed kills below, so that they reach as far on a
        # loaded machine (other tests beside this one) as on an idle one.
        first_epoch = time.monotonic() - started
        time.sleep(rng.uniform(0.0, 1.0))
        process.kill()
        process.wait()
    kills, outcomes = 1, []
    # At least `wanted` kills, and more (up to twice as many) until some have hit the export.
    while kills < wanted or ("export" not in {phase for _, phase in outcomes} and kills < 2 * wanted):
        before = _assert_nothing_corrupt(run_dir, steps)
        mode = ("replace", "zipwrite", "time")[kills % 3]
        if mode == "time":  # anywhere: start-up, an epoch, a checkpoint, evaluation, export and its check
            code = _run(resume, kill_after=rng.uniform(0.5, 1.5) * first_epoch, log=log)
        else:  # aimed: before a rename, or half-way through writing a zip (checkpoint or package)
            code = _run(resume, kill=(mode, rng.randrange(6)), log=log)
        assert code == -signal.SIGKILL, f"not killed ({code}) after {outcomes}:\n" + log.read_text()[-3000:]
        kills += 1
        after = _assert_nothing_corrupt(run_dir, steps)
        assert after >= before
        outcomes.append((mode, "export" if before == epochs else "training"))
    assert {phase for _, phase in outcomes} == {"training", "export"}, outcomes
    print(f"{kills} kills (the first during epochs):", outcomes)

    assert _run(resume, log=log) == 0, log.read_text()[-3000:]
    assert _assert_nothing_corrupt(run_dir, steps) == epochs
    assert _history_epochs(run_dir) == list(range(1, epochs + 1))
    assert (run_dir / "metrics.json").is_file() and (run_dir / "package.zip").is_file()
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_ctrl_c_stops_after_the_epoch_in_progress_with_its_checkpoint(tiny_segment_flags, tmp_path):
    out = tmp_path / "runs"
    run_dir = out / "interrupted"
    steps = 20
    argv = [
        *tiny_segment_flags,
        "--epochs",
        "50",
        "--steps-per-epoch",
        str(steps),
        "--out-dir",
        str(out),
        "--run-name",
        "interrupted",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "training.segment", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "last.keras").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output[-2000:]
    assert "interrupt: stopping after this epoch" in output
    done = _assert_nothing_corrupt(run_dir, steps)
    assert 1 <= done < 50
    assert _history_epochs(run_dir) == list(range(1, done + 1))
    assert json.loads((run_dir / "state.json").read_text())["epochs_done"] == done
    assert f"stopped after epoch {done} of 50" in output and "--resume" in output
    assert not (run_dir / "metrics.json").exists()

    from training.segment import main

    assert main(["--resume", str(run_dir), "--epochs", str(done + 1)]) == 0
    assert _history_epochs(run_dir) == list(range(1, done + 2))


# === A full disk and a read-only folder ===


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount; skipped otherwise); unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount failed'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` until only about `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    with (disk / "filler").open("wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_a_full_disk_stops_training_with_a_clear_error_and_no_half_written_file(
    small_disk, tiny_segment_flags, capsys
):
    from training.segment import main

    _fill(small_disk, leave=24 * 1024)  # room for the run's small files, not for a checkpoint
    argv = [*tiny_segment_flags, "--out-dir", str(small_disk / "runs"), "--run-name", "full"]
    assert main(argv) == 2
    (line,) = _error_lines(capsys)
    assert "No space left on device" in line and str(small_disk / "runs" / "full") in line
    # Nothing could be resumed, so the run folder is gone; no temporary file anywhere.
    leftovers = [p for p in small_disk.rglob("*") if p.name != "filler" and p.is_file()]
    assert leftovers == []


def test_a_checkpoint_or_history_write_on_a_full_disk_keeps_the_previous_version(small_disk):
    from base.errors import UserInputError
    from training.callbacks import save_model_atomic
    from training.files import write_atomic

    model = zoo.build_model("unet", depth=1, base_filters=4)
    save_model_atomic(model, small_disk / "last.keras")
    write_atomic(small_disk / "history.csv", "epoch,loss\n1,0.5\n")
    before = {p.name: p.read_bytes() for p in small_disk.iterdir()}
    _fill(small_disk, leave=4 * 1024)
    bigger = zoo.build_model("unet", depth=2, base_filters=8)
    with pytest.raises(
        UserInputError, match=r"last\.keras: cannot write it \(No space left on device\)"
    ) as caught:
        save_model_atomic(bigger, small_disk / "last.keras")
    assert "earlier version of it is unchanged" in str(caught.value)
    with pytest.raises(UserInputError, match=r"history\.csv: cannot write it"):
        write_atomic(small_disk / "history.csv", "x" * 100_000)
    after = {p.name: p.read_bytes() for p in small_disk.iterdir() if p.name != "filler"}
    assert after == before  # old versions intact, no temporary file left


def test_a_full_disk_stops_export_and_leaves_no_partial_package(
    small_disk, tiny_segment_flags, tmp_path, capsys
):
    from export.__main__ import main as export_main
    from training.segment import main

    assert main([*tiny_segment_flags, "--out-dir", str(tmp_path / "runs"), "--run-name", "r"]) == 0
    capsys.readouterr()
    _fill(small_disk, leave=16 * 1024)
    assert export_main([str(tmp_path / "runs" / "r"), "--out", str(small_disk / "model.zip")]) == 2
    (line,) = _error_lines(capsys)
    assert "model.zip: cannot write it" in line and "No space left on device" in line
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_read_only_folder_is_refused_clearly(small_disk, tiny_segment_flags, tmp_path, capsys):
    from training.predict import main as predict_main
    from training.segment import main

    assert main([*tiny_segment_flags, "--out-dir", str(tmp_path / "runs"), "--run-name", "r"]) == 0
    (small_disk / "predictions").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    capsys.readouterr()

    assert main([*tiny_segment_flags, "--out-dir", str(small_disk / "runs")]) == 2
    assert "Read-only file system" in _error_lines(capsys)[0]

    image = next((tmp_path / "runs" / "r" / "data").glob("**/images/*.tif"), None)
    if image is None:
        image = next(
            Path(json.loads((tmp_path / "runs" / "r" / "split.json").read_text())["data_dir"]).rglob("*.tif")
        )
    assert (
        predict_main([str(tmp_path / "runs" / "r"), str(image), "--out", str(small_disk / "predictions")])
        == 2
    )
    errors = _error_lines(capsys)
    assert errors and all("Read-only file system" in e for e in errors)
    assert list((small_disk / "predictions").iterdir()) == []


# === A write the system refuses, without mount ===


@pytest.fixture
def file_size_limit():
    """`limit(n)` caps the size of every file this process writes at n bytes (RLIMIT_FSIZE: a longer write
    fails with EFBIG, as a full disk fails with ENOSPC, and SIGXFSZ is ignored so that it is an error, not
    a kill). Needs no root and no mount, so the failure paths of atomic writes are tested everywhere; the
    limit and the signal's handler are restored afterwards."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_a_checkpoint_or_history_write_the_system_refuses_keeps_the_previous_version(
    tmp_path, file_size_limit
):
    """A refused write (here: past the file-size limit) is a one-line error naming the file and the
    system's reason; the previous checkpoint and history stay as they were, and no temporary is left."""
    from base.errors import UserInputError
    from training.callbacks import save_model_atomic
    from training.files import write_atomic

    small = zoo.build_model("unet", depth=1, base_filters=4)
    bigger = zoo.build_model("unet", depth=2, base_filters=8)
    save_model_atomic(small, tmp_path / "last.keras")
    write_atomic(tmp_path / "history.csv", "epoch,loss\n1,0.5\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    file_size_limit(len(before["last.keras"]) + 16 * 1024)  # room for the first checkpoint, not the next
    with pytest.raises(UserInputError, match=r"last\.keras: cannot write it \(File too large\)") as caught:
        save_model_atomic(bigger, tmp_path / "last.keras")
    assert "earlier version of it is unchanged" in str(caught.value)
    with pytest.raises(UserInputError, match=r"history\.csv: cannot write it \(File too large\)"):
        write_atomic(tmp_path / "history.csv", "x" * 1_000_000)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
