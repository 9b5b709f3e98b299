"""`python -m training.predict RUN_DIR INPUT... --out OUT_DIR`: apply a trained run, or a shipped model by
its name (`python -m training.predict nuclei IMAGES/ --out OUT/`), to new images.

Each input image NAME gives the files of the run's task: for segmentation `NAME_probabilities.tif`
(float32, classes background / interior / boundary as ImageJ channels) and `NAME_labels.tif` (instance
labels); for denoising `NAME_denoised.tif`; for CARE `NAME_restored.tif` (float32). A run trained on
volumes (`--ndim 3`) predicts each stack as one volume, in 3D tiles; a 2D run denoises or restores a stack
slice by slice. Every file is written atomically. Images are normalised exactly as in training and
predicted in tiles, so any size works. A bad input file is reported and skipped; the others are still
written; the exit status is 2 if any file was bad.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Literal

import keras
from pydantic import BaseModel, ConfigDict, Field

from base.cli import build_options, simple_command
from base.errors import UserInputError
from base.run_folder import CONFIG_FILE, checkpoint_file
from training import blockwise
from training.config import TrainingConfig
from training.engines import ENGINES, PRECISIONS, activation_bytes_per_voxel, has_native_bfloat16, predictor
from training.images import IMAGE_SUFFIXES, MAX_CHANNELS, MAX_IMAGE_BYTES, declared_shape
from training.lazy import image_stem, is_zarr, list_inputs, open_lazy
from training.task import Task
from training.tasks import get_task
from training.upgrade import current_config
from zoo import model_geometry
from zoo.pretrained import resolve_run


class PredictOptions(BaseModel):
    """Options of `python -m training.predict`, also the arguments of `predict_files`."""

    model_config = ConfigDict(extra="forbid")

    run_dir: Path = Field(
        description="run folder of a training command, or the name of a shipped model (python -m "
        "zoo.pretrained lists them)",
        json_schema_extra={"positional": True},
    )
    inputs: list[Path] = Field(
        min_length=1, description="image files or folders of images", json_schema_extra={"positional": True}
    )
    out: Path = Field(description="output folder (created if missing)")
    checkpoint: Literal["best", "last"] | None = Field(
        None, description="checkpoint to use (default: the one the run's results come from)"
    )
    tta: bool | None = Field(
        None, description="8-fold test-time augmentation (restoration tasks; default: the run's setting)"
    )
    tile_size: int | None = Field(None, description="tile side (default: the run's)")
    overwrite: bool = Field(False, description="replace existing output files")
    engine: Literal[ENGINES] = Field(  # type: ignore[valid-type]
        "keras", description="keras, or onnx: the model converted as for a package and run by onnxruntime"
    )
    precision: Literal[("auto", *PRECISIONS)] = Field(  # type: ignore[valid-type]
        "auto",
        description="what the keras engine computes in: bfloat16 is faster on CPUs with native bfloat16 "
        "(AVX512-BF16 or AMX); auto: bfloat16 where TensorFlow runs it natively, else float32 (its effect "
        "on quality is in docs/benchmarks.md)",
    )
    memory_limit: float | None = Field(
        None,
        gt=0,
        description="GiB of memory the prediction may use in all (the program itself, about 0.8 GiB with "
        "TensorFlow, included); tile and block sizes follow from it (default: a quarter of this machine's "
        "memory, 1 to 8 GiB)",
    )
    blockwise: bool = Field(
        False,
        description="predict block by block into OME-Zarr even an image that fits in memory (zarr inputs "
        "and images bigger than the memory limit always are)",
    )
    resume: bool = Field(False, description="continue a killed blockwise prediction from the blocks it wrote")
    level: int = Field(
        0, ge=0, description="pyramid level of an OME-Zarr or OME-TIFF input to predict (0: full resolution)"
    )
    output_format: Literal["ome-zarr", "tiff"] = Field(
        "ome-zarr",
        description="what a blockwise prediction writes: OME-Zarr, or OME-TIFF (BigTIFF, tiled) under the "
        "names of the in-memory outputs",
    )


def _inputs(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if is_zarr(path):
            files.append(path)
        elif path.is_dir():
            found = list_inputs(path)
            if not found:
                raise UserInputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserInputError(f"{path}: no such file or folder")
    return files


def load_run(run_dir: Path, checkpoint: str | None = None) -> tuple[Task, TrainingConfig, keras.Model]:
    """The task, the prediction options and the chosen checkpoint (`best` or `last`; None: the one the
    task's results come from) of a run folder."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserInputError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    values = current_config(run_dir)
    task = get_task(values.get("task"), source=str(run_dir / CONFIG_FILE))
    config = build_options(task.options, values, source=str(run_dir / CONFIG_FILE))
    path = checkpoint_file(run_dir, checkpoint or task.results_checkpoint)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged zip; all mean the same here
        raise UserInputError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None
    return task, task.prediction_config(run_dir, config), model


def _refuse_shared_output_names(files: list[Path], task: Task) -> None:
    """Two inputs with one stem (`a.tif`, `a.png`) would write the same outputs; refuse before writing."""
    owners: dict[str, Path] = {}
    clashes = []
    for path in files:
        name = task.output_names(path.stem)[0]
        if name in owners and owners[name] != path:
            clashes.append(f"{path}: would write {name} like {owners[name]}; rename one of them")
        owners.setdefault(name, path)
    if clashes:
        raise UserInputError("\n".join(clashes))


def auto_precision(engine: str) -> str:
    """bfloat16 where it is faster: the keras engine on TensorFlow, on a CPU with native bfloat16."""
    native = engine == "keras" and keras.backend.backend() == "tensorflow" and has_native_bfloat16()
    return "bfloat16" if native else "float32"


def default_tile_size(model: keras.Model, precision: str, config, budget: int) -> int:
    """The tile side of in-memory prediction: as large as one call within `blockwise.CALL_SHARE` of the
    memory budget allows (fewer tiles, less context computed twice), a multiple of 64 from the run's own
    tile size up to 4096."""
    call_voxels = blockwise.CALL_SHARE * budget / activation_bytes_per_voxel(model, precision)
    side = int(call_voxels ** (1 / (3 if getattr(config, "ndim", None) == 3 else 2)))
    return min(max(config.tile_size, side // 64 * 64), 4096)


def predict_files(options: PredictOptions) -> list[str]:
    """Predict every input; return one problem line per input that could not be processed."""
    if options.precision not in ("float32", "auto") and options.engine != "keras":
        raise UserInputError(
            f"--precision {options.precision} needs --engine keras (onnxruntime computes in float32)"
        )
    precision = auto_precision(options.engine) if options.precision == "auto" else options.precision
    run_dir = resolve_run(options.run_dir)
    task, config, model = load_run(run_dir, options.checkpoint)
    budget = blockwise.memory_budget(options.memory_limit)
    updates = {
        key: getattr(options, key) for key in ("tile_size", "tta") if getattr(options, key) is not None
    }
    if options.tile_size is None and hasattr(config, "tile_size"):
        updates["tile_size"] = default_tile_size(model, precision, config, budget)
    unknown = [key for key in updates if key not in task.options.model_fields]
    if unknown:
        raise UserInputError(f"--{unknown[0].replace('_', '-')} does not apply to {task.name} runs")
    # Validated like the run's own options (a tile size out of range is refused, not silently raised).
    config = build_options(type(config), config.model_dump() | updates, source="command line")
    files = _inputs(options.inputs)
    _refuse_shared_output_names(files, task)
    options.out.mkdir(parents=True, exist_ok=True)
    runner = predictor(model, options.engine, precision)
    problems = []
    for path in files:
        try:
            lazy = options.blockwise or options.level > 0 or is_zarr(path)
            if lazy or _too_big_to_hold(path, budget, config):
                _predict_blockwise(path, options, task, config, run_dir, model, runner, budget, precision)
                continue
            names = task.output_names(path.stem)
            existing = [options.out / name for name in names if (options.out / name).exists()]
            if existing and not options.overwrite:
                problems.append(f"{existing[0]}: exists already (use --overwrite to replace it)")
                continue
            task.predict_file(path, options.out, run_dir=run_dir, config=config, model=model, runner=runner)
        except UserInputError as error:
            problems.append(str(error))
    return problems


def _too_big_to_hold(path: Path, budget: int, config) -> bool:
    """Whether a TIFF goes blockwise by itself: the in-memory reader refuses it (over
    `training.images.MAX_IMAGE_BYTES` in float32), or its float32 copies (about six) would not fit 60 % of
    the memory budget. A stack given to a 2D network (predicted slice by slice) goes blockwise only in the
    first case."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    shape = declared_shape(path)
    pixels = math.prod(shape)
    if 4 * pixels > MAX_IMAGE_BYTES:
        return True
    stack = (getattr(config, "ndim", None) or 2) == 2 and len(shape) >= 3 and min(shape) > MAX_CHANNELS
    return not stack and 6 * 4 * pixels > 0.6 * budget


def _predict_blockwise(
    path: Path, options: PredictOptions, task: Task, config, run_dir: Path, model, runner, budget: int,
    precision: str,
) -> None:  # fmt: skip
    ndim = getattr(config, "ndim", None) or 2
    image = open_lazy(path, axes=getattr(config, "axes", None) if ndim == 3 else None, level=options.level)
    if len(image.shape) != ndim:
        raise UserInputError(
            f"{path}: a {len(image.shape)}D image ({image.axes}) for a {ndim}D network; blockwise prediction "
            "takes images of the network's dimensions"
        )
    if image.channels != model.inputs[0].shape[-1]:
        raise UserInputError(
            f"{path}: {image.channels} channels ({image.axes}), the network takes {model.inputs[0].shape[-1]}"
        )
    spec = task.blockwise(run_dir, config)
    sizes = blockwise.plan(image, model, spec, budget=budget, precision=precision)
    if options.tile_size is not None:
        sizes = replace(sizes, tile=(*sizes.tile[:-2], options.tile_size, options.tile_size))
    checkpoint = checkpoint_file(run_dir, options.checkpoint or task.results_checkpoint)
    settings = {
        "run": str(run_dir.resolve()),
        "checkpoint": [str(checkpoint), checkpoint.stat().st_mtime_ns],
        "engine": options.engine,
        "precision": precision,
        "tta": spec.tta,
    }
    blockwise.Blockwise(
        image=image,
        spec=spec,
        predict=runner,
        geometry=model_geometry(model),
        sizes=sizes,
        out_dir=options.out,
        stem=image_stem(path),
        names=task.output_names(image_stem(path)),
        tiff=options.output_format == "tiff",
    ).run(settings=settings, resume=options.resume, overwrite=options.overwrite)


def predict(options: PredictOptions) -> None:
    """Predict every input; a bad input is reported after the others were written."""
    if options.precision == "bfloat16" and not has_native_bfloat16():
        print("note: this CPU has no native bfloat16 (AVX512-BF16 or AMX); float32 is likely faster")
    problems = predict_files(options)
    if problems:
        raise UserInputError("\n".join(problems))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.predict`; returns the exit status."""
    return simple_command(
        PredictOptions, predict, argv, prog="python -m training.predict", description=__doc__
    )


if __name__ == "__main__":
    sys.exit(main())
