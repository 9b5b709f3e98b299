"""Keras callbacks of a run: learning-rate schedules and the run-folder keeper (checkpoints, history, plot).

`RunKeeper` writes, at the end of every epoch and in this order, each file atomically (temporary name,
then rename): `history.csv`, `best.keras` (when `monitor` improved), `state.json`, `last.keras`.
`last.keras` is the commit point: its optimizer step counter says how many epochs it holds, and a resumed
run trusts that count, cutting `history.csv` back to it. A crash between two writes therefore loses at
most the epoch in progress, and leaves no gap and no duplicate in the history.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from base.run_folder import (
    BEST_CHECKPOINT,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    PARTIAL_CHECKPOINT_SUFFIX,
    PERIODIC_CHECKPOINTS_DIR,
    PLOT_FILE,
    STATE_FILE,
)
from training.config import TrainingConfig
from training.files import atomic_target, write_atomic


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """Save a `.keras` file through `atomic_target` (a temporary name ending in `.partial.keras`: Keras
    insists on the suffix)."""
    with atomic_target(path, suffix=PARTIAL_CHECKPOINT_SUFFIX) as tmp:
        model.save(tmp)


def epoch_schedule(config: TrainingConfig) -> Callable[[int, float], float] | None:
    """The per-epoch learning rate of the `cosine`, `poly` and `constant` schedules (None for `plateau`,
    which reacts to the monitored quantity instead)."""
    base, floor, epochs = config.learning_rate, config.min_learning_rate, config.epochs
    if config.lr_schedule == "cosine":
        warmup = config.warmup_epochs

        def cosine(epoch: int, lr: float) -> float:
            if epoch < warmup:
                return base * (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(epochs - warmup - 1, 1)
            return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))

        return cosine
    if config.lr_schedule == "poly":
        return lambda epoch, lr: max(base * (1 - epoch / epochs) ** config.poly_power, floor)
    if config.lr_schedule == "constant":
        return lambda epoch, lr: base
    return None


@keras.saving.register_keras_serializable(package="bioimage_zoo")
class AveragingAdam(keras.optimizers.Adam):
    """Adam whose weight average (`use_ema`) has a momentum that grows with the step t (from 0):
    min(ema_momentum, t / (t + 9)). The average starts at the first step's weights and, until the
    momentum reaches `ema_momentum`, spans about the last ninth of the steps so far (as TensorFlow's
    ExponentialMovingAverage with `num_updates`), so a short run's average is not held back near its
    first steps. It depends on the step alone: a resumed run averages exactly as an uninterrupted one.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        step = keras.ops.cast(self.iterations, "float32")
        momentum = keras.ops.minimum(self.ema_momentum, step / (step + 9.0))
        for variable, average in zip(trainable_variables, self._model_variables_moving_average, strict=True):
            if average is not None:
                weight = keras.ops.cast(momentum, variable.dtype)
                average.assign(weight * average + (1.0 - weight) * variable)


def adam(config: TrainingConfig) -> keras.optimizers.Adam:
    """Adam at the configured learning rate; with `average_steps` > 1, also keeping a moving average of
    the weights over about that many steps (`AveragingAdam`)."""
    if config.average_steps <= 1:
        return keras.optimizers.Adam(config.learning_rate)
    return AveragingAdam(config.learning_rate, use_ema=True, ema_momentum=1.0 - 1.0 / config.average_steps)


def averages_weights(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether `optimizer` keeps a weight average, also when mixed_float16 wrapped it in Keras's
    LossScaleOptimizer (whose own `use_ema` is always False)."""
    return bool(getattr(getattr(optimizer, "inner_optimizer", optimizer), "use_ema", False))


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras's swap of the optimizer's weight average into the model, for validation and from each
    epoch's end to the next epoch's start: checkpoints, and so evaluation, prediction and export, hold the
    averaged weights, while training goes on from the raw ones.

    Every checkpoint, the last epoch's included, holds the averaged weights in the model and the raw ones
    in the optimizer's average slots. A run resumed from one starts swapped (`averaged_in_model`), so its
    first epoch swaps back and it trains on exactly as an uninterrupted run, extended runs included.
    (Keras's own callback copies the average into the slots at the last epoch, which would lose the raw
    weights of a finished run; the model in memory therefore ends with the raw weights.)
    """

    def __init__(self, *, averaged_in_model: bool):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = averaged_in_model

    def on_epoch_end(self, epoch, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True


def monitor_mode(monitor: str) -> str:
    """`max` for accuracy- and IoU-like quantities, `min` for losses."""
    return "max" if any(key in monitor for key in ("acc", "iou", "f1", "psnr", "ssim")) else "min"


class RunKeeper(keras.callbacks.Callback):
    """Keeps the run folder: history CSV, best and last checkpoints, resumable state, loss/LR plot.

    Args:
        run_dir: the run folder.
        monitor: quantity deciding the best checkpoint.
        history: rows of earlier epochs (when resuming).
        best: best value of `monitor` so far (when resuming).
        stateful: other callbacks whose counters must survive a resume, by name.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        monitor: str,
        history: list[dict] | None = None,
        best: float | None = None,
        stateful: dict[str, keras.callbacks.Callback] | None = None,
        previous: dict | None = None,
    ):
        super().__init__()
        self.run_dir = run_dir
        self.monitor = monitor
        self.mode = monitor_mode(monitor)
        self.history = list(history or [])
        self.best = best
        self.stateful = stateful or {}
        self._previous = previous

    def _improved(self, value: float) -> bool:
        if not np.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        row = {
            "epoch": epoch + 1,
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
        }
        row.update({key: float(value) for key, value in logs.items() if key != "learning_rate"})
        self.history.append(row)
        write_atomic(self.run_dir / HISTORY_FILE, history_csv(self.history))
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"monitored quantity {self.monitor!r} is not among the logs {sorted(logs)}")
        if self._improved(float(value)):
            self.best = float(value)
            save_model_atomic(self.model, self.run_dir / BEST_CHECKPOINT)
        state = {
            "epochs_done": epoch + 1,
            "monitor": self.monitor,
            "best": self.best,
            "best_epoch": self._best_epoch(),
            "callbacks": {name: callback_state(cb) for name, cb in self.stateful.items()},
            # The state of the epoch before, for a crash between this file and last.keras (see module doc).
            "previous": self._previous,
        }
        self._previous = {key: value for key, value in state.items() if key != "previous"}
        write_atomic(self.run_dir / STATE_FILE, json.dumps(state, indent=2))
        save_model_atomic(self.model, self.run_dir / LAST_CHECKPOINT)
        plot_curves(self.history, self.run_dir / PLOT_FILE)

    def _best_epoch(self) -> int | None:
        matches = [row["epoch"] for row in self.history if row.get(self.monitor) == self.best]
        return matches[-1] if matches else None


class InterruptAfterEpoch(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) during training stops it after the epoch in progress, once that epoch's checkpoint
    is written; a second Ctrl-C stops at once (the last finished epoch is then the checkpoint).

    Put it after `RunKeeper` in the callback list, so the epoch's files are written before the stop.
    """

    def __init__(self):
        super().__init__()
        self.requested = False
        self.stopped_after: int | None = None
        self._previous_handler = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        print(
            "\ninterrupt: stopping after this epoch, once its checkpoint is written "
            "(Ctrl-C again to stop now)",
            flush=True,
        )
        signal.signal(signal.SIGINT, self._previous_handler)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._handle)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.requested:
            self.stopped_after = epoch + 1
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._previous_handler is not None and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._previous_handler)


class StepTimer(keras.callbacks.Callback):
    """Adds the epoch's wall time (`epoch_seconds`, validation included) and the median time of a
    training step (`step_ms`: from one step's end to the next, so input waits count) to the epoch logs,
    and so to `history.csv`. With three or more steps an epoch, the median keeps the first step's graph
    tracing out of `step_ms`."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = self._last = time.perf_counter()
        self._steps: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self._steps.append(now - self._last)
        self._last = now

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._epoch_start
            if self._steps:
                logs["step_ms"] = 1000.0 * float(np.median(self._steps))


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Keep `checkpoints/epoch-NNNN.keras` every `every` epochs, written atomically."""

    def __init__(self, run_dir: Path, every: int):
        super().__init__()
        self.folder = run_dir / PERIODIC_CHECKPOINTS_DIR
        self.every = every

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every == 0:
            self.folder.mkdir(exist_ok=True)
            save_model_atomic(self.model, self.folder / f"epoch-{epoch + 1:04d}.keras")


_CALLBACK_STATE_KEYS = ("wait", "best", "cooldown_counter", "stopped_epoch")


def callback_state(callback: keras.callbacks.Callback) -> dict:
    """The counters of a ReduceLROnPlateau or EarlyStopping callback, as JSON-able values."""
    return {
        key: float(getattr(callback, key))
        for key in _CALLBACK_STATE_KEYS
        if isinstance(getattr(callback, key, None), (int, float, np.floating, np.integer))
    }


def restore_callback_state(callback: keras.callbacks.Callback, state: dict) -> None:
    """Put counters saved by `callback_state` back, after Keras resets them in `on_train_begin`."""
    original = callback.on_train_begin

    def on_train_begin(logs=None):
        original(logs)
        for key, value in state.items():
            current = getattr(callback, key, None)
            setattr(callback, key, type(current)(value) if isinstance(current, int) else value)

    callback.on_train_begin = on_train_begin


def history_csv(rows: list[dict]) -> str:
    """Rows of per-epoch values as CSV text, columns in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_history(path: Path) -> list[dict]:
    """Rows of a history CSV written by `RunKeeper`, numbers as floats (epoch as int)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v != ""} for row in rows]


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss curves (left) and learning rate (right, log scale) per epoch, written as a PNG."""
    from matplotlib.figure import Figure  # object API: no global pyplot state, no display needed

    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, lr_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for key in ("loss", "val_loss"):
        values = [row.get(key, np.nan) for row in history]
        loss_axes.plot(epochs, values, marker=".", label=key)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axes.legend()
    lr_axes.plot(epochs, [row["learning_rate"] for row in history], marker=".", color="tab:green")
    lr_axes.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
