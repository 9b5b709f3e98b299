"""Typed, validated training configurations, one per task.

A task's options class (in its module under `training.tasks`) extends `TrainingConfig`. A configuration
comes from defaults, an optional JSON file (`--config`) and command-line flags, in that order of
precedence. Unknown keys and out-of-range values are errors, reported in one line. The resolved
configuration is written into the run folder as `config.json`, so a run can be resumed and exported
without the command line that started it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from base.cli import build_options
from base.run_folder import SCHEMA_VERSION

# Options that may change when a run is resumed: they extend or stop the run, or choose the devices that
# share its global batch and the backend that runs them (checkpoints are the same on every backend), not
# change what it learns.
RESUMABLE_OVERRIDES = frozenset(
    {"epochs", "early_stopping_patience", "out_dir", "export", "distribute", "backend"}
)


class TrainingConfig(BaseModel):
    """Options shared by every task: optimisation, schedule, checkpoints, hardware. Each task's options
    class (`training.tasks`) adds its own, with a `task` field that names it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: int = Field(
        SCHEMA_VERSION,
        ge=1,
        description="Version of the run-folder schema that wrote this configuration.",
        json_schema_extra={"cli": False},
    )

    out_dir: str = Field("runs", description="Folder in which the run folder is created.")
    run_name: str | None = Field(None, description="Name of the run folder (default: task and time stamp).")
    seed: int = Field(
        0, ge=0, description="Seed of every random choice: split, patches, augmentation, weights."
    )
    deterministic: bool = Field(
        True,
        description="Make the backend's ops deterministic: the same seed gives the same run (slower on GPU).",
    )
    backend: Literal["auto", "tensorflow", "jax", "torch"] = Field(
        "auto",
        description="Keras backend that trains: auto keeps KERAS_BACKEND if set, else takes the installed "
        "backend measured fastest for this machine's device (see docs/reference.md); the run records the "
        "one used.",
    )

    init_from: str | None = Field(
        None,
        description="Fine-tune: start from trained weights, not random ones: a shipped model's name (python "
        "-m zoo.pretrained lists them), a run folder, a bioimage.io package (.zip) or a .keras file. The "
        "network's options are taken from the source where it records them.",
        json_schema_extra={"metavar": "SOURCE"},
    )

    patch_size: int = Field(
        128, ge=16, le=4096, description="Side of the square training patches, in pixels."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Global batch size (split across replicas).")
    epochs: int = Field(30, ge=1, le=100_000, description="Number of epochs.")
    steps_per_epoch: int = Field(50, ge=1, le=1_000_000, description="Training batches per epoch.")
    val_patches: int = Field(64, ge=1, le=100_000, description="Most validation patches (cut on a grid).")

    learning_rate: float = Field(
        1e-3, gt=0, le=1.0, description="Initial (peak, with warm-up) learning rate."
    )
    lr_schedule: Literal["plateau", "cosine", "poly", "constant"] = Field(
        "plateau",
        description="plateau: reduce on plateau of `monitor`; cosine: linear warm-up then cosine decay; "
        "poly: lr * (1 - epoch / epochs) ** poly_power, the schedule of the classic DL4MIA exercise.",
    )
    warmup_epochs: int = Field(2, ge=0, description="Linear warm-up epochs of the cosine schedule.")
    poly_power: float = Field(0.9, gt=0, le=10, description="Power of the poly schedule.")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="Factor of each reduction on plateau.")
    plateau_patience: int = Field(5, ge=1, description="Epochs without improvement before a reduction.")
    min_learning_rate: float = Field(1e-6, ge=0, description="Floor of every schedule.")
    monitor: str = Field("val_loss", description="Quantity for best checkpoint, plateau and early stopping.")
    average_steps: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Polyak averaging: validate, checkpoint and export an exponential moving average of "
        "the weights over about this many recent steps, not the last step's weights (0 or 1: off).",
    )
    early_stopping_patience: int = Field(
        0,
        ge=0,
        description="Stop after this many epochs without "
        "improvement of `monitor`; 0 disables early stopping.",
    )

    channel_axis: int | None = Field(
        None,
        ge=0,
        le=2,
        description="Channel axis of multi-channel images; default: detected (a first or last axis of at "
        "most 4).",
    )
    tile_size: int = Field(512, ge=32, le=8192, description="Tile side for prediction of large images.")

    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="auto: mixed_float16 on a GPU, float32 on a CPU."
    )
    distribute: Literal["auto", "none", "mirrored", "multiworker"] = Field(
        "auto",
        description="auto: data parallel over all GPUs when there are several; mirrored: data parallel "
        "over all GPUs, or all CPU devices when there is none (TensorFlow's MirroredStrategy, JAX's "
        "DataParallel); multiworker: over several machines (TensorFlow: TF_CONFIG; JAX: "
        "keras.distribution.initialize; see docs/reference.md). PyTorch: one device only.",
    )

    export: bool = Field(
        True,
        description="At the end, export the run as a bioimage.io package (RUN_DIR/package.zip), checked "
        "with bioimageio.core before it is written.",
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> TrainingConfig:
        if self.lr_schedule == "cosine" and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})"
            )
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate")
        return self


class UNetOptions(BaseModel):
    """The network options of the tasks that train a U-Net (with the restoration tasks' defaults)."""

    depth: int = Field(2, ge=1, le=6, description="U-Net depth (number of 2x down-samplings).")
    base_filters: int = Field(32, ge=1, le=512, description="Filters of the first U-Net level.")
    kernel_size: int = Field(3, ge=1, le=11, description="Convolution kernel size (odd).")
    batch_norm: bool = Field(True, description="Batch normalisation after each convolution.")

    def network_arguments(self) -> dict:
        """The arguments of the zoo's builders that these options set."""
        return {
            "depth": self.depth,
            "base_filters": self.base_filters,
            "kernel_size": self.kernel_size,
            "batch_norm": self.batch_norm,
        }

    @model_validator(mode="after")
    def _check_network(self):
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.patch_size % 2**self.depth:
            raise ValueError(
                f"patch_size ({self.patch_size}) must be a multiple of 2**depth ({2**self.depth})"
            )
        return self


class VolumeOptions(BaseModel):
    """Options of the tasks that train on images or on volumes (segmentation, denoising): how many spatial
    axes, how a volume's axes are read, and the shape of its patches and of its network along z."""

    ndim: Literal[2, 3] | None = Field(
        None,
        description="Spatial axes: 2 (images) or 3 (volumes, a 3D network); default: 3 where the data are "
        "volumes (segmentation: the masks; denoising: 2, a stack is then denoised slice by slice), 2 for "
        "the embedded demos.",
    )
    axes: str | None = Field(
        None,
        description="Axes of the image files, e.g. ZYX, ZCYX, CZYX, TYX, where their metadata lacks them "
        "or is wrong; overrides the metadata (T is time and is never read as z).",
    )
    patch_depth: int = Field(
        16, ge=1, le=4096, description="Depth (z) of the training patches of volumes, in slices."
    )
    anisotropy: float | None = Field(
        None,
        ge=1.0,
        le=64.0,
        description="Volumes: z spacing / xy pixel size; default: from the files' pixel sizes, else 1. The "
        "network pools z only from the level at which its xy pixels have grown to about the z spacing.",
    )

    # What volumes train on where the options were not given: a 3D patch holds `patch_depth` times the
    # pixels of a square one, so patches are smaller and fewer per batch than for images.
    VOLUME_DEFAULTS: ClassVar[dict[str, int]] = {"patch_size": 64, "batch_size": 4}

    def for_ndim(self, ndim: int):
        """These options for data of `ndim` spatial axes: volumes take `VOLUME_DEFAULTS` for the options
        that were not given (on the command line, in --config, or recorded by a resumed run)."""
        update: dict[str, Any] = {"ndim": ndim}
        if ndim == 3:
            update |= {k: v for k, v in self.VOLUME_DEFAULTS.items() if k not in self.model_fields_set}
        return self.model_copy(update=update)

    def patch_shape(self) -> int | tuple[int, int, int]:
        """The training patch: a square of `patch_size` (2D), or `patch_depth` x `patch_size` squared."""
        return (self.patch_depth, self.patch_size, self.patch_size) if self.ndim == 3 else self.patch_size

    def volume_arguments(self) -> dict:
        """The arguments of the zoo's builders for the spatial axes: none in 2D (the models of 2D runs stay
        as they were), `ndim` and the per-level pool sizes that `anisotropy` gives in 3D. Needs the
        network's `depth` (the options class mixes in `UNetOptions`)."""
        if self.ndim != 3:
            return {}
        from zoo import anisotropic_pool_sizes

        return {
            "ndim": 3,
            "pool_sizes": anisotropic_pool_sizes(depth=self.depth, anisotropy=self.anisotropy or 1.0),
        }

    @model_validator(mode="after")
    def _check_volume(self):
        if self.ndim == 3:
            for key, value in self.VOLUME_DEFAULTS.items():
                if key not in self.model_fields_set:
                    self.__dict__[key] = value
        if self.axes is not None:
            from base.errors import UserInputError
            from training.images import parse_axes

            try:
                self.__dict__["axes"] = parse_axes(self.axes)
            except UserInputError as error:
                raise ValueError(str(error)) from None
        return self


class PairSplitOptions(BaseModel):
    """How the tasks that learn from pairs of files (image and mask, low and high) split them."""

    split_csv: str | None = Field(
        None,
        description="CSV with columns name,split (train/val/test); default: DATA/index.csv if present, "
        "else train/ val/ test/ sub-folders (a CSV beside them is refused), else random.",
    )
    val_fraction: float = Field(
        0.15, ge=0.0, lt=1.0, description="Fraction for validation in a random split."
    )
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction for test in a random split.")

    @model_validator(mode="after")
    def _check_split(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave images for training")
        return self


class RestorationOptions(BaseModel):
    """Options of the tasks whose output is an image (denoising, CARE)."""

    noise_sigma: float = Field(
        25.0, gt=0, le=255, description="Noise of the embedded demo, on the 0-255 scale."
    )
    tta: bool = Field(False, description="8-fold test-time augmentation when predicting.")


def build_config(cls: type[TrainingConfig], values: dict[str, Any], *, source: str) -> TrainingConfig:
    """Validate `values` into the task's options class `cls`; problems become one `UserInputError`."""
    return build_options(cls, values, source=source)
