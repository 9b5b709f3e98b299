"""The same seed and data give the same checkpoint on CPU, bit for bit: two runs in one process, and two
runs in two processes (whose Python hash seeds differ)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import tifffile

import training.losses  # noqa: F401  (registers the loss the checkpoints were compiled with)
import zoo  # noqa: F401  (registers the custom layers the checkpoints use)
from training import denoise, segment

REPO = Path(__file__).parents[1]


def _weights(path: Path) -> list[np.ndarray]:
    model = keras.models.load_model(path)
    return [np.asarray(w) for w in model.weights] + [np.asarray(v) for v in model.optimizer.variables]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # Wall-clock columns are the only ones allowed to differ.
    return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "step_ms")} for row in rows]


def _assert_identical(first: Path, second: Path) -> None:
    for name in ("last.keras", "best.keras"):
        a, b = _weights(first / name), _weights(second / name)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert _history(first) == _history(second)


def test_two_segmentation_runs_with_one_seed_give_bit_identical_checkpoints(tiny_segment_flags, tmp_path):
    for name in ("a", "b"):
        argv = [*tiny_segment_flags, "--out-dir", str(tmp_path), "--run-name", name, "--seed", "5"]
        assert segment.main(argv) == 0
    _assert_identical(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()


def test_two_denoising_runs_with_one_seed_give_bit_identical_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    image = tmp_path / "noisy.tif"
    tifffile.imwrite(image, (100 + rng.normal(0, 10, (64, 72))).astype(np.float32))
    flags = (
        "--epochs 2 --steps-per-epoch 3 --batch-size 4 --patch-size 32 --base-filters 4 --depth 1 "
        "--val-patches 4 --no-export --seed 9"
    ).split()
    for name in ("a", "b"):
        assert (
            denoise.main(["--data", str(image), "--out-dir", str(tmp_path), "--run-name", name, *flags]) == 0
        )
    _assert_identical(tmp_path / "a", tmp_path / "b")


def test_another_seed_gives_other_weights(tiny_segment_flags, tmp_path):
    for name, seed in (("a", "1"), ("b", "2")):
        argv = [*tiny_segment_flags, "--out-dir", str(tmp_path), "--run-name", name, "--seed", seed]
        assert segment.main(argv) == 0
    a, b = _weights(tmp_path / "a" / "last.keras"), _weights(tmp_path / "b" / "last.keras")
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_two_segmentation_processes_with_one_seed_give_bit_identical_runs(tiny_segment_flags, tmp_path):
    # Everything a process could carry over between two in-process runs is fresh here: TensorFlow's and
    # Keras's global state, the tf.data and graph caches, and the Python hash seed (set to differ).
    for name, hash_seed in (("a", "1"), ("b", "2")):
        argv = [*tiny_segment_flags, "--out-dir", str(tmp_path), "--run-name", name, "--seed", "5"]
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
        process = subprocess.run(
            [sys.executable, "-m", "training.segment", *argv],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert process.returncode == 0, process.stderr[-3000:]
    history = _history(tmp_path / "a")
    assert len(history) == 2
    assert {"epoch", "learning_rate", "loss", "mean_iou", "val_loss", "val_mean_iou"} <= set(history[0])
    _assert_identical(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()
