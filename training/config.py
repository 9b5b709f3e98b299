"""Typed, validated training configurations, one per task.

A configuration comes from defaults, an optional JSON file (`--config`) and command-line flags, in that
order of precedence. Unknown keys and out-of-range values are errors, reported in one line. The resolved
configuration is written into the run folder as `config.json`, so a run can be resumed and exported
without the command line that started it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.errors import UserInputError


class TrainingConfig(BaseModel):
    """Options shared by every task: optimisation, schedule, checkpoints, hardware."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    out_dir: str = Field("runs", description="Folder in which the run folder is created.")
    run_name: str | None = Field(None, description="Name of the run folder (default: task and time stamp).")
    seed: int = Field(
        0, ge=0, description="Seed of every random choice: split, patches, augmentation, weights."
    )
    deterministic: bool = Field(True, description="Make TensorFlow ops deterministic (slower on GPU).")

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

    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="auto: mixed_float16 on a GPU, float32 on a CPU."
    )
    distribute: Literal["auto", "none", "mirrored", "multiworker"] = Field(
        "auto",
        description="auto: MirroredStrategy over all GPUs when there are several; "
        "mirrored: MirroredStrategy over all GPUs, or all logical CPUs when there is no GPU; "
        "multiworker: MultiWorkerMirroredStrategy over the machines named by TF_CONFIG (see README).",
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


class SegmentConfig(TrainingConfig):
    """Semantic segmentation into background / interior / boundary, turned back into instances."""

    task: Literal["segment"] = Field("segment", description="What the run learns (fixed per config class).")

    data: str | None = Field(
        None,
        description="Folder with images/ and masks/ (matched by file name); "
        "none: the embedded synthetic nuclei dataset.",
    )
    split_csv: str | None = Field(
        None,
        description="CSV with columns name,split (train/val/test); default: "
        "DATA/index.csv if present, else train/ val/ test/ sub-folders, else random.",
    )
    val_fraction: float = Field(
        0.15, ge=0.0, lt=1.0, description="Fraction for validation in a random split."
    )
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction for test in a random split.")
    synthetic_images: int = Field(
        32, ge=3, le=10_000, description="Images of the embedded synthetic dataset."
    )
    channel_axis: int | None = Field(
        None,
        ge=0,
        le=2,
        description="Channel axis of multi-channel images; "
        "default: detected (a first or last axis of at most 4).",
    )
    percentile_low: float = Field(
        1.0, ge=0, lt=100, description="Lower percentile of per-image normalisation."
    )
    percentile_high: float = Field(99.8, gt=0, le=100, description="Upper percentile of normalisation.")

    epochs: int = Field(20, ge=1, le=100_000, description="Number of epochs.")
    steps_per_epoch: int = Field(40, ge=1, le=1_000_000, description="Training batches per epoch.")
    model: Literal["unet"] = Field("unet", description="Registered model to train.")
    depth: int = Field(3, ge=1, le=6, description="U-Net depth (number of 2x down-samplings).")
    base_filters: int = Field(16, ge=1, le=512, description="Filters of the first U-Net level.")
    kernel_size: int = Field(3, ge=1, le=11, description="Convolution kernel size (odd).")
    batch_norm: bool = Field(True, description="Batch normalisation after each convolution.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each convolution block.")
    upsampling: Literal["transpose", "nearest", "repeat"] = Field(
        "transpose", description="Decoder up-sampling."
    )

    boundary_width: int = Field(2, ge=1, le=20, description="Width of the boundary class, in pixels.")
    class_weights: list[float] = Field(
        [1.0, 1.0, 10.0],
        min_length=3,
        max_length=3,
        description="Loss weights of background, interior, boundary.",
    )

    interior_threshold: float = Field(
        0.5, gt=0, lt=1, description="Interior probability that seeds an object."
    )
    foreground_threshold: float = Field(
        0.5, gt=0, lt=1, description="1 - background probability above which a pixel belongs to some object."
    )
    min_object_size: int = Field(15, ge=0, description="Objects smaller than this (pixels) are removed.")
    tune_thresholds: bool = Field(
        True,
        description="After training, choose the interior and foreground thresholds and the minimum "
        "object size that give the best F1 at IoU 0.5 on the validation images (never the test images); "
        "the choice is kept in postprocessing.json and used for evaluation and prediction.",
    )
    tile_size: int = Field(512, ge=32, le=8192, description="Tile side for prediction of large images.")

    @model_validator(mode="after")
    def _check_segment(self) -> SegmentConfig:
        if self.percentile_low >= self.percentile_high:
            raise ValueError("percentile_low must be smaller than percentile_high")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave images for training")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.patch_size % 2**self.depth:
            raise ValueError(
                f"patch_size ({self.patch_size}) must be a multiple of 2**depth ({2**self.depth})"
            )
        if any(w < 0 for w in self.class_weights):
            raise ValueError("class_weights must not be negative")
        return self


class DenoiseConfig(TrainingConfig):
    """Self-supervised denoising with Noise2Void, N2V2 or structN2V, trained on the noisy images alone."""

    task: Literal["denoise"] = Field("denoise", description="What the run learns (fixed per config class).")
    data: str | None = Field(
        None,
        description="Noisy TIFF/PNG file or folder of them (a 3D stack is split into "
        "2D slices); none: scikit-image's `cell` image with added Gaussian noise.",
    )
    clean: str | None = Field(
        None,
        description="Clean reference (file, or folder matched by name) for PSNR "
        "and SSIM; none: no reference (the embedded demo has one).",
    )
    noise_sigma: float = Field(
        25.0, gt=0, le=255, description="Noise of the embedded demo, on the 0-255 scale."
    )
    channel_axis: int | None = Field(
        None,
        ge=0,
        le=2,
        description="Channel axis of multi-channel images; "
        "default: detected (a first or last axis of at most 4).",
    )
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Held-out fraction: whole images when there "
        "are at least 3, else the bottom rows of each image.",
    )

    patch_size: int = Field(64, ge=16, le=4096, description="Side of the square training patches, in pixels.")
    batch_size: int = Field(32, ge=1, le=4096, description="Global batch size (split across replicas).")
    epochs: int = Field(20, ge=1, le=100_000, description="Number of epochs.")
    steps_per_epoch: int = Field(25, ge=1, le=1_000_000, description="Training batches per epoch.")
    learning_rate: float = Field(
        1e-3,
        gt=0,
        le=1.0,
        description="Initial (peak, with warm-up) learning rate: CAREamics' rate; with weight averaging it "
        "measured 0.8 dB above the reference's 4e-4 after 500 steps (mean of 3 seeds, bench/README.md).",
    )
    lr_schedule: Literal["plateau", "cosine", "poly", "constant"] = Field(
        "plateau",
        description="As for segmentation. Plateau with a long patience by default, as the reference N2V: "
        "an early decay (cosine) measured 1.9 dB lower PSNR after 500 steps (bench/README.md).",
    )
    plateau_patience: int = Field(10, ge=1, description="Epochs without improvement before a reduction.")
    average_steps: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="As for segmentation; on by default: at N2V's high learning rate the weights of single "
        "steps scatter in output contrast, by up to 2.3 dB of PSNR (bench/README.md).",
    )
    model: Literal["n2v", "n2v2"] = Field(
        "n2v",
        description="n2v: the original network; n2v2: blur-pool "
        "down-sampling and no top-level skip (fewer checkerboard artefacts).",
    )
    depth: int = Field(2, ge=1, le=6, description="U-Net depth.")
    base_filters: int = Field(32, ge=1, le=512, description="Filters of the first U-Net level.")
    kernel_size: int = Field(3, ge=1, le=11, description="Convolution kernel size (odd).")
    batch_norm: bool = Field(True, description="Batch normalisation after each convolution.")
    residual: bool = Field(
        False,
        description="Add the input to the network's output. Off by default: a blind-spot network cannot "
        "learn to cancel the identity path, which then passes noise through (bench/README.md).",
    )

    mask_fraction: float = Field(0.002, gt=0, le=0.25, description="Fraction of pixels masked per patch.")
    mask_radius: int = Field(
        2, ge=1, le=10, description="Half-width of the neighbourhood replacements come from."
    )
    replacement: Literal["auto", "uniform", "median", "zero", "mean"] = Field(
        "auto", description="Value given to masked pixels; auto: uniform neighbour (N2V), median (N2V2)."
    )
    struct_axis: int | None = Field(
        None,
        ge=0,
        le=1,
        description="structN2V: axis of correlated noise, "
        "0 = along y (columns), 1 = along x (rows); none: plain N2V.",
    )
    struct_span: int = Field(
        0, ge=0, le=10, description="structN2V: pixels masked on each side of the centre."
    )
    independent_channels: bool = Field(
        False,
        description="Denoise each channel independently: one network per channel, each channel masked "
        "at its own positions. Off: one network sees all channels (jointly).",
    )
    loss: Literal["mse", "mae"] = Field("mse", description="Loss over the masked pixels.")
    checkpoint_every: int = Field(
        10,
        ge=0,
        description="Also keep checkpoints/epoch-NNNN.keras every this many "
        "epochs (0: never), since N2V's validation loss is a noisy guide.",
    )
    tta: bool = Field(False, description="8-fold test-time augmentation when predicting.")
    tile_size: int = Field(512, ge=32, le=8192, description="Tile side for prediction of large images.")

    @model_validator(mode="after")
    def _check_denoise(self) -> DenoiseConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.patch_size % 2**self.depth:
            raise ValueError(
                f"patch_size ({self.patch_size}) must be a multiple of 2**depth ({2**self.depth})"
            )
        if (self.struct_axis is None) != (self.struct_span == 0):
            raise ValueError("structN2V needs both struct_axis and struct_span > 0 (or neither)")
        if self.mask_fraction * self.patch_size**2 < 1:
            raise ValueError(
                f"mask_fraction {self.mask_fraction} masks no pixel of a {self.patch_size}^2 patch"
            )
        return self

    @property
    def resolved_replacement(self) -> str:
        if self.replacement != "auto":
            return self.replacement
        return "median" if self.model == "n2v2" else "uniform"


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming where the configuration came from."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(
                f"{source}: {key}: {message} (got {item.get('input')!r})"
                if item["loc"]
                else f"{source}: {message}"
            )
    return "\n".join(lines)


def build_config(cls: type[TrainingConfig], values: dict[str, Any], *, source: str) -> TrainingConfig:
    """Validate `values` into `cls`, turning validation errors into a `UserInputError`."""
    try:
        return cls(**values)
    except ValidationError as error:
        raise UserInputError(format_validation_error(error, source)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON configuration file into a dict (not yet validated)."""
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(values, dict):
        raise UserInputError(f"{path}: expected a JSON object of options, got {type(values).__name__}")
    return values
