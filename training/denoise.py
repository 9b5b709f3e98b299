"""`python -m training.denoise`: train a Noise2Void denoiser (N2V, N2V2 or structN2V) on noisy images alone,
denoise them, and, where a clean reference exists, measure PSNR and SSIM. With no arguments it denoises
scikit-image's `cell` image with added Gaussian noise of known strength and reports the PSNR gain.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tifffile

from training.callbacks import BEST_CHECKPOINT, LAST_CHECKPOINT, PeriodicCheckpoint, adam
from training.config import DenoiseConfig
from training.device import make_strategy, set_precision
from training.engines import inference_model
from training.errors import UserInputError
from training.images import list_images, read_image_slices, write_tiff_atomic
from training.masking import MaskedLoss, blind_spot_mask
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
from training.tiling import predict_tta, predict_with_geometry
from zoo import build_model, model_geometry

NORMALIZATION_FILE = "normalization.json"
DATA_FILE = "data.json"
# N2V's validation loss compares predictions with noisy pixels, so its minimum is a noisy pick; the last
# checkpoint, whose weights are averaged over the last steps (`average_steps`), is the steadier choice,
# and the one used and exported.
DEFAULT_CHECKPOINT = LAST_CHECKPOINT


@dataclass
class NoisyImage:
    """One noisy 2D image (Y, X, C) in its original intensities, with its clean reference if any."""

    name: str
    noisy: np.ndarray
    clean: np.ndarray | None = None
    where: str = ""  # the file (and slice) it came from, for messages


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise UserInputError(f"{path}: no images (.tif, .tiff, .png) in this folder")
        return files
    if not path.exists():
        raise UserInputError(f"{path}: no such file or folder")
    return [path]


def load_noisy_images(data: Path, clean: Path | None, *, channel_axis: int | None) -> list[NoisyImage]:
    """Read every noisy image (3D stacks as 2D slices) and its clean reference; all problems at once."""
    images, problems = [], []
    clean_files = {p.stem: p for p in _files(clean)} if clean is not None else {}
    for path in _files(data):
        try:
            slices = read_image_slices(path, channel_axis=channel_axis)
            references: list[np.ndarray | None] = [None] * len(slices)
            if clean is not None:
                reference = clean_files.get(path.stem) or (
                    clean_files.popitem()[1] if clean.is_file() else None
                )
                if reference is None:
                    raise UserInputError(f"{path}: no clean reference named {path.stem}.* in {clean}")
                references = read_image_slices(reference, channel_axis=channel_axis)
                if [r.shape for r in references] != [s.shape for s in slices]:
                    raise UserInputError(f"{reference}: clean reference shape differs from {path.name}")
        except UserInputError as error:
            problems.append(str(error))
            continue
        for index, (noisy, reference) in enumerate(zip(slices, references, strict=True)):
            if len(slices) == 1:
                images.append(NoisyImage(path.stem, noisy, reference, str(path)))
            else:
                images.append(
                    NoisyImage(f"{path.stem}_z{index:04d}", noisy, reference, f"{path} (slice {index})")
                )
    if problems:
        raise UserInputError("\n".join(problems))
    channels = {image.noisy.shape[-1] for image in images}
    if len(channels) > 1:
        raise UserInputError(f"{data}: images have different numbers of channels {sorted(channels)}")
    return images


def embedded_demo(out_dir: Path, *, sigma: float, seed: int) -> tuple[Path, Path]:
    """scikit-image's `cell` (a quantitative phase image of a cell, CC0, shipped in its wheel), with
    Gaussian noise of `sigma` on the 0-255 scale; writes noisy.tif and clean.tif into `out_dir`."""
    from skimage import data as skimage_data

    clean = skimage_data.cell().astype(np.float32)
    noisy = clean + np.random.default_rng(seed).normal(0.0, sigma, clean.shape).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out_dir / "noisy.tif", noisy)
    tifffile.imwrite(out_dir / "clean.tif", clean)
    return out_dir / "noisy.tif", out_dir / "clean.tif"


def normalization_stats(images: list[np.ndarray]) -> dict[str, list[float]]:
    """Mean and standard deviation per channel over all training pixels."""
    pixels = np.concatenate([im.reshape(-1, im.shape[-1]) for im in images]).astype(np.float64)
    return {"mean": pixels.mean(axis=0).tolist(), "std": pixels.std(axis=0).tolist()}


# bioimage.io's `fixed_zero_mean_unit_variance` divides by std + 1e-6; training does the same, so an
# exported package normalises exactly as training did.
NORMALIZATION_EPS = 1e-6


def _normalize(image: np.ndarray, stats: dict) -> np.ndarray:
    scale = np.array(stats["std"]) + NORMALIZATION_EPS
    return ((image - np.array(stats["mean"])) / scale).astype(np.float32)


def _denormalize(output: np.ndarray, stats: dict) -> np.ndarray:
    scale = np.array(stats["std"]) + NORMALIZATION_EPS
    return (output * scale + np.array(stats["mean"])).astype(np.float32)


def split_images(
    images: list[NoisyImage], *, val_fraction: float, patch_size: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training and validation arrays: whole images held out when there are at least 3, otherwise the
    bottom rows of every image (validation patches never overlap training pixels)."""
    arrays = [image.noisy for image in images]
    if len(arrays) >= 3:
        order = np.random.default_rng(seed).permutation(len(arrays))
        n_val = max(1, round(val_fraction * len(arrays)))
        return [arrays[i] for i in order[n_val:]], [arrays[i] for i in order[:n_val]]
    train, val = [], []
    for image in images:
        rows = max(round(val_fraction * image.noisy.shape[0]), patch_size // 2)
        if image.noisy.shape[0] - rows < patch_size // 2:
            raise UserInputError(
                f"{image.where or image.name}: {image.noisy.shape[0]} rows are too few to hold out "
                f"{rows} validation rows and train on patches of {patch_size}"
            )
        train.append(image.noisy[:-rows])
        val.append(image.noisy[-rows:])
    return train, val


def _check_sizes(images: list[NoisyImage], patch_size: int) -> None:
    problems = []
    for image in images:
        height, width = image.noisy.shape[:2]
        # Mirror padding can stretch an image to the patch size, but not from less than half of it.
        if min(height, width) < patch_size // 2:
            problems.append(
                f"{image.where or image.name}: image of {height}x{width} pixels is too small for patches of "
                f"{patch_size} (needs at least {patch_size // 2} per side; lower --patch-size)"
            )
        if np.all(image.noisy == image.noisy.reshape(-1, image.noisy.shape[-1])[0]):
            problems.append(f"{image.where or image.name}: image is constant; there is nothing to denoise")
    if problems:
        raise UserInputError("\n".join(problems))


def _masking(config: DenoiseConfig):
    def mask(patches: tf.Tensor, step: tf.Tensor):
        seed = tf.stack([tf.cast(config.seed, tf.int64), step])
        return blind_spot_mask(
            patches,
            seed,
            fraction=config.mask_fraction,
            radius=config.mask_radius,
            replacement=config.resolved_replacement,
            struct_axis=config.struct_axis,
            struct_span=config.struct_span,
            independent_channels=config.independent_channels,
        )

    return mask


def _build_model(config: DenoiseConfig, channels: int) -> keras.Model:
    model = build_model(
        config.model,
        input_channels=channels,
        depth=config.depth,
        base_filters=config.base_filters,
        kernel_size=config.kernel_size,
        batch_norm=config.batch_norm,
        residual=config.residual,
        independent_channels=config.independent_channels,
    )
    model.compile(optimizer=adam(config), loss=MaskedLoss(config.loss))
    return model


def denoise_image(
    model: keras.Model, image: np.ndarray, *, stats: dict, config: DenoiseConfig, runner=None
) -> np.ndarray:
    """Denoise a (Y, X, C) image in its original intensities; returns float32 in the same intensities.
    `runner` (default: the model) predicts the tiles, e.g. an onnxruntime predictor of `training.engines`."""
    geometry = model_geometry(model)

    def predict(normalized: np.ndarray) -> np.ndarray:
        return predict_with_geometry(runner or model, normalized, geometry, tile_size=config.tile_size)

    normalized = _normalize(image, stats)
    output = predict_tta(predict, normalized) if config.tta else predict(normalized)
    return _denormalize(output, stats)


def image_quality(clean: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (scikit-image's) of `image` against `clean`, on the clean image's intensity range."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    data_range = float(clean.max() - clean.min())
    return {
        "psnr": float(peak_signal_noise_ratio(clean, image, data_range=data_range)),
        "ssim": float(structural_similarity(clean, image, data_range=data_range, channel_axis=-1)),
    }


def run(config: DenoiseConfig, *, resume_dir: Path | None = None) -> Path:
    """Train, denoise the input images and return the run folder. With `resume_dir`, continue that run."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    with tempfile.TemporaryDirectory() as scratch:
        if resume_dir is not None:
            record = read_json(resume_dir / DATA_FILE)
            data = Path(record["data"])
            clean = Path(record["clean"]) if record["clean"] else None
        elif config.data is None:
            print(f"no --data given: scikit-image's `cell` image, Gaussian noise sigma {config.noise_sigma}")
            data, clean = embedded_demo(Path(scratch), sigma=config.noise_sigma, seed=config.seed)
        else:
            data, clean = Path(config.data), Path(config.clean) if config.clean else None
        images = load_noisy_images(data, clean, channel_axis=config.channel_axis)
        _check_sizes(images, config.patch_size)
        run_dir = resume_dir or new_run_dir(config, "denoise")
        with removed_unless_resumable(run_dir) if resume_dir is None else nullcontext():
            if resume_dir is None:
                if config.data is None:  # keep the demo's images with the run, so it can be resumed
                    (run_dir / "data").mkdir()
                    data, clean = (Path(shutil.move(p, run_dir / "data" / p.name)) for p in (data, clean))
                write_json(run_dir / CONFIG_FILE, config.model_dump(mode="json"))
                write_json(
                    run_dir / DATA_FILE,
                    {
                        "data": str(Path(data).resolve()),
                        "clean": str(Path(clean).resolve()) if clean else None,
                    },
                )
            _train_and_denoise(config, images, run_dir, resume=resume_dir is not None)
    return run_dir


def _train_and_denoise(
    config: DenoiseConfig, images: list[NoisyImage], run_dir: Path, *, resume: bool
) -> None:
    precision = set_precision(config.precision)
    strategy = make_strategy(config.distribute, batch_size=config.batch_size)
    train, val = split_images(
        images, val_fraction=config.val_fraction, patch_size=config.patch_size, seed=config.seed
    )
    if resume:
        stats = read_json(run_dir / NORMALIZATION_FILE)
    else:
        stats = normalization_stats(train)
        write_json(run_dir / NORMALIZATION_FILE, stats)
    train = [_normalize(image, stats) for image in train]
    val = [_normalize(image, stats) for image in val]
    channels = train[0].shape[-1]
    print(f"run folder: {run_dir}")
    print(
        f"{len(images)} image(s), {channels} channel(s); model {config.model}, masking "
        f"{config.resolved_replacement}; structN2V axis {config.struct_axis}; "
        f"precision {precision}; {strategy.num_replicas_in_sync} replica(s)"
    )
    with strategy.scope():
        model = (
            keras.models.load_model(run_dir / LAST_CHECKPOINT) if resume else _build_model(config, channels)
        )
    first_epoch = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // config.steps_per_epoch
    mask = _masking(config)
    train_data = training_dataset(
        train,
        train,
        patch_size=config.patch_size,
        batch_size=config.batch_size,
        seed=config.seed,
        first_epoch=first_epoch,
        steps_per_epoch=config.steps_per_epoch,
    )
    # The step index seeds the masks: a resumed run masks exactly as an uninterrupted one.
    train_data = train_data.enumerate(start=first_epoch * config.steps_per_epoch).map(
        lambda step, batch: mask(batch[0], step), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    val_patches, _ = grid_patches(val, val, patch_size=config.patch_size, max_patches=config.val_patches)
    # Fixed masks for validation (seeded away from every training step), so epochs are comparable.
    val_x, val_y = mask(tf.constant(val_patches), tf.constant(-1, tf.int64))
    extra = [PeriodicCheckpoint(run_dir, config.checkpoint_every)] if config.checkpoint_every else []
    fit(
        model,
        train_data,
        (val_x.numpy(), val_y.numpy()),
        config=config,
        run_dir=run_dir,
        resume=resume,
        extra_callbacks=extra,
    )
    if not is_chief(config.distribute):
        return  # the chief evaluates

    checkpoint = run_dir / DEFAULT_CHECKPOINT
    final = keras.models.load_model(checkpoint, compile=False)
    # Evaluated as packages and `training.predict` compute: in float32, batch norm folded.
    runner = inference_model(final)
    out_dir = run_dir / "denoised"
    out_dir.mkdir(exist_ok=True)
    results = []
    for image in images:
        denoised = denoise_image(final, image.noisy, stats=stats, config=config, runner=runner)
        write_tiff_atomic(
            out_dir / f"{image.name}.tif", np.moveaxis(denoised, -1, 0), imagej=True, metadata={"axes": "CYX"}
        )
        entry = {"name": image.name, "output": str(out_dir / f"{image.name}.tif")}
        if image.clean is not None:
            entry["noisy"] = image_quality(image.clean, image.noisy)
            entry["denoised"] = image_quality(image.clean, denoised)
            entry["psnr_gain_db"] = entry["denoised"]["psnr"] - entry["noisy"]["psnr"]
        results.append(entry)
    metrics = {"checkpoint": checkpoint.name, "tta": config.tta, "images": results}
    gains = [r["psnr_gain_db"] for r in results if "psnr_gain_db" in r]
    if gains:
        metrics["mean_psnr_gain_db"] = float(np.mean(gains))
    write_json(run_dir / METRICS_FILE, metrics)
    write_sample(run_dir, images[0].noisy)
    print(f"\ndenoised with {checkpoint.name}:")
    for r in results:
        quality = (
            f"  PSNR {r['noisy']['psnr']:.2f} -> {r['denoised']['psnr']:.2f} dB "
            f"(gain {r['psnr_gain_db']:+.2f} dB), SSIM {r['noisy']['ssim']:.3f} -> "
            f"{r['denoised']['ssim']:.3f}"
            if "noisy" in r
            else ""
        )
        print(f"  {r['output']}{quality}")
    print(f"\nrun folder: {run_dir}")
    for name in (
        CONFIG_FILE,
        NORMALIZATION_FILE,
        BEST_CHECKPOINT,
        LAST_CHECKPOINT,
        "history.csv",
        "curves.png",
        "tensorboard",
        METRICS_FILE,
    ):
        print(f"  {run_dir / name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.denoise`; returns the exit status."""
    return training_main(DenoiseConfig, run, argv, prog="python -m training.denoise", description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
