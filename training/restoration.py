"""Image restoration, shared by the tasks whose output is an image (denoising, CARE): normalisation with
the training statistics, tiled prediction back in the original intensities, and quality against a clean
reference.

`normalization.json` holds the per-channel mean and std of the training inputs (`mean`, `std`) and, where
the targets differ from the inputs in intensity (CARE), of the targets (`target`: `mean`, `std`). Without
`target`, outputs are scaled back with the input statistics (Noise2Void: input and target are one image).
The formulas are bioimage.io's `fixed_zero_mean_unit_variance` and `scale_linear`, so a package
normalises exactly as training did.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from base.run_folder import NORMALIZATION_FILE, read_record
from export import processing
from export.declaration import Operation
from training.images import read_image_slices, read_volume, write_tiff_atomic
from training.lazy import LazyView
from training.tiling import Predictor, predict_tta, predict_with_geometry
from zoo import model_geometry


def normalization_stats(images: list[np.ndarray | LazyView]) -> dict[str, list[float]]:
    """Mean and standard deviation per channel over all pixels of `images` ((Y, X, C) each). Images read
    lazily are summed piece by piece (each piece's mean and squared deviations, combined exactly)."""
    if not any(isinstance(im, LazyView) for im in images):
        pixels = np.concatenate([im.reshape(-1, im.shape[-1]) for im in images]).astype(np.float64)
        return {"mean": pixels.mean(axis=0).tolist(), "std": pixels.std(axis=0).tolist()}
    count, mean, squares = 0, 0.0, 0.0
    for image in images:
        pieces = image.pieces() if isinstance(image, LazyView) else [image.reshape(-1, image.shape[-1])]
        for piece in pieces:
            piece = piece.astype(np.float64)
            n, piece_mean = len(piece), piece.mean(axis=0)
            delta = piece_mean - mean
            squares = squares + ((piece - piece_mean) ** 2).sum(axis=0) + delta**2 * count * n / (count + n)
            mean = mean + delta * n / (count + n)
            count += n
    return {"mean": np.asarray(mean).tolist(), "std": np.sqrt(squares / count).tolist()}


def read_normalization(run_dir: Path) -> dict:
    return read_record(run_dir / NORMALIZATION_FILE, "the training mean and std")


def target_stats(stats: dict) -> dict:
    """The statistics that outputs are scaled back with."""
    return stats.get("target", stats)


def normalize(image: np.ndarray | LazyView, stats: dict) -> np.ndarray | LazyView:
    scale = np.array(stats["std"]) + processing.EPS
    if isinstance(image, LazyView):
        return image.normalized(np.array(stats["mean"]), scale)
    return ((image - np.array(stats["mean"])) / scale).astype(np.float32)


def denormalize(output: np.ndarray, stats: dict) -> np.ndarray:
    scale = np.array(stats["std"]) + processing.EPS
    return (output * scale + np.array(stats["mean"])).astype(np.float32)


def declared_processing(stats: dict) -> tuple[list[Operation], list[Operation]]:
    """The rdf pre- and post-processing that compute `normalize` and `denormalize`."""
    out = target_stats(stats)
    return (
        [processing.fixed_zero_mean_unit_variance(stats["mean"], stats["std"])],
        [processing.scale_linear([s + processing.EPS for s in out["std"]], out["mean"])],
    )


def restore_image(
    model: keras.Model,
    image: np.ndarray,
    *,
    stats: dict,
    tile_size: int,
    tta: bool = False,
    runner: Predictor | None = None,
) -> np.ndarray:
    """Restore a (Y, X, C) image (or a (Z, Y, X, C) volume, with a 3D model) in its original
    intensities; returns float32 in the output's intensities. `runner` (default: the model) predicts the
    tiles, e.g. a predictor of `training.engines`."""
    geometry = model_geometry(model)

    def predict(normalized: np.ndarray) -> np.ndarray:
        return predict_with_geometry(runner or model, normalized, geometry, tile_size=tile_size)

    normalized = normalize(image, stats)
    output = predict_tta(predict, normalized) if tta else predict(normalized)
    return denormalize(output, target_stats(stats))


def restore_file(path: Path, target: Path, *, run_dir: Path, config, model: keras.Model, runner) -> None:
    """Restore an image file with a run's model and normalisation, and write it to `target`; `config` is
    the run's options (channel axis, tile size, TTA, and for a 3D network the volume's axes). A 3D stack
    is restored slice by slice by a 2D network, as one volume by a 3D one."""
    stats = read_normalization(run_dir)

    def restored(image: np.ndarray) -> np.ndarray:
        return restore_image(
            model, image, stats=stats, tile_size=config.tile_size, tta=config.tta, runner=runner
        )

    if getattr(config, "ndim", None) == 3:
        write_restored(target, restored(read_volume(path, axes=config.axes).data))
        return
    write_restored(
        target, np.stack([restored(s) for s in read_image_slices(path, channel_axis=config.channel_axis)])
    )


def image_quality(clean: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (scikit-image's) of `image` against `clean`, on the clean image's intensity range."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    data_range = float(clean.max() - clean.min())
    return {
        "psnr": float(peak_signal_noise_ratio(clean, image, data_range=data_range)),
        "ssim": float(structural_similarity(clean, image, data_range=data_range, channel_axis=-1)),
    }


def compared(
    name: str, output: Path, restored: np.ndarray, raw: np.ndarray, clean: np.ndarray | None
) -> dict:
    """One image's entry of metrics.json: where its output went and, with a reference, the quality of
    the raw input and of the restored image, and the PSNR gain."""
    entry = {"name": name, "output": str(output)}
    if clean is not None:
        entry["noisy"] = image_quality(clean, raw)
        entry["denoised"] = image_quality(clean, restored)
        entry["psnr_gain_db"] = entry["denoised"]["psnr"] - entry["noisy"]["psnr"]
    return entry


def quality_summary(entries: list[dict]) -> dict:
    """Means over the images with a reference: PSNR and SSIM of the restored images, PSNR gain."""
    scored = [e for e in entries if "denoised" in e]
    if not scored:
        return {}
    return {
        "mean_psnr": float(np.mean([e["denoised"]["psnr"] for e in scored])),
        "mean_ssim": float(np.mean([e["denoised"]["ssim"] for e in scored])),
        "mean_psnr_gain_db": float(np.mean([e["psnr_gain_db"] for e in scored])),
    }


def quality_lines(entries: list[dict]) -> list[str]:
    """One log line per image: its output and, with a reference, PSNR and SSIM before and after."""
    lines = []
    for r in entries:
        quality = (
            f"  PSNR {r['noisy']['psnr']:.2f} -> {r['denoised']['psnr']:.2f} dB "
            f"(gain {r['psnr_gain_db']:+.2f} dB), SSIM {r['noisy']['ssim']:.3f} -> "
            f"{r['denoised']['ssim']:.3f}"
            if "noisy" in r
            else ""
        )
        lines.append(f"  {r['output']}{quality}")
    return lines


def quality_table(entries: list[dict], *, before: str, after: str) -> list[str]:
    """The documentation's table of PSNR and SSIM per image with a reference."""
    lines = [
        f"| image | PSNR {before} (dB) | PSNR {after} (dB) | gain (dB) | SSIM {before} | SSIM {after} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i in entries:
        lines.append(
            f"| {i['name']} | {i['noisy']['psnr']:.2f} | {i['denoised']['psnr']:.2f} | "
            f"{i['psnr_gain_db']:+.2f} | {i['noisy']['ssim']:.3f} | {i['denoised']['ssim']:.3f} |"
        )
    return lines


def write_restored(path: Path, image: np.ndarray) -> None:
    """A (Y, X, C) or (Z, Y, X, C) float32 image as an ImageJ TIFF, channels and slices kept apart."""
    if image.ndim == 3:
        write_tiff_atomic(path, np.moveaxis(image, -1, 0), imagej=True, metadata={"axes": "CYX"})
    else:
        write_tiff_atomic(path, np.moveaxis(image, -1, 1), imagej=True, metadata={"axes": "ZCYX"})


def blockwise_spec(run_dir: Path, config, output: str):
    """The `training.blockwise.BlockwiseSpec` of a restoration run: the training statistics in, the
    outputs scaled back, written as `output`."""
    from training.blockwise import BlockwiseSpec

    stats = read_normalization(run_dir)
    offset = np.array(stats["mean"], dtype=np.float64)
    divisor = np.array(stats["std"]) + processing.EPS
    return BlockwiseSpec(
        output=output,
        normalization=lambda image: (offset, divisor),
        unscale=lambda result: denormalize(result, target_stats(stats)),
        tta=bool(config.tta),
    )


def restore_lazily(
    view: LazyView,
    out_dir: Path,
    name: str,
    *,
    run_dir: Path,
    config,
    model: keras.Model,
    runner,
    output: str,
) -> Path:
    """Restore an image too big to hold (`training.lazy.LazyView`, unnormalised) block by block into
    `out_dir/NAME.ome.zarr`, as `python -m training.predict` does, with the default memory limit."""
    from training import blockwise

    spec = blockwise_spec(run_dir, config, output)
    sizes = blockwise.plan(view.image, model, spec, budget=blockwise.memory_budget(None))
    job = blockwise.Blockwise(
        image=view.image, spec=spec, predict=runner or model, geometry=model_geometry(model), sizes=sizes,
        out_dir=out_dir, stem=name, names=[f"{name}.tif"],
    )  # fmt: skip
    return job.run(settings={"run": str(run_dir)}, resume=False, overwrite=True)[0]
