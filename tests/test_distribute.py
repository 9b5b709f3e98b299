"""Tests of multi-replica training: `--distribute mirrored` on a CPU split into two logical devices, and
`--distribute multiworker` on two worker processes on loopback.

Logical devices and collective ops must be configured before TensorFlow initialises, so every run happens
in a subprocess. Without batch normalisation (whose statistics are per replica) a distributed run on a
global batch must follow the same loss curve as a single-device run on that batch.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import tensorflow_only

from base.errors import UserInputError
from training.multiworker import ClusterTask, cluster_task

pytestmark = tensorflow_only

# Runs `training.segment.main` on each argument list given as JSON, with the CPU split in two; exits with
# the first non-zero exit status.
_ON_TWO_CPUS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from training.segment import main
    for argv in json.loads(sys.argv[1]):
        code = main(argv)
        if code:
            sys.exit(code)
""")


def _on_two_cpus(*argvs: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", _ON_TWO_CPUS, json.dumps(argvs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _column(run_dir: Path, key: str) -> np.ndarray:
    with (run_dir / "history.csv").open(newline="") as handle:
        return np.array([float(row[key]) for row in csv.DictReader(handle)])


@pytest.fixture(scope="module")
def mirrored_and_single(
    tmp_path_factory: pytest.TempPathFactory, tiny_segment_flags: tuple[str, ...]
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A mirrored run ("mirrored") and a single-device run ("single") of three epochs on a global batch of 4,
    without batch normalisation; the finished process and the folder holding both runs."""
    out_dir = tmp_path_factory.mktemp("distribute")
    flags = [
        *tiny_segment_flags,
        "--out-dir",
        str(out_dir),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--no-batch-norm",
    ]
    process = _on_two_cpus(
        [*flags, "--distribute", "mirrored", "--run-name", "mirrored"],
        [*flags, "--distribute", "none", "--run-name", "single"],
    )
    return process, out_dir


def test_mirrored_run_trains_on_two_replicas_and_completes(
    mirrored_and_single: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    process, out_dir = mirrored_and_single
    assert process.returncode == 0, process.stderr[-3000:]
    assert ", 2 replica(s)" in process.stdout
    assert ", 1 replica(s)" in process.stdout  # the --distribute none run beside it
    assert (out_dir / "mirrored" / "metrics.json").is_file()


def test_mirrored_losses_match_a_single_device_run(
    mirrored_and_single: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    process, out_dir = mirrored_and_single
    assert process.returncode == 0, process.stderr[-3000:]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(
            _column(out_dir / "mirrored", key), _column(out_dir / "single", key), rtol=1e-3
        )


def test_batch_size_not_divisible_by_the_replicas_is_refused(
    tiny_segment_flags: tuple[str, ...], tmp_path: Path
) -> None:
    out_dir = tmp_path / "runs"

    process = _on_two_cpus(
        [*tiny_segment_flags, "--out-dir", str(out_dir), "--batch-size", "3", "--distribute", "mirrored"]
    )

    assert process.returncode == 2, process.stderr[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert any("batch_size 3" in line and "2 replicas" in line for line in errors), errors
    assert not out_dir.exists() or not any(out_dir.iterdir())


# === Several machines: MultiWorkerMirroredStrategy over two local worker processes on loopback ===


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _on_two_workers(task: str, flags: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """`python -m training.<task>` with `flags --distribute multiworker` as the two workers of a cluster on
    loopback (worker 0 is the chief); the finished processes, chief first."""
    ports = _free_ports(2)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", f"training.{task}", *flags, "--distribute", "multiworker"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": _tf_config(ports, index)},
        )
        for index in range(2)
    ]
    finished = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return finished


def _single(task: str, flags: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"training.{task}", *flags, "--distribute", "none"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )


def _assert_same_curves(run: Path, reference: Path) -> None:
    assert len(_column(run, "loss")) == len(_column(reference, "loss"))
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(_column(run, key), _column(reference, key), rtol=1e-4)


@pytest.mark.slow
def test_two_workers_follow_the_single_device_loss_curve_and_only_the_chief_writes(
    tmp_path: Path, tiny_segment_flags: tuple[str, ...]
) -> None:
    # 5 validation patches in batches of 4: the last batch of 1 leaves one replica without data.
    flags = [*tiny_segment_flags, "--out-dir", str(tmp_path), "--epochs", "3", "--batch-size", "4"]
    flags += ["--val-patches", "5", "--no-batch-norm"]

    chief, worker = _on_two_workers("segment", [*flags, "--run-name", "workers"])
    single = _single("segment", [*flags, "--run-name", "single"])

    for process in (chief, worker, single):
        assert process.returncode == 0, process.stderr[-3000:]
    assert ", 2 replica(s)" in chief.stdout and ", 2 replica(s)" in worker.stdout
    _assert_same_curves(tmp_path / "workers", tmp_path / "single")
    assert (tmp_path / "workers" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single", "workers"]
    scratch = Path(worker.stdout.split("training beside the chief in ")[1].split()[0])
    assert not scratch.exists()


@pytest.mark.slow
def test_two_workers_resume_a_denoising_run_to_the_single_device_curve(tmp_path: Path) -> None:
    flags = ["--out-dir", str(tmp_path), "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size", "32"]
    flags += ["--base-filters", "4", "--depth", "1", "--val-patches", "4", "--mask-fraction", "0.01"]
    flags += ["--warmup-epochs", "0", "--no-export", "--no-batch-norm"]

    first = _on_two_workers("denoise", [*flags, "--epochs", "2", "--run-name", "workers"])
    resumed = _on_two_workers("denoise", ["--resume", str(tmp_path / "workers"), "--epochs", "3"])
    single = _single("denoise", [*flags, "--epochs", "3", "--run-name", "single"])

    for process in (*first, *resumed, single):
        assert process.returncode == 0, process.stderr[-3000:]
    assert "Epoch 3/3" in resumed[0].stdout and "Epoch 1/3" not in resumed[0].stdout
    _assert_same_curves(tmp_path / "workers", tmp_path / "single")
    assert (tmp_path / "workers" / "denoised").is_dir()


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "--distribute multiworker needs TF_CONFIG"),
        ("{not json", "TF_CONFIG: not a cluster and task description"),
        (
            '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
            "worker 3 is not",
        ),
        ('{"cluster": {"ps": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}', "only tasks of type"),
    ],
)
def test_missing_or_malformed_tf_config_is_refused(
    tmp_path: Path, tiny_segment_flags: tuple[str, ...], tf_config: str | None, message: str
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    out_dir = tmp_path / "runs"

    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.segment",
            *tiny_segment_flags,
            "--out-dir",
            str(out_dir),
            "--distribute",
            "multiworker",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert process.returncode == 2, process.stderr[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], process.stderr[-3000:]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_the_chief_is_the_chief_task_else_worker_zero() -> None:
    def task(cluster: dict, kind: str, index: int) -> ClusterTask:
        return cluster_task(
            {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}
        )

    workers = {"worker": ["a:1", "b:1", "c:1"]}
    assert [task(workers, "worker", i).chief for i in range(3)] == [True, False, False]
    assert task(workers, "worker", 2).tasks == 3
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert task(with_chief, "chief", 0).chief
    assert not task(with_chief, "worker", 0).chief
    with pytest.raises(UserInputError, match="at most one chief"):
        task({"chief": ["a:1", "b:1"]}, "chief", 0)
