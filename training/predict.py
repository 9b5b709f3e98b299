"""`python -m training.predict RUN_DIR INPUT... --out OUT_DIR`: apply a trained run to new images.

For a segmentation run, each input image NAME gives `NAME_probabilities.tif` (float32, classes
background / interior / boundary as ImageJ channels) and `NAME_labels.tif` (instance labels); for a
denoising run, `NAME_denoised.tif` (float32, in the input's intensities; a 3D stack is denoised slice by
slice). Every file is written atomically. Images are normalised exactly as in training and predicted in
tiles, so any size works. A bad input file is reported and skipped; the others are still written; the
exit status is 2 if any file was bad.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np

from training.callbacks import BEST_CHECKPOINT, LAST_CHECKPOINT
from training.cli import run_main
from training.config import DenoiseConfig, SegmentConfig, build_config
from training.denoise import NORMALIZATION_FILE, denoise_image
from training.engines import ENGINES, PRECISIONS, has_native_bfloat16, predictor
from training.errors import UserInputError
from training.evaluate import POSTPROCESSING_KEYS, predict_segmentation
from training.images import (
    IMAGE_SUFFIXES,
    list_images,
    percentile_normalize,
    read_image,
    read_image_slices,
    write_tiff_atomic,
)
from training.runs import CONFIG_FILE, read_json
from training.segment import POSTPROCESSING_FILE
from training.tiling import Predictor
from zoo import model_geometry


def _inputs(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise UserInputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserInputError(f"{path}: no such file or folder")
    return files


def load_run(run_dir: Path, checkpoint: str | None) -> tuple[SegmentConfig | DenoiseConfig, keras.Model]:
    """The config and the chosen checkpoint (`best` or `last`; None: the task's default) of a run folder."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserInputError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    values = read_json(run_dir / CONFIG_FILE)
    cls = DenoiseConfig if values.get("task") == "denoise" else SegmentConfig
    config = build_config(cls, values, source=str(run_dir / CONFIG_FILE))
    if config.task == "segment" and (run_dir / POSTPROCESSING_FILE).is_file():
        # The thresholds the run chose on its validation images replace the configured ones.
        tuned = read_json(run_dir / POSTPROCESSING_FILE)
        config = config.model_copy(update={key: tuned[key] for key in POSTPROCESSING_KEYS})
    if checkpoint is None:
        checkpoint = "last" if config.task == "denoise" else "best"
    path = run_dir / (BEST_CHECKPOINT if checkpoint == "best" else LAST_CHECKPOINT)
    if not path.is_file():
        raise UserInputError(f"{run_dir}: no {path.name} in this run folder")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged zip; all mean the same here
        raise UserInputError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
    return config, model


def _segment_file(
    path: Path, out_dir: Path, model: keras.Model, config: SegmentConfig, runner: Predictor
) -> list[Path]:
    image = read_image(path, channel_axis=config.channel_axis)
    image = percentile_normalize(image, config.percentile_low, config.percentile_high)
    probabilities, instances = predict_segmentation(
        runner, image, geometry=model_geometry(model), config=config
    )
    targets = [out_dir / f"{path.stem}_probabilities.tif", out_dir / f"{path.stem}_labels.tif"]
    write_tiff_atomic(targets[0], np.moveaxis(probabilities, -1, 0), imagej=True, metadata={"axes": "CYX"})
    label_dtype = np.uint16 if instances.max() < 2**16 else np.uint32
    write_tiff_atomic(targets[1], instances.astype(label_dtype), imagej=label_dtype == np.uint16)
    print(f"{path.name}: {int(instances.max())} objects -> {targets[1]}")
    return targets


def _denoise_file(
    path: Path, out_dir: Path, model: keras.Model, config: DenoiseConfig, stats: dict, runner: Predictor
) -> list[Path]:
    slices = read_image_slices(path, channel_axis=config.channel_axis)
    denoised = np.stack([denoise_image(model, s, stats=stats, config=config, runner=runner) for s in slices])
    target = out_dir / f"{path.stem}_denoised.tif"
    # (Z, C, Y, X) for ImageJ: channels and slices stay apart when Fiji opens the file.
    write_tiff_atomic(target, np.moveaxis(denoised, -1, 1), imagej=True, metadata={"axes": "ZCYX"})
    print(f"{path.name}: denoised -> {target}")
    return [target]


def _output_names(path: Path, task: str) -> list[str]:
    if task == "denoise":
        return [f"{path.stem}_denoised.tif"]
    return [f"{path.stem}_probabilities.tif", f"{path.stem}_labels.tif"]


def _refuse_shared_output_names(files: list[Path], task: str) -> None:
    """Two inputs with one stem (`a.tif`, `a.png`) would write the same outputs; refuse before writing."""
    owners: dict[str, Path] = {}
    clashes = []
    for path in files:
        name = _output_names(path, task)[0]
        if name in owners and owners[name] != path:
            clashes.append(f"{path}: would write {name} like {owners[name]}; rename one of them")
        owners.setdefault(name, path)
    if clashes:
        raise UserInputError("\n".join(clashes))


def predict_files(
    run_dir: Path,
    inputs: list[Path],
    out_dir: Path,
    *,
    checkpoint: str | None = None,
    overwrite: bool = False,
    tile_size: int | None = None,
    tta: bool | None = None,
    engine: str = "keras",
    precision: str = "float32",
) -> list[str]:
    """Predict every input; return one problem line per input that could not be processed."""
    if precision != "float32" and engine != "keras":
        raise UserInputError(
            f"--precision {precision} needs --engine keras (onnxruntime computes in float32)"
        )
    config, model = load_run(run_dir, checkpoint)
    updates = {key: value for key, value in (("tile_size", tile_size), ("tta", tta)) if value is not None}
    if "tta" in updates and config.task != "denoise":
        raise UserInputError("--tta applies to denoising runs only")
    # Validated like the run's own options (a tile size out of range is refused, not silently raised).
    config = build_config(type(config), config.model_dump() | updates, source="command line")
    stats = read_json(run_dir / NORMALIZATION_FILE) if config.task == "denoise" else None
    files = _inputs(inputs)
    _refuse_shared_output_names(files, config.task)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = predictor(model, engine, precision)
    problems = []
    for path in files:
        existing = [out_dir / name for name in _output_names(path, config.task) if (out_dir / name).exists()]
        if existing and not overwrite:
            problems.append(f"{existing[0]}: exists already (use --overwrite to replace it)")
            continue
        try:
            if config.task == "denoise":
                _denoise_file(path, out_dir, model, config, stats, runner)
            else:
                _segment_file(path, out_dir, model, config, runner)
        except UserInputError as error:
            problems.append(str(error))
    return problems


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.predict`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m training.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="run folder of python -m training.segment or .denoise")
    parser.add_argument("inputs", type=Path, nargs="+", help="image files or folders of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default=None,
        help="checkpoint to use (default: best for segmentation, last for denoising)",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="8-fold test-time augmentation (denoising; default: the run's setting)",
    )
    parser.add_argument("--tile-size", type=int, default=None, help="tile side (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="keras",
        help="keras, or onnx: the model converted as for a package and run by onnxruntime",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="what the keras engine computes in: bfloat16 is about twice as fast on CPUs with AVX512-BF16 "
        "or AMX (see docs/benchmarks.md for its effect on quality); default float32",
    )
    args = parser.parse_args(argv)
    if args.precision == "bfloat16" and not has_native_bfloat16():
        print("note: this CPU has no native bfloat16 (AVX512-BF16 or AMX); float32 is likely faster")

    def body():
        problems = predict_files(
            args.run_dir,
            args.inputs,
            args.out,
            checkpoint=args.checkpoint,
            overwrite=args.overwrite,
            tile_size=args.tile_size,
            tta=args.tta,
            engine=args.engine,
            precision=args.precision,
        )
        if problems:
            raise UserInputError("\n".join(problems))

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
