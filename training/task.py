"""The task contract: what a task (segmentation, denoising, CARE, ...) supplies to the one training core.

A task is one object (a subclass of `Task`, registered in `training.tasks.TASKS`) that owns everything
that differs between tasks: its options, its data (reading, checking, splitting, what the run folder
records of it), its model and loss, its training and validation data, its evaluation and report, the
checkpoint its results come from, what its package declares, and how it predicts a file. The core
(`training.core`) does the rest, the same for every task: seed and determinism, precision, distribution,
building or resuming the model, `fit` with its callbacks and checkpoints, the held-out evaluation, the
sample image, the declaration and the export.

Adding a task is one module under `training/tasks/`, one line in the registry and a thin entry point.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import keras
import numpy as np

from export.declaration import Declaration
from training.config import TrainingConfig

if TYPE_CHECKING:
    from training.blockwise import BlockwiseSpec

# The options of the zoo's U-Net builders that every task has: each fixes the shapes of the weights.
NETWORK_OPTIONS = ("model", "depth", "base_filters", "kernel_size", "batch_norm")


@dataclass
class TaskData:
    """A task's data, read and checked before the run folder exists. Tasks subclass it with their arrays;
    the core reads only these fields."""

    channels: int  # input channels of the network
    summary: str  # one line for the start of the log: what was read


@dataclass
class TrainingData:
    """What `fit` consumes: an endless training dataset, the validation arrays, and task callbacks."""

    train: Iterable[tuple[np.ndarray, np.ndarray]]  # endless (input, target) batches, with close()
    val: tuple[np.ndarray, np.ndarray]
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)


class Task:
    """The base of every task; see the module docstring. Subclasses set the class attributes and
    implement every method that raises `NotImplementedError`."""

    name: ClassVar[str]  # the `task` key of config.json and the run folder's name prefix
    options: ClassVar[type[TrainingConfig]]  # the options class; its `task` field equals `name`
    summary: ClassVar[str]  # what the training command does, for its --help
    results_checkpoint: ClassVar[str]  # "best" or "last": the checkpoint evaluated, predicted, exported
    # Options a fine-tuned run (--init-from) takes from its source: those that shape the network or what
    # its weights mean (normalisation, classes).
    source_options: ClassVar[tuple[str, ...]] = ()

    # === Data ===
    def load_data(self, config: TrainingConfig, *, resume_dir: Path | None, scratch: Path | None) -> TaskData:
        """Read and check every input (all problems at once, as one `UserInputError`); with `resume_dir`,
        the data that run recorded (and `scratch` is None). Nothing is written but into `scratch` (e.g.
        the embedded demo)."""
        raise NotImplementedError

    def resolve(self, config: TrainingConfig, data: TaskData) -> TrainingConfig:
        """The options with what the data decided (a volume's spatial axes and anisotropy), checked against
        the data; recorded in config.json and used to build the model. The default: as given."""
        return config

    def keep_data(self, data: TaskData, run_dir: Path) -> None:
        """A new run: record in the run folder what it was trained on (and keep generated demo data)."""
        raise NotImplementedError

    # === Model and training ===
    def build_model(self, config: TrainingConfig, channels: int) -> keras.Model:
        """A new compiled model (optimizer from `training.callbacks.adam`, the task's loss)."""
        raise NotImplementedError

    def training_data(
        self, config: TrainingConfig, data: TaskData, run_dir: Path, *, first_epoch: int
    ) -> TrainingData:
        """Training batches from epoch `first_epoch` on (a resumed run sees what an uninterrupted one
        would have), validation arrays and task callbacks."""
        raise NotImplementedError

    # === Results ===
    def evaluate(
        self, config: TrainingConfig, data: TaskData, run_dir: Path, model: keras.Model, runner
    ) -> dict:
        """Held-out scores of the results checkpoint (`model`; `runner` predicts with it, in float32 with
        batch norm folded) for metrics.json; the task may write its own result files too."""
        raise NotImplementedError

    def report(self, metrics: dict) -> list[str]:
        """Lines for the end of the log, from metrics.json."""
        raise NotImplementedError

    def sample(self, data: TaskData) -> np.ndarray:
        """One raw held-out (Y, X, C) image: the package's test input and cover."""
        raise NotImplementedError

    def declare(self, run_dir: Path, config: TrainingConfig) -> Declaration:
        """What the run's package declares, from the finished run folder's files."""
        raise NotImplementedError

    # === Prediction (`training.predict`) ===
    def prediction_config(self, run_dir: Path, config: TrainingConfig) -> TrainingConfig:
        """The options prediction uses: the run's own, with what it chose after training."""
        return config

    def output_names(self, stem: str) -> list[str]:
        """The files `predict_file` writes for an input named `stem`."""
        raise NotImplementedError

    def predict_file(
        self, path: Path, out_dir: Path, *, run_dir: Path, config: TrainingConfig, model: keras.Model, runner
    ) -> None:
        """Predict one input file into `out_dir` (atomically); a bad file raises `UserInputError`."""
        raise NotImplementedError

    def blockwise(self, run_dir: Path, config: TrainingConfig) -> BlockwiseSpec:
        """How `training.blockwise` predicts an image too big to hold: its normalisation, what is written and
        whether labels follow."""
        raise NotImplementedError


def training_lines(config: TrainingConfig, *, data: str) -> list[str]:
    """The documentation's lines on how a run was trained, shared by every task's declaration."""
    c = config
    volume = getattr(c, "ndim", None) == 3
    patches = (
        f"{c.patch_depth} x {c.patch_size} x {c.patch_size} voxels (z spacing {c.anisotropy:g} x the xy "
        "pixel size)"
        if volume
        else f"{c.patch_size} px"
    )
    return [
        f"- Data: {data}",
        f"- Network: {c.model}{' (3D)' if volume else ''}, depth {c.depth}, {c.base_filters} filters in the "
        "first level, batch norm "
        f"{'on' if c.batch_norm else 'off'}",
        *([f"- Fine-tuned from: {c.init_from}"] if c.init_from else []),
        f"- Optimisation: {c.epochs} epochs x {c.steps_per_epoch} steps, batch {c.batch_size}, patches of "
        f"{patches}, learning rate {c.learning_rate} ({c.lr_schedule} schedule), seed {c.seed}",
    ]
