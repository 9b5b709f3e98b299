"""Run folders (defined in `base.run_folder`): creating one, reopening one to resume it, and the `fit`
loop with its callbacks, shared by every task."""

from __future__ import annotations

import io
import shutil
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from base.errors import UserInputError
from base.run_folder import (
    CONFIG_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    SAMPLE_FILE,
    SAMPLE_SIZE,
    STATE_FILE,
    TENSORBOARD_DIR,
    read_record,
    stale_temporaries,
)
from training.callbacks import (
    AveragedWeights,
    InterruptAfterEpoch,
    RunKeeper,
    StepTimer,
    averages_weights,
    epoch_schedule,
    monitor_mode,
    read_history,
    restore_callback_state,
)
from training.config import RESUMABLE_OVERRIDES, TrainingConfig, build_config
from training.device import fit_input
from training.files import write_atomic
from training.multiworker import fit_multiworker
from training.scalars import ScalarLog


def write_sample(run_dir: Path, image: np.ndarray) -> None:
    """Keep a centred crop (at most 256 x 256) of one raw held-out (Y, X, C) image with the run.

    Export builds the package's test tensors and cover image from it, so it needs the run folder only.
    """
    top = max(image.shape[0] - SAMPLE_SIZE, 0) // 2
    left = max(image.shape[1] - SAMPLE_SIZE, 0) // 2
    crop = np.ascontiguousarray(image[top : top + SAMPLE_SIZE, left : left + SAMPLE_SIZE])
    buffer = io.BytesIO()
    np.save(buffer, crop, allow_pickle=False)
    write_atomic(run_dir / SAMPLE_FILE, buffer.getvalue())


def new_run_dir(config: TrainingConfig, task: str) -> Path:
    """Create a fresh run folder; an existing folder is never reused or overwritten."""
    out_dir = Path(config.out_dir)
    name = config.run_name or f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out_dir / name
    if config.run_name is None:
        counter = 2
        while run_dir.exists():
            run_dir, counter = out_dir / f"{name}-{counter}", counter + 1
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        if not out_dir.is_dir():
            raise UserInputError(f"{out_dir}: not a folder; choose another --out-dir") from None
        raise UserInputError(
            f"{run_dir}: run folder exists already; choose another --run-name or continue it with --resume"
        ) from None
    except OSError as error:
        raise UserInputError(f"{run_dir}: cannot create the run folder ({error.strerror})") from None
    return run_dir


@contextmanager
def removed_unless_resumable(run_dir: Path):
    """Remove a new run folder if training fails before its first checkpoint: nothing in it could be
    resumed, and a leftover folder would look like a run."""
    try:
        yield
    except BaseException:
        if not (run_dir / LAST_CHECKPOINT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def resumed_config(run_dir: Path, cls: type[TrainingConfig], values: dict, overrides: dict) -> TrainingConfig:
    """The config of a run folder to resume (`values`, its config.json, brought to this schema by
    `training.upgrade`), with the few options that may change on resume; removes the temporaries a killed
    process left."""
    if not (run_dir / LAST_CHECKPOINT).is_file():
        raise UserInputError(f"{run_dir}: not a resumable run folder (missing {LAST_CHECKPOINT})")
    refused = sorted(set(overrides) - RESUMABLE_OVERRIDES)
    if refused:
        raise UserInputError(
            f"{run_dir}: cannot change {', '.join(refused)} when resuming "
            f"(only {', '.join(sorted(RESUMABLE_OVERRIDES))})"
        )
    config = build_config(cls, values | overrides, source=str(run_dir / CONFIG_FILE))
    for path in stale_temporaries(run_dir):
        path.unlink(missing_ok=True)
        print(f"removed {path.name}, a partial file of the interrupted run")
    return config


def fit(
    model: keras.Model,
    train_data: Iterable[tuple[np.ndarray, np.ndarray]],
    val_data: tuple,
    *,
    config: TrainingConfig,
    run_dir: Path,
    resume: bool,
    extra_callbacks: list[keras.callbacks.Callback] = (),
    processes: int = 1,
) -> RunKeeper:
    """Train `model` (compiled, and when resuming loaded from `last.keras`) to `config.epochs` epochs.
    With `processes` > 1 (JAX on several machines) the data are this process's share of each batch."""
    initial_epoch, history, state = 0, [], {}
    if resume:
        initial_epoch = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // config.steps_per_epoch
        # last.keras is the commit point: cut anything written after it (see training.callbacks).
        history = [row for row in read_history(run_dir / HISTORY_FILE) if row["epoch"] <= initial_epoch]
        state = (
            read_record(run_dir / STATE_FILE, "the schedule's counters")
            if (run_dir / STATE_FILE).is_file()
            else {}
        )
    mode = monitor_mode(config.monitor)
    callbacks: list[keras.callbacks.Callback] = []
    stateful: dict[str, keras.callbacks.Callback] = {}
    schedule = epoch_schedule(config)
    if schedule is None:
        stateful["plateau"] = keras.callbacks.ReduceLROnPlateau(
            monitor=config.monitor,
            mode=mode,
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            min_lr=config.min_learning_rate,
            verbose=1,
        )
    else:
        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    if config.early_stopping_patience:
        stateful["early_stopping"] = keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode=mode, patience=config.early_stopping_patience, verbose=1
        )
    if state.get("epochs_done") != initial_epoch:
        # Crash between state.json and last.keras: the state one epoch back matches the checkpoint.
        state = state.get("previous") or {}
    if state.get("epochs_done") == initial_epoch:
        for name, callback in stateful.items():
            restore_callback_state(callback, state.get("callbacks", {}).get(name, {}))
    keeper = RunKeeper(
        run_dir,
        monitor=config.monitor,
        history=history,
        best=state.get("best"),
        stateful=stateful,
        previous={k: v for k, v in state.items() if k != "previous"} or None,
    )
    interrupt = InterruptAfterEpoch()
    if averages_weights(model.optimizer):
        # First, so that every later callback's epoch end (checkpoints included) sees the average.
        callbacks.insert(0, AveragedWeights(averaged_in_model=resume))
    callbacks += [
        StepTimer(),
        *stateful.values(),
        *extra_callbacks,
        ScalarLog(run_dir / TENSORBOARD_DIR),
        keeper,
        interrupt,
    ]
    if initial_epoch >= config.epochs:
        print(f"{run_dir}: all {config.epochs} epochs are done already")
        return keeper
    schedule = {
        "epochs": config.epochs,
        "initial_epoch": initial_epoch,
        "steps_per_epoch": config.steps_per_epoch,
        "callbacks": callbacks,
        "verbose": 1 if sys.stdout.isatty() else 2,  # one line per epoch in logs and CI
    }
    train_data = fit_input(train_data)
    if config.distribute == "multiworker" and keras.backend.backend() == "tensorflow":
        fit_multiworker(model, train_data, val_data, batch_size=config.batch_size, **schedule)
    else:
        model.fit(
            train_data,
            validation_data=val_data,
            validation_batch_size=config.batch_size // processes,
            shuffle=False,  # the patch generator draws at random already
            **schedule,
        )
    if interrupt.stopped_after is not None:
        print(
            f"stopped after epoch {interrupt.stopped_after} of {config.epochs}; its checkpoint is "
            f"{run_dir / LAST_CHECKPOINT}; continue with --resume {run_dir}",
            flush=True,
        )
        raise KeyboardInterrupt
    return keeper
