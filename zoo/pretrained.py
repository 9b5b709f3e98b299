"""The trained models this project ships, looked up by name: the one registry of them.

A shipped model is a minimal run folder inside the installed package (`zoo/models/NAME/`): its checkpoint
without optimizer state (`best.keras`), `config.json`, `postprocessing.json` (segmentation),
`normalization.json` (restoration), `metrics.json`, `sample.npy`, `declaration.json`, and a model card
(`README.md`): the data and its licence, the command that trained it, its scores. Wherever a run folder
is accepted, a shipped model's name is too:

    python -m training.predict nuclei IMAGES/ --out OUT/
    python -m training.segment --data MY_DATA --init-from nuclei
    python -m export nuclei --out nuclei.zip

`python -m zoo.pretrained` lists them; `ship` (used by `bench/pretrain_nuclei.py --ship`) makes one from
a finished run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from base.errors import UserInputError
from base.run_folder import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    DECLARATION_FILE,
    METRICS_FILE,
    NORMALIZATION_FILE,
    POSTPROCESSING_FILE,
    SAMPLE_FILE,
    checkpoint_file,
    read_record,
)

MODELS_DIR = Path(__file__).resolve().parent / "models"
CARD_FILE = "README.md"
# The files of a run folder that a shipped model copies as they are (those present); its checkpoint,
# config.json and declaration.json are rewritten, its card is new.
KEPT_FILES = (POSTPROCESSING_FILE, NORMALIZATION_FILE, METRICS_FILE, SAMPLE_FILE)


@dataclass(frozen=True)
class ShippedModel:
    """One entry of the registry: a name, its task and one line on what it is for."""

    name: str
    task: str
    title: str  # the package's name
    summary: str
    data: str  # what it was trained on, for its package's documentation

    @property
    def folder(self) -> Path:
        return MODELS_DIR / self.name


SHIPPED: dict[str, ShippedModel] = {
    model.name: model
    for model in (
        ShippedModel(
            "nuclei",
            "segment",
            "Nuclei U-Net (DSB2018 fluorescence)",
            "U-Net for nuclei in 2D fluorescence images (DSB2018: 423 training images, 54 validation)",
            "2018 Data Science Bowl nuclei (BBBC038, CC0), 423 training and 54 validation images; "
            "the model card (README.md of zoo/models/nuclei) has the details",
        ),
    )
}


def shipped_folder(name: str) -> Path:
    """The run folder of the shipped model `name`; a one-line error for an unknown or missing one."""
    if name not in SHIPPED:
        raise UserInputError(
            f"{name}: no run folder of that name, and no shipped model of that name "
            f"(shipped: {', '.join(sorted(SHIPPED))})"
        )
    folder = SHIPPED[name].folder
    if not (folder / CONFIG_FILE).is_file() or not (folder / BEST_CHECKPOINT).is_file():
        raise UserInputError(f"{folder}: the shipped model {name!r} is incomplete; reinstall the package")
    return folder


def resolve_run(text: str | os.PathLike) -> Path:
    """A run folder given by its path, or by the name of a shipped model (a folder of that name in the
    current directory wins, as a path would)."""
    path = Path(text)
    if path.exists() or os.sep in str(text) or str(text) not in SHIPPED:
        return path
    return shipped_folder(str(text))


def _stripped_checkpoint(source: Path, target: Path) -> None:
    """Save `source`'s network without its optimizer state (a third of the size of Adam's checkpoint)."""
    import keras

    import zoo  # noqa: F401 (registers the project's layers)

    keras.models.load_model(source, compile=False).save(target)


def ship(run_dir: Path, name: str, *, card: str) -> Path:
    """Make (or replace) the shipped model `name` from the finished run folder `run_dir`, with the model
    card text `card`; returns its folder. Built beside it and swapped in whole."""
    if name not in SHIPPED:
        raise UserInputError(f"{name}: not in the registry (zoo/pretrained.py: SHIPPED); add it there first")
    config = read_record(run_dir / CONFIG_FILE, "the run's options")
    if config.get("task") != SHIPPED[name].task:
        raise UserInputError(
            f"{run_dir}: a {config.get('task')} run; {name!r} is a {SHIPPED[name].task} model"
        )
    MODELS_DIR.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=MODELS_DIR))
    staging.chmod(0o755)  # mkdtemp's folder is private; an installed model is readable by all
    try:
        for file in KEPT_FILES:
            if (run_dir / file).is_file():
                shutil.copy2(run_dir / file, staging / file)
        declared = read_record(run_dir / DECLARATION_FILE, "what the package declares")
        metrics = read_record(run_dir / METRICS_FILE, "the held-out scores")
        if metrics.get("checkpoint") != BEST_CHECKPOINT or not (run_dir / BEST_CHECKPOINT).is_file():
            raise UserInputError(
                f"{run_dir}: a shipped model keeps the best checkpoint, which this run lacks"
            )
        _stripped_checkpoint(checkpoint_file(run_dir, "best"), staging / BEST_CHECKPOINT)
        # Machine-specific paths of the training run say nothing on another machine.
        config |= {"out_dir": "runs", "run_name": name, "export": False}
        if config.get("data"):
            config["data"] = f"see {CARD_FILE}"
        declared |= {"checkpoint": "best", "name": SHIPPED[name].title, "description": SHIPPED[name].summary}
        declared["training"] = [
            f"- Data: {SHIPPED[name].data}" if line.startswith("- Data:") else line
            for line in declared.get("training", [])
        ]
        for path, record in ((CONFIG_FILE, config), (DECLARATION_FILE, declared)):
            (staging / path).write_text(json.dumps(record, indent=2) + "\n")
        (staging / CARD_FILE).write_text(card)
        target = SHIPPED[name].folder
        old = target.with_name(f".{name}.old")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> int:
    """`python -m zoo.pretrained`: list the shipped models."""
    for model in SHIPPED.values():
        folder = model.folder
        size = (
            (folder / BEST_CHECKPOINT).stat().st_size / 2**20 if (folder / BEST_CHECKPOINT).is_file() else 0
        )
        state = f"{size:.1f} MiB" if size else "missing"
        print(f"{model.name:10} {model.task:9} {state:9} {model.summary}")
        print(f"{'':10} card: {folder / CARD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
