"""The one training core that runs any task (`training.task.Task`): seed and determinism, data, the run
folder, precision and distribution, building or resuming the model, `fit` with its callbacks and
checkpoints, the held-out evaluation, the sample image, the declaration of the package and the export.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

import keras

from base.backend import select_backend
from base.errors import UserInputError
from base.run_folder import (
    CONFIG_FILE,
    DECLARATION_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PACKAGE_FILE,
    TENSORBOARD_DIR,
    checkpoint_file,
)
from training.config import TrainingConfig
from training.device import (
    join_processes,
    make_deterministic,
    make_devices,
    set_precision,
    set_random_seed,
)
from training.engines import inference_model
from training.files import write_json
from training.init_from import check_fits, find_source, record_source, take_options
from training.multiworker import is_chief
from training.pipeline import process_share
from training.runs import fit, new_run_dir, removed_unless_resumable, write_sample
from training.task import Task, TaskData


def train(task: Task, config: TrainingConfig, *, resume_dir: Path | None = None) -> Path:
    """Train, evaluate and return the run folder; with `resume_dir`, continue that run (whose config
    `config` is, see `training.runs.resumed_config`). Exports the package at the end if `config.export`.

    Runs on the Keras backend of this process, which must be the one `config.backend` names (or any, for
    `auto`); config.json records the backend a run started on, metrics.json the one that finished it."""
    config = config.model_copy(update={"backend": select_backend(config.backend)})
    join_processes(config.distribute)
    if not is_chief(config.distribute):
        _train_as_worker(task, config, resume_dir)
        return resume_dir or Path(config.out_dir)
    run_dir = _train(task, config, resume_dir)
    if config.export:
        export_package(run_dir)
    return run_dir


def _train(task: Task, config: TrainingConfig, resume_dir: Path | None) -> Path:
    set_random_seed(config.seed)
    if config.deterministic:
        make_deterministic()
    source = taken = None
    if resume_dir is None and config.init_from:
        # Fine-tuning: the source fixes the network's options before the data are read (normalisation).
        source = find_source(config.init_from)
        config, taken = take_options(config, task, source)
    # Generated data (an embedded demo) is made in a scratch folder, then kept in the run folder.
    with nullcontext() if resume_dir is not None else tempfile.TemporaryDirectory(prefix="bkz-") as scratch:
        data = task.load_data(config, resume_dir=resume_dir, scratch=scratch and Path(scratch))
        config = task.resolve(config, data)
        if source is not None:
            check_fits(source, task.build_model(config, data.channels), channels=data.channels)
        run_dir = resume_dir or new_run_dir(config, task.name)
        with removed_unless_resumable(run_dir) if resume_dir is None else nullcontext():
            if resume_dir is None:
                task.keep_data(data, run_dir)
                write_json(run_dir / CONFIG_FILE, config.model_dump(mode="json"))
                if source is not None:
                    record_source(run_dir, source, taken)
            _fit_and_evaluate(
                task,
                config,
                data,
                run_dir,
                resume=resume_dir is not None,
                initial_weights=source and source.weights,
            )
    return run_dir


# A checkpoint written under PyTorch names Keras's PyTorch-only Adam (`keras.src.backend.torch.optimizers`),
# which another backend cannot run: a resumed run takes the optimizer of its own backend, by name.
OPTIMIZERS_OF_THIS_BACKEND = {"Adam": keras.optimizers.Adam, "AdamW": keras.optimizers.AdamW}


def _fit_and_evaluate(
    task: Task,
    config: TrainingConfig,
    data: TaskData,
    run_dir: Path,
    *,
    resume: bool,
    initial_weights: list | None = None,
) -> None:
    precision = set_precision(config.precision)
    devices = make_devices(config.distribute, batch_size=config.batch_size)
    print(f"run folder: {run_dir}")
    print(
        f"{data.summary}; backend {keras.backend.backend()}, precision {precision}, "
        f"{devices.replicas} replica(s)"
    )
    with devices.training_scope():
        with devices.model_scope():
            model = (
                keras.models.load_model(run_dir / LAST_CHECKPOINT, custom_objects=OPTIMIZERS_OF_THIS_BACKEND)
                if resume
                else task.build_model(config, data.channels)
            )
            if initial_weights is not None:  # a new fine-tuned run (never given on resume)
                model.set_weights(initial_weights)
        first_epoch = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // config.steps_per_epoch
        batches = task.training_data(config, data, run_dir, first_epoch=first_epoch)
        try:
            fit(
                model,
                process_share(batches.train, devices.process_share),
                process_share(batches.val, devices.process_share),
                config=config,
                run_dir=run_dir,
                resume=resume,
                extra_callbacks=batches.callbacks,
                processes=devices.process_share[1],
            )
        finally:
            batches.train.close()  # stops the thread that prepares batches
    if not is_chief(config.distribute):
        return  # the chief evaluates

    checkpoint = checkpoint_file(run_dir, task.results_checkpoint)
    model = keras.models.load_model(checkpoint, compile=False)
    # Evaluated as packages and `training.predict` compute: in float32, batch norm folded.
    metrics = {"checkpoint": checkpoint.name, "backend": keras.backend.backend()}
    metrics |= task.evaluate(config, data, run_dir, model, inference_model(model))
    write_json(run_dir / METRICS_FILE, metrics)
    write_sample(run_dir, task.sample(data))
    write_json(run_dir / DECLARATION_FILE, task.declare(run_dir, config).model_dump(mode="json"))
    print()
    for line in task.report(metrics):
        print(line)
    print(f"\nrun folder: {run_dir}")
    for path in sorted(run_dir.iterdir()):
        if not path.name.startswith(".") and path.name != TENSORBOARD_DIR:
            print(f"  {path}")
    print(f"  {run_dir / TENSORBOARD_DIR} (tensorboard --logdir {run_dir.parent})")


def _train_as_worker(task: Task, config: TrainingConfig, resume_dir: Path | None) -> None:
    """A multi-worker run on a task other than the chief: the same training, in a temporary folder that
    is removed at the end (the chief keeps the run folder). Resuming starts from a copy of the chief's
    run folder, which every task must be able to read (a shared file system)."""
    with tempfile.TemporaryDirectory(prefix="worker-") as scratch:
        config = config.model_copy(update={"out_dir": scratch, "export": False})
        print(f"multi-worker task: training beside the chief in {scratch}")
        if resume_dir is None:
            _train(task, config, None)
            return
        copy = Path(scratch) / resume_dir.name
        shutil.copytree(resume_dir, copy, ignore=shutil.ignore_patterns(TENSORBOARD_DIR, PACKAGE_FILE))
        _train(task, config, copy)


def export_package(run_dir: Path) -> Path:
    """Export a finished run as RUN_DIR/package.zip (replacing the package of an earlier export of the
    same run, e.g. before it was resumed)."""
    from export.package import export_run

    print(f"\nexporting a bioimage.io package (skip with --no-export): {run_dir / PACKAGE_FILE}")
    try:
        return export_run(run_dir, run_dir / PACKAGE_FILE, overwrite=True)
    except UserInputError as error:
        again = (
            f"\nthe run folder {run_dir} is complete; export it again with "
            f"python -m export {run_dir} --out PACKAGE.zip"
        )
        raise type(error)(f"{error}{again}") from None
