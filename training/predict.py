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

import sys
from pathlib import Path
from typing import Literal

import keras
from pydantic import BaseModel, ConfigDict, Field

from base.cli import build_options, simple_command
from base.errors import UserInputError
from base.run_folder import CONFIG_FILE, checkpoint_file
from training.config import TrainingConfig
from training.engines import ENGINES, PRECISIONS, has_native_bfloat16, predictor
from training.images import IMAGE_SUFFIXES, list_images
from training.task import Task
from training.tasks import get_task
from training.upgrade import current_config
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
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "float32",
        description="what the keras engine computes in: bfloat16 is faster on CPUs with native bfloat16 "
        "(AVX512-BF16 or AMX); its effect on quality is in docs/benchmarks.md",
    )


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


def predict_files(options: PredictOptions) -> list[str]:
    """Predict every input; return one problem line per input that could not be processed."""
    if options.precision != "float32" and options.engine != "keras":
        raise UserInputError(
            f"--precision {options.precision} needs --engine keras (onnxruntime computes in float32)"
        )
    run_dir = resolve_run(options.run_dir)
    task, config, model = load_run(run_dir, options.checkpoint)
    updates = {
        key: getattr(options, key) for key in ("tile_size", "tta") if getattr(options, key) is not None
    }
    unknown = [key for key in updates if key not in task.options.model_fields]
    if unknown:
        raise UserInputError(f"--{unknown[0].replace('_', '-')} does not apply to {task.name} runs")
    # Validated like the run's own options (a tile size out of range is refused, not silently raised).
    config = build_options(type(config), config.model_dump() | updates, source="command line")
    files = _inputs(options.inputs)
    _refuse_shared_output_names(files, task)
    options.out.mkdir(parents=True, exist_ok=True)
    runner = predictor(model, options.engine, options.precision)
    problems = []
    for path in files:
        names = task.output_names(path.stem)
        existing = [options.out / name for name in names if (options.out / name).exists()]
        if existing and not options.overwrite:
            problems.append(f"{existing[0]}: exists already (use --overwrite to replace it)")
            continue
        try:
            task.predict_file(path, options.out, run_dir=run_dir, config=config, model=model, runner=runner)
        except UserInputError as error:
            problems.append(str(error))
    return problems


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
