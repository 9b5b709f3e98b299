"""`python -m training.predict RUN_DIR INPUT... --out OUT_DIR`: segment images with a trained run.

For each input image NAME it writes `NAME_probabilities.tif` (float32, classes background / interior /
boundary as ImageJ channels) and `NAME_labels.tif` (instance labels), each atomically. Images are
normalised exactly as in training (percentiles from the run's config) and predicted in tiles, so any
size works. A bad input file is reported and skipped; the others are still written; the exit status is 2
if any file was bad.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np

from training.callbacks import BEST_CHECKPOINT, LAST_CHECKPOINT
from training.cli import run_main
from training.config import SegmentConfig, build_config
from training.errors import UserInputError
from training.evaluate import predict_segmentation
from training.images import IMAGE_SUFFIXES, list_images, percentile_normalize, read_image, write_tiff_atomic
from training.runs import CONFIG_FILE, read_json
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


def load_run(run_dir: Path, checkpoint: str) -> tuple[SegmentConfig, keras.Model]:
    """The config and the chosen checkpoint (`best` or `last`) of a segmentation run folder."""
    path = run_dir / (BEST_CHECKPOINT if checkpoint == "best" else LAST_CHECKPOINT)
    if not (run_dir / CONFIG_FILE).is_file() or not path.is_file():
        raise UserInputError(f"{run_dir}: not a finished segmentation run (needs {CONFIG_FILE} and {path.name})")
    config = build_config(SegmentConfig, read_json(run_dir / CONFIG_FILE), source=str(run_dir / CONFIG_FILE))
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged zip; all mean the same here
        raise UserInputError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
    return config, model


def predict_files(run_dir: Path, inputs: list[Path], out_dir: Path, *, checkpoint: str = "best",
                  overwrite: bool = False, tile_size: int | None = None) -> list[str]:
    """Predict every input; return one problem line per input that could not be processed."""
    config, model = load_run(run_dir, checkpoint)
    if tile_size is not None:
        config = config.model_copy(update={"tile_size": tile_size})
    geometry = model_geometry(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = []
    for path in _inputs(inputs):
        targets = out_dir / f"{path.stem}_probabilities.tif", out_dir / f"{path.stem}_labels.tif"
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            problems.append(f"{existing[0]}: exists already (use --overwrite to replace it)")
            continue
        try:
            image = read_image(path, channel_axis=config.channel_axis)
        except UserInputError as error:
            problems.append(str(error))
            continue
        image = percentile_normalize(image, config.percentile_low, config.percentile_high)
        probabilities, instances = predict_segmentation(model, image, geometry=geometry, config=config)
        write_tiff_atomic(targets[0], np.moveaxis(probabilities, -1, 0), imagej=True, metadata={"axes": "CYX"})
        label_dtype = np.uint16 if instances.max() < 2**16 else np.uint32
        write_tiff_atomic(targets[1], instances.astype(label_dtype), imagej=label_dtype == np.uint16)
        print(f"{path.name}: {int(instances.max())} objects -> {targets[1]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.predict`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run folder of python -m training.segment")
    parser.add_argument("inputs", type=Path, nargs="+", help="image files or folders of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--tile-size", type=int, default=None, help="tile side (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)

    def body():
        problems = predict_files(args.run_dir, args.inputs, args.out, checkpoint=args.checkpoint,
                                 overwrite=args.overwrite, tile_size=args.tile_size)
        if problems:
            raise UserInputError("\n".join(problems))

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
