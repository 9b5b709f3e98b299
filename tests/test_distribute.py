"""Tests of multi-replica training (`--distribute mirrored`) on a CPU split into two logical devices.

Logical devices must be configured before TensorFlow initialises, so every run happens in a subprocess.
Without batch normalisation (whose statistics are per replica) a mirrored run on a global batch must
follow the same loss curve as a single-device run on that batch.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

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
    assert "; 2 replica(s)" in process.stdout
    assert "; 1 replica(s)" in process.stdout  # the --distribute none run beside it
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
