"""Instance segmentation by a U-Net that classifies every pixel as background / interior / boundary,
learned from instance masks, and turned back into one label per cell by a seeded watershed whose
thresholds are tuned on the validation images: the task object.

Data: `training.data` (image/mask pairs and their split); targets: `training.targets`; evaluation and
threshold tuning: `training.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np
from pydantic import Field, model_validator

from base.errors import UserInputError
from base.run_folder import (
    DATA_DIR,
    METRICS_FILE,
    POSTPROCESSING_FILE,
    SAMPLE_FILE,
    read_record,
)
from export import processing
from export.declaration import Citation, Declaration, Instances, Tensor
from training.callbacks import adam
from training.config import PairSplitOptions, TrainingConfig, UNetOptions, VolumeOptions
from training.data import SPLITS, PairSplit, Sample, find_pairs, keep_split, load_samples, recorded_split
from training.evaluate import (
    POSTPROCESSING_KEYS,
    evaluate_segmentation,
    predict_segmentation,
    tune_postprocessing,
)
from training.files import write_json
from training.images import declared_shape, percentile_normalize, read_image, read_volume, write_tiff_atomic
from training.losses import WeightedSparseCategoricalCrossentropy
from training.metrics import format_metrics_table
from training.pipeline import grid_patches, training_batches
from training.synthetic_files import write_synthetic_dataset, write_synthetic_volumes
from training.targets import CLASS_NAMES
from training.task import NETWORK_OPTIONS, Task, TaskData, TrainingData, training_lines
from training.tiling import predict_with_geometry
from training.volumes import files_anisotropy, spacing_note, thin_volumes, voxel_size, z_step
from zoo import build_model, model_geometry

UNET = Citation(
    text="Ronneberger, Fischer and Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015.",
    doi="10.1007/978-3-319-24574-4_28",
)
# Cover colours of the classes: background dark, interior green, boundary magenta.
CLASS_COLOURS = [(0, 0, 0), (60, 220, 90), (230, 60, 200)]


class SegmentConfig(UNetOptions, VolumeOptions, PairSplitOptions, TrainingConfig):
    """Semantic segmentation into background / interior / boundary, turned back into instances."""

    task: Literal["segment"] = Field(
        "segment", description="What the run learns.", json_schema_extra={"cli": False}
    )

    data: str | None = Field(
        None,
        description="Folder with images/ and masks/ (matched by file name; volumes where the masks are "
        "volumes); none: the embedded synthetic nuclei dataset (volumes with --ndim 3).",
    )
    synthetic_images: int = Field(
        32, ge=3, le=10_000, description="Images (or volumes) of the embedded synthetic dataset."
    )
    percentile_low: float = Field(
        1.0, ge=0, lt=100, description="Lower percentile of per-image normalisation."
    )
    percentile_high: float = Field(99.8, gt=0, le=100, description="Upper percentile of normalisation.")

    patch_size: int = Field(
        128,
        ge=16,
        le=4096,
        description="Side of the square training patches, in pixels; volumes: of their y-x plane, 64 "
        "unless given.",
    )
    batch_size: int = Field(
        8, ge=1, le=4096, description="Global batch size (split across replicas); volumes: 4 unless given."
    )
    epochs: int = Field(20, ge=1, le=100_000, description="Number of epochs.")
    steps_per_epoch: int = Field(40, ge=1, le=1_000_000, description="Training batches per epoch.")
    model: Literal["unet"] = Field("unet", description="Registered model to train.")
    depth: int = Field(3, ge=1, le=6, description="U-Net depth (number of 2x down-samplings).")
    base_filters: int = Field(16, ge=1, le=512, description="Filters of the first U-Net level.")
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

    @model_validator(mode="after")
    def _check_segment(self) -> SegmentConfig:
        if self.percentile_low >= self.percentile_high:
            raise ValueError("percentile_low must be smaller than percentile_high")
        if any(w < 0 for w in self.class_weights):
            raise ValueError("class_weights must not be negative")
        return self


@dataclass
class SegmentationData(TaskData):
    split: PairSplit
    samples: dict[str, list[Sample]]
    held_out: np.ndarray  # one raw held-out image (test, else validation), for the package
    demo: bool  # generated (the embedded demo), to be kept in the run folder
    ndim: int  # spatial axes: 2 (images) or 3 (volumes)
    anisotropy: float  # volumes: z spacing / xy pixel size
    voxel_size: dict | None = None  # volumes: micrometres along z, y, x, where the files give them


def _with_channel(classes):
    """A class map as (*spatial, 1); a lazily read one (`training.lazy.LazyClasses`) already is."""
    return classes[..., np.newaxis] if isinstance(classes, np.ndarray) else classes


def _load_split(split: PairSplit, config: SegmentConfig, *, ndim: int, anisotropy: float):
    samples, problems = {}, []
    for name in SPLITS:
        samples[name], bad = load_samples(
            split.pairs[name],
            channel_axis=config.channel_axis,
            percentiles=(config.percentile_low, config.percentile_high),
            boundary_width=config.boundary_width,
            ndim=ndim,
            axes=config.axes,
            anisotropy=anisotropy,
        )
        problems += bad
    channels = {s.image.shape[-1] for group in samples.values() for s in group}
    if len(channels) > 1:
        problems.append(f"images of the splits have different numbers of channels {sorted(channels)}")
    if ndim == 3 and not problems:
        shapes = {
            str(path): sample.image.shape
            for name in SPLITS
            for (path, _), sample in zip(split.pairs[name], samples[name], strict=True)
        }
        problems += thin_volumes(shapes, patch_depth=config.patch_depth)
    for name in ("val", "test") if not problems else ():
        for (path, _), sample in zip(split.pairs[name], samples[name], strict=True):
            if not isinstance(sample.image, np.ndarray):
                problems.append(
                    f"{path}: too big to hold, so it can only train (read patch by patch); validation and "
                    "test images must fit in memory (choose the split with --split-csv)"
                )
    if problems:
        raise UserInputError("\n".join(problems))
    return samples


def _spatial_axes(config: SegmentConfig, split: PairSplit) -> int:
    """--ndim, else 3 where the first readable training mask is a volume (its axes given or squeezed),
    else 2. An unreadable mask is passed over here: loading names it, with every other bad file."""
    if config.ndim is not None:
        return config.ndim
    if config.axes:
        return 3 if "Z" in config.axes.upper() else 2
    for _, mask in split.pairs["train"]:
        try:
            shape = declared_shape(mask)
        except UserInputError:
            continue
        return 3 if sum(n > 1 for n in shape) >= 3 else 2
    return 2


class SegmentTask(Task):
    name = "segment"
    options = SegmentConfig
    summary = (
        "Train a U-Net to segment cells or nuclei from a folder of images and instance masks (or, with no "
        "--data, the embedded synthetic nuclei dataset), evaluate it on held-out images and leave "
        "everything in a run folder."
    )
    results_checkpoint = "best"
    source_options = (*NETWORK_OPTIONS, "upsampling", "boundary_width", "percentile_low", "percentile_high")

    def load_data(
        self, config: SegmentConfig, *, resume_dir: Path | None, scratch: Path | None
    ) -> SegmentationData:
        ndim = config.ndim or 2
        if resume_dir is not None:
            split = recorded_split(resume_dir)
        elif config.data is None:
            kind = "volumes" if ndim == 3 else "images"
            print(f"no --data given: generating {config.synthetic_images} synthetic nuclei {kind}")
            if ndim == 3:
                write_synthetic_volumes(
                    scratch / DATA_DIR, n_volumes=config.synthetic_images, seed=config.seed
                )
            else:
                write_synthetic_dataset(
                    scratch / DATA_DIR, n_images=config.synthetic_images, seed=config.seed
                )
            split = find_pairs(scratch / DATA_DIR, seed=config.seed)
        else:
            split = find_pairs(
                Path(config.data),
                split_csv=Path(config.split_csv) if config.split_csv else None,
                val_fraction=config.val_fraction,
                test_fraction=config.test_fraction,
                seed=config.seed,
            )
            ndim = _spatial_axes(config, split)
        config = config.for_ndim(ndim)
        anisotropy, source = 1.0, ""
        if ndim == 3:
            images = [image for name in SPLITS for image, _ in split.pairs[name]]
            anisotropy, source = files_anisotropy(config.anisotropy, images, depth=config.depth)
            pools = config.model_copy(update={"ndim": 3, "anisotropy": anisotropy}).volume_arguments()
            if config.patch_depth % z_step(pools["pool_sizes"]):
                raise UserInputError(
                    f"--patch-depth {config.patch_depth}: must be a multiple of the network's z step "
                    f"{z_step(pools['pool_sizes'])} (anisotropy {anisotropy:g}, depth {config.depth})"
                )
        samples = _load_split(split, config, ndim=ndim, anisotropy=anisotropy)
        held_out = split.pairs["test"] or split.pairs["val"] or split.pairs["train"]
        channels = samples["train"][0].image.shape[-1]
        kind = "volumes" if ndim == 3 else "images"
        return SegmentationData(
            channels=channels,
            summary=f"{kind}: {', '.join(f'{len(samples[s])} {s}' for s in SPLITS)}; {channels} channel(s)"
            + (f"; anisotropy {anisotropy:g} ({source})" if ndim == 3 else ""),
            split=split,
            samples=samples,
            held_out=(
                read_volume(held_out[0][0], axes=config.axes).data
                if ndim == 3
                else read_image(held_out[0][0], channel_axis=config.channel_axis)
            ),
            demo=resume_dir is None and config.data is None,
            ndim=ndim,
            anisotropy=anisotropy,
            voxel_size=voxel_size(images) if ndim == 3 else None,
        )

    def resolve(self, config: SegmentConfig, data: SegmentationData) -> SegmentConfig:
        if data.ndim == 2:
            return config.for_ndim(2)
        return config.for_ndim(3).model_copy(update={"anisotropy": data.anisotropy})

    def keep_data(self, data: SegmentationData, run_dir: Path) -> None:
        keep_split(data.split, run_dir, generated=data.demo)

    def build_model(self, config: SegmentConfig, channels: int) -> keras.Model:
        model = build_model(
            config.model,
            input_channels=channels,
            num_classes=len(CLASS_NAMES),
            **config.network_arguments(),
            **config.volume_arguments(),
            dropout=config.dropout,
            upsampling=config.upsampling,
            final_activation="softmax",
        )
        model.compile(
            optimizer=adam(config),
            loss=WeightedSparseCategoricalCrossentropy(config.class_weights),
            metrics=[keras.metrics.MeanIoU(len(CLASS_NAMES), sparse_y_pred=False, name="mean_iou")],
        )
        return model

    def training_data(
        self, config: SegmentConfig, data: SegmentationData, run_dir: Path, *, first_epoch: int
    ) -> TrainingData:
        train, val = data.samples["train"], data.samples["val"]
        train_data = training_batches(
            [s.image for s in train],
            [_with_channel(s.classes) for s in train],
            patch_size=config.patch_shape(),
            batch_size=config.batch_size,
            seed=config.seed,
            first_epoch=first_epoch,
            steps_per_epoch=config.steps_per_epoch,
        )
        val_data = grid_patches(
            [s.image for s in val],
            [s.classes[..., np.newaxis] for s in val],
            patch_size=config.patch_shape(),
            max_patches=config.val_patches,
        )
        return TrainingData(train_data, val_data)

    def evaluate(self, config: SegmentConfig, data: SegmentationData, run_dir: Path, model, runner) -> dict:
        samples = data.samples
        evaluated_on = "test" if samples["test"] else "val"
        geometry = model_geometry(model)
        if config.tune_thresholds and samples["val"]:
            probabilities = [
                predict_with_geometry(runner, s.image, geometry, tile_size=config.tile_size)
                for s in samples["val"]
            ]
            tuned = tune_postprocessing(probabilities, [s.labels for s in samples["val"]], config=config)
            tuned["chosen_on"] = [s.name for s in samples["val"]]
            write_json(run_dir / POSTPROCESSING_FILE, tuned)
            config = config.model_copy(update={key: tuned[key] for key in POSTPROCESSING_KEYS})
            print(
                f"\npost-processing chosen on the {len(samples['val'])} validation images: interior > "
                f"{config.interior_threshold}, foreground > {config.foreground_threshold}, objects of at "
                f"least {config.min_object_size} px (F1@0.5 {tuned['f1_at_0.5']:.3f} there)"
            )
            if evaluated_on == "val":
                print(
                    "note: no test images, so the scores below are on the images the thresholds were tuned on"
                )
        return {
            "evaluated_on": evaluated_on,
            **({"voxel_size_um": data.voxel_size} if data.voxel_size else {}),
            "postprocessing": {key: getattr(config, key) for key in POSTPROCESSING_KEYS},
            **evaluate_segmentation(runner, samples[evaluated_on], geometry=geometry, config=config),
            # Per spatial axis, (z,) y, x.
            "geometry": {
                "step": list(geometry.steps),
                "halo": list(geometry.halos),
                "receptive_field": list(geometry.receptive_fields),
            },
        }

    def report(self, metrics: dict) -> list[str]:
        return [
            f"{metrics['checkpoint']} on the {metrics['evaluated_on']} split "
            f"({len(metrics['images'])} images):",
            format_metrics_table(metrics["instances"], metrics["pixel_iou"]),
        ]

    def sample(self, data: SegmentationData) -> np.ndarray:
        return data.held_out

    def declare(self, run_dir: Path, config: SegmentConfig) -> Declaration:
        m = read_record(run_dir / METRICS_FILE, "the held-out evaluation")
        instances, iou, post = m.get("instances", {}), m.get("pixel_iou", {}), m.get("postprocessing", {})
        validation = [
            f"Held-out **{m.get('evaluated_on', '?')}** images of the run ({instances.get('n_images', '?')} "
            f"images, {instances.get('n_true', '?')} objects), never used for training or for choosing "
            "the thresholds:",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        first = (instances.get("per_threshold") or [{}])[0]
        for label, value in [
            ("instance F1 at IoU 0.5", instances.get("f1_at_0.5")),
            ("precision at IoU 0.5", first.get("precision")),
            ("recall at IoU 0.5", first.get("recall")),
            ("mean average precision, IoU 0.5:0.9", instances.get("mean_average_precision")),
            *[(f"pixel IoU, {name}", value) for name, value in iou.items()],
        ]:
            validation.append(
                f"| {label} | {value:.3f} |" if isinstance(value, (int, float)) else f"| {label} | - |"
            )
        validation += [
            "",
            "Instances come from the probabilities by a seeded watershed: pixels with interior probability "
            f"above {post.get('interior_threshold', '?')} are seeds, pixels with interior + boundary above "
            f"{post.get('foreground_threshold', '?')} are foreground, objects under "
            f"{post.get('min_object_size', '?')} px are dropped (thresholds chosen on the validation "
            "images).",
        ]
        channels = int(np.load(run_dir / SAMPLE_FILE, mmap_mode="r").shape[-1])
        dims, pixel = ("3D", "voxel") if config.ndim == 3 else ("2D", "pixel")
        # The thresholds prediction uses, for the package's ImageJ macro (cells in Fiji).
        thresholds = self.prediction_config(run_dir, config)
        return Declaration(
            task=self.name,
            checkpoint=self.results_checkpoint,
            name=f"U-Net cell segmentation ({run_dir.name})",
            description=f"{dims} U-Net that classifies every {pixel} as background, cell interior or cell "
            "boundary "
            "(softmax probabilities), trained with bioimage-keras-zoo; instances follow from a seeded "
            "watershed of the interior probabilities.",
            tags=["segmentation", "instance-segmentation", "unet", dims.lower(), "keras", "cells"],
            cite=[UNET],
            input=Tensor(
                id="raw",
                channels=[f"channel{c}" for c in range(channels)],
                processing=[
                    processing.scale_range(
                        config.percentile_low,
                        config.percentile_high,
                        axes=("z", "y", "x") if config.ndim == 3 else ("y", "x"),
                    )
                ],
                description=f"Each image is normalised per channel to its {config.percentile_low}th and "
                f"{config.percentile_high}th percentiles (`scale_range`)."
                + (spacing_note(config.anisotropy) if config.ndim == 3 else ""),
            ),
            output=Tensor(
                id="probabilities",
                channels=list(CLASS_NAMES),
                description=f"softmax probabilities of the classes {', '.join(CLASS_NAMES)} (they sum to 1).",
            ),
            cover_colours=CLASS_COLOURS,
            training=training_lines(
                config, data=config.data or "the embedded synthetic nuclei dataset of bioimage-keras-zoo"
            ),
            validation=validation,
            instances=Instances(**{key: getattr(thresholds, key) for key in POSTPROCESSING_KEYS}),
        )

    def prediction_config(self, run_dir: Path, config: SegmentConfig) -> SegmentConfig:
        if not (run_dir / POSTPROCESSING_FILE).is_file():
            return config
        # The thresholds the run chose on its validation images replace the configured ones.
        tuned = read_record(run_dir / POSTPROCESSING_FILE, "the tuned thresholds")
        return config.model_copy(update={key: tuned[key] for key in POSTPROCESSING_KEYS})

    def output_names(self, stem: str) -> list[str]:
        return [f"{stem}_probabilities.tif", f"{stem}_labels.tif"]

    def predict_file(
        self, path: Path, out_dir: Path, *, run_dir: Path, config: SegmentConfig, model, runner
    ) -> None:
        if config.ndim == 3:
            image = read_volume(path, axes=config.axes).data
        else:
            image = read_image(path, channel_axis=config.channel_axis)
        image = percentile_normalize(image, config.percentile_low, config.percentile_high)
        probabilities, instances = predict_segmentation(
            runner, image, geometry=model_geometry(model), config=config
        )
        targets = [out_dir / name for name in self.output_names(path.stem)]
        # Channels before y and x (ImageJ's order): CYX, or ZCYX for a volume.
        write_tiff_atomic(
            targets[0],
            np.moveaxis(probabilities, -1, -3),
            imagej=True,
            metadata={"axes": "ZCYX" if config.ndim == 3 else "CYX"},
        )
        label_dtype = np.uint16 if instances.max() < 2**16 else np.uint32
        write_tiff_atomic(
            targets[1],
            instances.astype(label_dtype),
            imagej=label_dtype == np.uint16,
            **({"metadata": {"axes": "ZYX"}} if config.ndim == 3 and label_dtype == np.uint16 else {}),
        )
        print(f"{path.name}: {int(instances.max())} objects -> {targets[1]}")

    def blockwise(self, run_dir: Path, config: SegmentConfig):
        from training.blockwise import BlockwiseSpec, exact_percentiles
        from training.images import NORMALIZE_EPS

        def normalization(image) -> tuple[np.ndarray, np.ndarray]:
            lower, upper = exact_percentiles(image, [config.percentile_low, config.percentile_high])
            return lower, upper - lower + NORMALIZE_EPS  # as training.images.percentile_normalize

        labels = {
            "interior_threshold": config.interior_threshold,
            "foreground_threshold": config.foreground_threshold,
            "min_size": config.min_object_size,
        }
        return BlockwiseSpec(output="probabilities", normalization=normalization, labels=labels)
