"""`python -m training.segment`: train a U-Net to segment cells or nuclei, from a folder of images and
instance masks (or, with no arguments, the embedded synthetic nuclei dataset), evaluate it on held-out
images and leave everything in a run folder.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.callbacks import BEST_CHECKPOINT, LAST_CHECKPOINT, adam
from training.config import SegmentConfig
from training.data import SPLITS, PairSplit, Sample, find_pairs, load_samples
from training.device import make_strategy, set_precision
from training.engines import inference_model
from training.errors import UserInputError
from training.evaluate import POSTPROCESSING_KEYS, evaluate_segmentation, tune_postprocessing
from training.images import read_image
from training.losses import WeightedSparseCategoricalCrossentropy
from training.metrics import format_metrics_table
from training.multiworker import is_chief
from training.pipeline import grid_patches, training_dataset
from training.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    fit,
    new_run_dir,
    read_json,
    removed_unless_resumable,
    training_main,
    write_json,
    write_sample,
)
from training.synthetic import write_synthetic_dataset
from training.targets import CLASS_NAMES
from training.tiling import predict_with_geometry
from zoo import build_model, model_geometry

SPLIT_FILE = "split.json"
POSTPROCESSING_FILE = "postprocessing.json"


def _load_split(split: PairSplit, config: SegmentConfig) -> dict[str, list[Sample]]:
    samples, problems = {}, []
    for name in SPLITS:
        samples[name], bad = load_samples(
            split.pairs[name],
            channel_axis=config.channel_axis,
            percentiles=(config.percentile_low, config.percentile_high),
            boundary_width=config.boundary_width,
        )
        problems += bad
    channels = {s.image.shape[-1] for group in samples.values() for s in group}
    if len(channels) > 1:
        problems.append(f"images of the splits have different numbers of channels {sorted(channels)}")
    if problems:
        raise UserInputError("\n".join(problems))
    return samples


def _split_from_record(record: dict) -> PairSplit:
    data_dir = Path(record["data_dir"])
    split = PairSplit(source=record["source"])
    for name in SPLITS:
        folder = data_dir / name if record["source"] == "folders" else data_dir
        split.pairs[name] = [
            (folder / "images" / image, folder / "masks" / mask) for image, mask in record["pairs"][name]
        ]
    return split


def _build_model(config: SegmentConfig, input_channels: int) -> keras.Model:
    model = build_model(
        config.model,
        input_channels=input_channels,
        num_classes=len(CLASS_NAMES),
        depth=config.depth,
        base_filters=config.base_filters,
        kernel_size=config.kernel_size,
        batch_norm=config.batch_norm,
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


def run(config: SegmentConfig, *, resume_dir: Path | None = None) -> Path:
    """Train, evaluate and return the run folder. With `resume_dir`, continue that run instead."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    staging = None
    if resume_dir is not None:
        split = _split_from_record(read_json(resume_dir / SPLIT_FILE))
    elif config.data is None:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=config.out_dir))
        staging.chmod(0o755)
        print(f"no --data given: generating {config.synthetic_images} synthetic nuclei images")
        write_synthetic_dataset(staging, n_images=config.synthetic_images, seed=config.seed)
        split = find_pairs(staging, seed=config.seed)
    else:
        split = find_pairs(
            Path(config.data),
            split_csv=Path(config.split_csv) if config.split_csv else None,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
        )
    try:
        samples = _load_split(split, config)
        run_dir = resume_dir or new_run_dir(config, "segment")
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise

    with removed_unless_resumable(run_dir) if resume_dir is None else nullcontext():
        if resume_dir is None:
            data_dir = Path(config.data).resolve() if config.data else run_dir / "data"
            if staging is not None:
                staging.rename(data_dir)
            write_json(run_dir / CONFIG_FILE, config.model_dump(mode="json"))
            write_json(
                run_dir / SPLIT_FILE,
                {
                    "data_dir": str(data_dir),
                    "source": split.source,
                    "pairs": {
                        name: [(image.name, mask.name) for image, mask in split.pairs[name]]
                        for name in SPLITS
                    },
                },
            )
        _train(config, samples, run_dir, resume=resume_dir is not None)
        # One raw held-out image (test, else validation) for the package's test tensors and cover;
        # the split record has the paths as they are now (the synthetic data moved into the run folder).
        pairs = _split_from_record(read_json(run_dir / SPLIT_FILE)).pairs
        held_out = pairs["test"] or pairs["val"] or pairs["train"]
        write_sample(run_dir, read_image(held_out[0][0], channel_axis=config.channel_axis))
    return run_dir


def _train(config: SegmentConfig, samples: dict[str, list[Sample]], run_dir: Path, *, resume: bool) -> None:
    precision = set_precision(config.precision)
    strategy = make_strategy(config.distribute, batch_size=config.batch_size)
    channels = samples["train"][0].image.shape[-1]
    print(f"run folder: {run_dir}")
    print(
        f"images: {', '.join(f'{len(samples[s])} {s}' for s in SPLITS)}; {channels} channel(s); "
        f"precision {precision}; {strategy.num_replicas_in_sync} replica(s)"
    )
    with strategy.scope():
        if resume:
            model = keras.models.load_model(run_dir / LAST_CHECKPOINT)
        else:
            model = _build_model(config, channels)
    train_data = training_dataset(
        [s.image for s in samples["train"]],
        [s.classes[..., np.newaxis] for s in samples["train"]],
        patch_size=config.patch_size,
        batch_size=config.batch_size,
        seed=config.seed,
        first_epoch=int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // config.steps_per_epoch,
        steps_per_epoch=config.steps_per_epoch,
    )
    val_data = grid_patches(
        [s.image for s in samples["val"]],
        [s.classes[..., np.newaxis] for s in samples["val"]],
        patch_size=config.patch_size,
        max_patches=config.val_patches,
    )
    fit(model, train_data, val_data, config=config, run_dir=run_dir, resume=resume)
    if not is_chief(config.distribute):
        return  # the chief evaluates

    evaluated_on = "test" if samples["test"] else "val"
    checkpoint = (
        run_dir / BEST_CHECKPOINT if (run_dir / BEST_CHECKPOINT).exists() else run_dir / LAST_CHECKPOINT
    )
    best = keras.models.load_model(checkpoint, compile=False)
    geometry = model_geometry(best)
    # Evaluated as packages and `training.predict` compute: in float32, batch norm folded.
    runner = inference_model(best)
    if config.tune_thresholds and samples["val"]:
        probabilities = [
            predict_with_geometry(runner, s.image, geometry, tile_size=config.tile_size)
            for s in samples["val"]
        ]
        labels = [s.labels for s in samples["val"]]
        tuned = tune_postprocessing(probabilities, labels, config=config)
        tuned["chosen_on"] = [s.name for s in samples["val"]]
        write_json(run_dir / POSTPROCESSING_FILE, tuned)
        config = config.model_copy(update={key: tuned[key] for key in POSTPROCESSING_KEYS})
        print(
            f"\npost-processing chosen on the {len(samples['val'])} validation images: interior > "
            f"{config.interior_threshold}, foreground > {config.foreground_threshold}, objects of at "
            f"least {config.min_object_size} px (F1@0.5 {tuned['f1_at_0.5']:.3f} there)"
        )
        if evaluated_on == "val":
            print("note: no test images, so the scores below are on the images the thresholds were tuned on")
    metrics = {
        "evaluated_on": evaluated_on,
        "checkpoint": checkpoint.name,
        "postprocessing": {key: getattr(config, key) for key in POSTPROCESSING_KEYS},
        **evaluate_segmentation(runner, samples[evaluated_on], geometry=geometry, config=config),
    }
    metrics["geometry"] = {
        "step": geometry.step,
        "halo": geometry.halo,
        "receptive_field": geometry.receptive_field,
    }
    write_json(run_dir / METRICS_FILE, metrics)
    print(f"\n{checkpoint.name} on the {evaluated_on} split ({len(samples[evaluated_on])} images):")
    print(format_metrics_table(metrics["instances"], metrics["pixel_iou"]))
    print(f"\nrun folder: {run_dir}")
    for name in (
        "config.json",
        "best.keras",
        "last.keras",
        "history.csv",
        "curves.png",
        "tensorboard",
        POSTPROCESSING_FILE,
        "metrics.json",
    ):
        print(f"  {run_dir / name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.segment`; returns the exit status."""
    return training_main(SegmentConfig, run, argv, prog="python -m training.segment", description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
