"""Run folders: creating one, resuming one, and the `fit` loop with its callbacks, shared by every task.

A run folder holds everything needed to resume, evaluate and export a training:
`config.json` (resolved options), `split.json` (which files went where), `state.json`, `history.csv`,
`best.keras`, `last.keras`, `curves.png`, `tensorboard/`, and at the end `metrics.json`.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.callbacks import (
    HISTORY_FILE,
    LAST_CHECKPOINT,
    STATE_FILE,
    AveragedWeights,
    InterruptAfterEpoch,
    RunKeeper,
    StepTimer,
    averages_weights,
    epoch_schedule,
    monitor_mode,
    read_history,
    remove_stale_temporaries,
    restore_callback_state,
    write_atomic,
)
from training.cli import config_from_args, config_parser, resume_flags, run_main
from training.config import TrainingConfig, build_config, read_config_file
from training.errors import UserInputError
from training.multiworker import cluster_task, fit_multiworker, is_chief

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SAMPLE_FILE = "sample.npy"
SAMPLE_SIZE = 256
# Options that may change when a run is resumed: they extend or stop the run, or choose the devices that
# share its global batch, not change what it learns.
RESUMABLE_OVERRIDES = frozenset({"epochs", "early_stopping_patience", "out_dir", "export", "distribute"})
PACKAGE_FILE = "package.zip"
_WRITE_FAILURES = (
    "No space left on device",
    "Read-only file system",
    "Permission denied",
    "Disk quota exceeded",
)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


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


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"{path}: unreadable ({error})") from None


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


def load_run_config(run_dir: Path, cls: type[TrainingConfig], overrides: dict) -> TrainingConfig:
    """The config of an existing run folder, with the few options that may change on resume."""
    missing = [name for name in (CONFIG_FILE, LAST_CHECKPOINT) if not (run_dir / name).is_file()]
    if not run_dir.is_dir() or missing:
        what = "not a folder" if not run_dir.is_dir() else f"missing {', '.join(missing)}"
        raise UserInputError(f"{run_dir}: not a resumable run folder ({what})")
    refused = sorted(set(overrides) - RESUMABLE_OVERRIDES)
    if refused:
        raise UserInputError(
            f"{run_dir}: cannot change {', '.join(refused)} when resuming "
            f"(only {', '.join(sorted(RESUMABLE_OVERRIDES))})"
        )
    values = read_json(run_dir / CONFIG_FILE) | overrides
    config = build_config(cls, values, source=str(run_dir / CONFIG_FILE))
    for path in remove_stale_temporaries(run_dir):
        print(f"removed {path.name}, a partial file of the interrupted run")
    return config


def training_main(
    cls: type[TrainingConfig], run, argv: list[str] | None, *, prog: str, description: str
) -> int:
    """The entry point shared by the tasks: parse options, then start a run or resume one with `run`."""
    parser = config_parser(cls, prog=prog, description=description)
    args = parser.parse_args(argv)

    def body():
        if args.resume is not None:
            overrides = (read_config_file(args.config) if args.config else {}) | resume_flags(cls, args)
            config = load_run_config(args.resume, cls, overrides)
        else:
            config, _ = config_from_args(cls, args)
        if not is_chief(config.distribute):
            run_as_worker(run, config, args.resume)
            return
        run_dir = run(config, resume_dir=args.resume) if args.resume is not None else run(config)
        if config.export:
            export_package(run_dir)

    return run_main(body)


def run_as_worker(run, config: TrainingConfig, resume_dir: Path | None) -> None:
    """A multi-worker run on a task other than the chief: the same training, in a temporary folder that
    is removed at the end (the chief keeps the run folder). Resuming starts from a copy of the chief's
    run folder, which every task must be able to read (a shared file system)."""
    with tempfile.TemporaryDirectory(prefix="worker-") as scratch:
        config = config.model_copy(update={"out_dir": scratch, "export": False})
        print(f"multi-worker task {cluster_task().index}: training beside the chief in {scratch}")
        if resume_dir is None:
            run(config)
            return
        copy = Path(scratch) / resume_dir.name
        shutil.copytree(resume_dir, copy, ignore=shutil.ignore_patterns("tensorboard", PACKAGE_FILE))
        run(config, resume_dir=copy)


def export_package(run_dir: Path) -> Path:
    """Export a finished run as RUN_DIR/package.zip (replacing the package of an earlier export of the
    same run, e.g. before it was resumed)."""
    from export.errors import ExportError
    from export.package import export_run

    print(f"\nexporting a bioimage.io package (skip with --no-export): {run_dir / PACKAGE_FILE}")
    try:
        return export_run(run_dir, run_dir / PACKAGE_FILE, overwrite=True)
    except ExportError as error:
        raise UserInputError(
            f"{error}\nthe run folder {run_dir} is complete; export it again with "
            f"python -m export {run_dir} --out PACKAGE.zip"
        ) from None


def fit(
    model: keras.Model,
    train_data: tf.data.Dataset,
    val_data: tuple,
    *,
    config: TrainingConfig,
    run_dir: Path,
    resume: bool,
    extra_callbacks: list[keras.callbacks.Callback] = (),
) -> RunKeeper:
    """Train `model` (compiled, and when resuming loaded from `last.keras`) to `config.epochs` epochs."""
    initial_epoch, history, state = 0, [], {}
    if resume:
        initial_epoch = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // config.steps_per_epoch
        # last.keras is the commit point: cut anything written after it (see training.callbacks).
        history = [row for row in read_history(run_dir / HISTORY_FILE) if row["epoch"] <= initial_epoch]
        state = read_json(run_dir / STATE_FILE) if (run_dir / STATE_FILE).is_file() else {}
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
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")),
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
    try:
        if config.distribute == "multiworker":
            fit_multiworker(model, train_data, val_data, batch_size=config.batch_size, **schedule)
        else:
            model.fit(
                train_data,
                validation_data=val_data,
                validation_batch_size=config.batch_size,
                shuffle=False,  # the patch generator draws at random already
                **schedule,
            )
    except tf.errors.OpError as error:
        # TensorFlow's own writers (the TensorBoard logs) report a full or read-only disk this way.
        reason = next((r for r in _WRITE_FAILURES if r in error.message), None)
        if reason is None:
            raise
        raise UserInputError(
            f"{run_dir / 'tensorboard'}: cannot write the TensorBoard logs ({reason})"
        ) from None
    if interrupt.stopped_after is not None:
        print(
            f"stopped after epoch {interrupt.stopped_after} of {config.epochs}; its checkpoint is "
            f"{run_dir / LAST_CHECKPOINT}; continue with --resume {run_dir}",
            flush=True,
        )
        raise KeyboardInterrupt
    return keeper
