"""Noise2Void denoising (N2V, N2V2, structN2V), trained on the noisy images alone: the task object.

The network sees patches in which a few pixels are replaced by a neighbour's value (blind-spot masking,
`training.masking`) and learns to predict the original noisy values there; since noise is independent
from pixel to pixel, the best such prediction is the clean signal. Data: `training.noisy_images`;
normalisation, inference and quality: `training.restoration`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np
from pydantic import Field, model_validator

from base.errors import UserInputError
from base.run_folder import DATA_DIR, DATA_FILE, METRICS_FILE, NORMALIZATION_FILE, read_record
from export.declaration import Citation, Declaration, Tensor
from training import restoration
from training.callbacks import PeriodicCheckpoint, adam
from training.config import RestorationOptions, TrainingConfig, UNetOptions, VolumeOptions
from training.files import write_json
from training.lazy import LazyView
from training.masking import MaskedLoss, blind_spot_mask
from training.noisy_images import (
    NoisyImage,
    check_sizes,
    embedded_demo,
    embedded_demo_volume,
    load_noisy_images,
    split_images,
)
from training.pipeline import grid_patches, training_batches
from training.task import NETWORK_OPTIONS, Task, TaskData, TrainingData, training_lines
from training.volumes import anisotropy_of, spacing_note, voxel_size, z_step
from zoo import build_model

N2V = Citation(
    text="Krull, Buchholz and Jug: Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019.",
    doi="10.1109/CVPR.2019.00223",
)
N2V2 = Citation(
    text="Höck, Buchholz, Prakash et al.: N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified "
    "Sampling Strategies and a Tweaked Network Architecture. ECCV 2022 Workshops.",
    doi="10.1007/978-3-031-25069-9_33",
)
STRUCT_N2V = Citation(
    text="Broaddus, Krull, Weigert, Schmidt and Myers: Removing Structured Noise with Self-Supervised "
    "Blind-Spot Networks. ISBI 2020.",
    doi="10.1109/ISBI45749.2020.9098336",
)
OUTPUT_DIR = "denoised"  # in the run folder: every input image, denoised by the results checkpoint


class DenoiseConfig(UNetOptions, VolumeOptions, RestorationOptions, TrainingConfig):
    """Self-supervised denoising with Noise2Void, N2V2 or structN2V, trained on the noisy images alone."""

    task: Literal["denoise"] = Field(
        "denoise", description="What the run learns.", json_schema_extra={"cli": False}
    )
    data: str | None = Field(
        None,
        description="Noisy TIFF/PNG file or folder of them (a 3D stack is split into 2D slices, or is one "
        "volume with --ndim 3); none: scikit-image's `cell` image with added Gaussian noise (with --ndim 3: "
        "a synthetic nuclei volume).",
    )
    clean: str | None = Field(
        None,
        description="Clean reference (file, or folder matched by name) for PSNR "
        "and SSIM; none: no reference (the embedded demo has one).",
    )
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Held-out fraction: whole images when there "
        "are at least 3, else the bottom rows of each image.",
    )

    patch_size: int = Field(
        64, ge=16, le=4096, description="Side of the square training patches (volumes: of their y-x plane)."
    )
    batch_size: int = Field(
        32, ge=1, le=4096, description="Global batch size (split across replicas); volumes: 4 unless given."
    )
    epochs: int = Field(20, ge=1, le=100_000, description="Number of epochs.")
    steps_per_epoch: int = Field(25, ge=1, le=1_000_000, description="Training batches per epoch.")
    learning_rate: float = Field(
        1e-3,
        gt=0,
        le=1.0,
        description="Initial (peak, with warm-up) learning rate; with weight averaging, higher than the "
        "reference N2V's 4e-4 (docs/benchmarks.md).",
    )
    lr_schedule: Literal["plateau", "cosine", "poly", "constant"] = Field(
        "plateau",
        description="As for segmentation. Plateau with a long patience by default, as the reference N2V: "
        "an early decay (cosine) denoises worse (docs/benchmarks.md).",
    )
    plateau_patience: int = Field(10, ge=1, description="Epochs without improvement before a reduction.")
    average_steps: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="As for segmentation; on by default: at N2V's high learning rate the weights of single "
        "steps scatter in output contrast (docs/benchmarks.md).",
    )
    model: Literal["n2v", "n2v2"] = Field(
        "n2v",
        description="n2v: the original network; n2v2: blur-pool "
        "down-sampling and no top-level skip (fewer checkerboard artefacts).",
    )
    residual: bool = Field(
        False,
        description="Add the input to the network's output. Off by default: a blind-spot network cannot "
        "learn to cancel the identity path, which then passes noise through (docs/benchmarks.md).",
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
        le=2,
        description="structN2V: axis of correlated noise among the spatial axes; images: 0 = along y "
        "(columns), 1 = along x (rows); volumes: 0 = along z, 1 = y, 2 = x; none: plain N2V.",
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

    @model_validator(mode="after")
    def _check_denoise(self) -> DenoiseConfig:
        if (self.struct_axis is None) != (self.struct_span == 0):
            raise ValueError("structN2V needs both struct_axis and struct_span > 0 (or neither)")
        if self.struct_axis == 2 and self.ndim != 3:
            raise ValueError("struct_axis 2 (x of a volume) needs --ndim 3; an image's x axis is 1")
        pixels = self.patch_size**2 * (self.patch_depth if self.ndim == 3 else 1)
        if self.mask_fraction * pixels < 1:
            raise ValueError(f"mask_fraction {self.mask_fraction} masks no pixel of a {pixels}-pixel patch")
        return self

    @property
    def resolved_replacement(self) -> str:
        if self.replacement != "auto":
            return self.replacement
        return "median" if self.model == "n2v2" else "uniform"


@dataclass
class NoisyData(TaskData):
    images: list[NoisyImage]
    train: list[np.ndarray]  # normalised
    val: list[np.ndarray]
    stats: dict  # normalization.json
    sources: dict  # data.json: the noisy and clean files
    demo: bool  # generated (the embedded demo), to be kept in the run folder
    anisotropy: float | None  # volumes: z spacing / xy pixel size; images: None
    voxel_size: dict | None = None  # volumes: micrometres along z, y, x, where the files give them


# Seeds of the masks: (seed, TRAINING_MASKS, step) for each training step, (seed, VALIDATION_MASKS) for the
# fixed validation masks, so the two streams never meet.
TRAINING_MASKS, VALIDATION_MASKS = 0, 1


def masking(config: DenoiseConfig):
    """The batch function that masks patches for blind-spot training: `mask(patches, seed_words)`, the
    masks drawn from the seed (config.seed, *seed_words)."""

    def mask(patches: np.ndarray, *seed_words: int):
        return blind_spot_mask(
            patches,
            [config.seed, *seed_words],
            fraction=config.mask_fraction,
            radius=config.mask_radius,
            replacement=config.resolved_replacement,
            struct_axis=config.struct_axis,
            struct_span=config.struct_span,
            independent_channels=config.independent_channels,
        )

    return mask


class DenoiseTask(Task):
    name = "denoise"
    options = DenoiseConfig
    summary = (
        "Train a Noise2Void denoiser (N2V, N2V2 or structN2V) on noisy images alone, denoise them, and, "
        "where a clean reference exists, measure PSNR and SSIM. With no --data it denoises "
        "scikit-image's `cell` image with added Gaussian noise of known strength."
    )
    # N2V's validation loss compares predictions with noisy pixels, so its minimum is a noisy pick; the
    # last checkpoint, whose weights are averaged over the last steps (`average_steps`), is steadier.
    results_checkpoint = "last"
    source_options = (*NETWORK_OPTIONS, "residual", "independent_channels")

    def load_data(self, config: DenoiseConfig, *, resume_dir: Path | None, scratch: Path | None) -> NoisyData:
        if resume_dir is not None:
            record = read_record(resume_dir / DATA_FILE, "where the noisy images came from")
            data = Path(record["data"])
            clean = Path(record["clean"]) if record["clean"] else None
        elif config.data is None and config.ndim == 3:
            print(f"no --data given: a synthetic nuclei volume, Gaussian noise sigma {config.noise_sigma}")
            data, clean = embedded_demo_volume(scratch, sigma=config.noise_sigma, seed=config.seed)
        elif config.data is None:
            print(f"no --data given: scikit-image's `cell` image, Gaussian noise sigma {config.noise_sigma}")
            data, clean = embedded_demo(scratch, sigma=config.noise_sigma, seed=config.seed)
        else:
            data, clean = Path(config.data), Path(config.clean) if config.clean else None
        volume = config.ndim == 3
        images = load_noisy_images(
            data, clean, channel_axis=config.channel_axis, ndim=config.ndim or 2, axes=config.axes
        )
        anisotropy = None
        if volume:
            anisotropy, _ = anisotropy_of(config.anisotropy, Path(images[0].where), depth=config.depth)
            pools = config.model_copy(update={"anisotropy": anisotropy}).volume_arguments()
            if config.patch_depth % z_step(pools["pool_sizes"]):
                raise UserInputError(
                    f"--patch-depth {config.patch_depth}: must be a multiple of the network's z step "
                    f"{z_step(pools['pool_sizes'])} (anisotropy {anisotropy:g}, depth {config.depth})"
                )
        check_sizes(images, config.patch_size, patch_depth=config.patch_depth if volume else None)
        train, val = split_images(
            images, val_fraction=config.val_fraction, patch_size=config.patch_size, seed=config.seed
        )
        if resume_dir is not None:
            stats = restoration.read_normalization(resume_dir)
        else:
            stats = restoration.normalization_stats(train)
        channels = train[0].shape[-1]
        kind = "volume(s)" if volume else "image(s)"
        return NoisyData(
            channels=channels,
            summary=f"{len(images)} {kind}, {channels} channel(s); model {config.model}, masking "
            f"{config.resolved_replacement}; structN2V axis {config.struct_axis}"
            + (f"; anisotropy {anisotropy:g}" if volume else ""),
            images=images,
            train=[restoration.normalize(image, stats) for image in train],
            val=[restoration.normalize(image, stats) for image in val],
            stats=stats,
            sources={"data": data, "clean": clean},
            demo=resume_dir is None and config.data is None,
            anisotropy=anisotropy,
            voxel_size=voxel_size([Path(image.where) for image in images]) if volume else None,
        )

    def resolve(self, config: DenoiseConfig, data: NoisyData) -> DenoiseConfig:
        if data.anisotropy is None:
            return config.for_ndim(2)
        return config.for_ndim(3).model_copy(update={"anisotropy": data.anisotropy})

    def keep_data(self, data: NoisyData, run_dir: Path) -> None:
        noisy, clean = data.sources["data"], data.sources["clean"]
        if data.demo:  # the embedded demo's images stay with the run, so it can be resumed
            (run_dir / DATA_DIR).mkdir()
            noisy, clean = (Path(shutil.move(p, run_dir / DATA_DIR / p.name)) for p in (noisy, clean))
        write_json(run_dir / NORMALIZATION_FILE, data.stats)
        write_json(
            run_dir / DATA_FILE,
            {"data": str(noisy.resolve()), "clean": str(clean.resolve()) if clean else None},
        )

    def build_model(self, config: DenoiseConfig, channels: int) -> keras.Model:
        model = build_model(
            config.model,
            input_channels=channels,
            **config.network_arguments(),
            **config.volume_arguments(),
            residual=config.residual,
            independent_channels=config.independent_channels,
        )
        model.compile(optimizer=adam(config), loss=MaskedLoss(config.loss))
        return model

    def training_data(
        self, config: DenoiseConfig, data: NoisyData, run_dir: Path, *, first_epoch: int
    ) -> TrainingData:
        mask = masking(config)
        train = training_batches(
            data.train,
            data.train,
            patch_size=config.patch_shape(),
            batch_size=config.batch_size,
            seed=config.seed,
            first_epoch=first_epoch,
            steps_per_epoch=config.steps_per_epoch,
            # The step index seeds the masks: a resumed run masks exactly as an uninterrupted one.
            transform=lambda patches, _, step: mask(patches, TRAINING_MASKS, step),
        )
        val_patches, _ = grid_patches(
            data.val, data.val, patch_size=config.patch_shape(), max_patches=config.val_patches
        )
        # Fixed masks for validation (seeded apart from every training step), so epochs are comparable.
        callbacks = [PeriodicCheckpoint(run_dir, config.checkpoint_every)] if config.checkpoint_every else []
        return TrainingData(train, mask(val_patches, VALIDATION_MASKS), callbacks)

    def evaluate(self, config: DenoiseConfig, data: NoisyData, run_dir: Path, model, runner) -> dict:
        out_dir = run_dir / OUTPUT_DIR
        out_dir.mkdir(exist_ok=True)
        results = []
        for image in data.images:
            if isinstance(image.noisy, LazyView):  # too big to hold: block by block, into OME-Zarr
                target = restoration.restore_lazily(
                    image.noisy, out_dir, image.name, run_dir=run_dir, config=config, model=model,
                    runner=runner, output="denoised",
                )  # fmt: skip
                results.append({"name": image.name, "output": str(target)})
                continue
            denoised = restoration.restore_image(
                model,
                image.noisy,
                stats=data.stats,
                tile_size=config.tile_size,
                tta=config.tta,
                runner=runner,
            )
            target = out_dir / f"{image.name}.tif"
            restoration.write_restored(target, denoised)
            results.append(restoration.compared(image.name, target, denoised, image.noisy, image.clean))
        return {
            "tta": config.tta,
            **({"voxel_size_um": data.voxel_size} if data.voxel_size else {}),
            "images": results,
            **restoration.quality_summary(results),
        }

    def report(self, metrics: dict) -> list[str]:
        return [f"denoised with {metrics['checkpoint']}:", *restoration.quality_lines(metrics["images"])]

    def sample(self, data: NoisyData) -> np.ndarray:
        noisy = data.images[0].noisy
        return noisy.center_crop(512) if isinstance(noisy, LazyView) else noisy

    def declare(self, run_dir: Path, config: DenoiseConfig) -> Declaration:
        stats = restoration.read_normalization(run_dir)
        metrics = read_record(run_dir / METRICS_FILE, "the held-out evaluation")
        pre, post = restoration.declared_processing(stats)
        channels = [f"channel{c}" for c in range(len(stats["mean"]))]
        method = "N2V2" if config.model == "n2v2" else "Noise2Void"
        cite = [N2V] + ([N2V2] if config.model == "n2v2" else [])
        cite += [STRUCT_N2V] if config.struct_axis is not None else []
        scored = [i for i in metrics.get("images", []) if "noisy" in i]
        validation = (
            [
                "PSNR and SSIM against the clean reference (the data range of the clean image):",
                "",
                *restoration.quality_table(scored, before="noisy", after="denoised"),
                "",
                "Noise2Void learns from the noisy images themselves; the image scored here is one the model "
                "was trained on, which is how N2V is used (the clean image was never seen).",
            ]
            if scored
            else ["The run had no clean reference image, so no held-out PSNR was measured."]
        )
        return Declaration(
            task=self.name,
            checkpoint=self.results_checkpoint,
            name=f"{method} denoising ({run_dir.name})",
            description=f"Self-supervised {'3D ' if config.ndim == 3 else ''}{method} denoiser trained on "
            "the noisy images alone with "
            "bioimage-keras-zoo; output in the input's intensities.",
            tags=[
                "denoising",
                "noise2void",
                config.model,
                "self-supervised",
                "3d" if config.ndim == 3 else "2d",
                "keras",
            ],
            cite=cite,
            input=Tensor(
                id="noisy",
                channels=channels,
                processing=pre,
                description="The input is normalised with the training mean and standard deviation "
                "(`fixed_zero_mean_unit_variance`) and the output scaled back (`scale_linear`)."
                + (spacing_note(config.anisotropy) if config.ndim == 3 else ""),
            ),
            output=Tensor(
                id="denoised",
                channels=channels,
                processing=post,
                description="the denoised image, in the input's intensities.",
            ),
            training=[
                *training_lines(
                    config,
                    data=config.data
                    or "scikit-image's `cell` image with added Gaussian noise (the embedded demo)",
                ),
                f"- Masking: {config.mask_fraction} of the pixels per patch, replacement "
                f"{config.replacement}, structN2V axis {config.struct_axis}",
            ],
            validation=validation,
        )

    def output_names(self, stem: str) -> list[str]:
        return [f"{stem}_denoised.tif"]

    def predict_file(self, path: Path, out_dir: Path, *, run_dir: Path, config, model, runner) -> None:
        target = out_dir / self.output_names(path.stem)[0]
        restoration.restore_file(path, target, run_dir=run_dir, config=config, model=model, runner=runner)
        print(f"{path.name}: denoised -> {target}")

    def blockwise(self, run_dir: Path, config):
        return restoration.blockwise_spec(run_dir, config, "denoised")
