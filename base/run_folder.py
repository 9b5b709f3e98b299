"""The run folder: the one definition of its files, read by training, prediction, export and the clean-up
of a killed run's temporaries.

A run folder is the boundary between training and export. Training writes it; export reads nothing else
(and imports no training code): the model's checkpoint, `sample.npy` and `declaration.json`, in which the
run's task has written what its package declares (tensors, processing, documentation, citations).

    config.json          every option, resolved, with the schema version that wrote it
    split.json           which files were train, val and test (segmentation, CARE)
    data.json            where the noisy images came from (denoising)
    normalization.json   training mean and std (denoising, CARE)
    postprocessing.json  thresholds chosen on the validation images (segmentation)
    init.json            where the starting weights came from (a fine-tuned run, --init-from)
    history.csv, state.json, curves.png, tensorboard/
    best.keras, last.keras, checkpoints/epoch-NNNN.keras
    metrics.json         held-out evaluation, and the checkpoint it was computed with
    sample.npy           one raw held-out image: the package's test input and cover
    declaration.json     what the run's package declares
    package.zip          the bioimage.io package
"""

from __future__ import annotations

import json
from pathlib import Path

from base.errors import UserInputError

# The version of the run folder's layout that this code writes; see `training.upgrade` for older ones.
# 1: no `schema_version` in config.json and no declaration.json. 2: both.
SCHEMA_VERSION = 2
SCHEMA_KEY = "schema_version"

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
DATA_FILE = "data.json"
NORMALIZATION_FILE = "normalization.json"
POSTPROCESSING_FILE = "postprocessing.json"
INIT_FILE = "init.json"
HISTORY_FILE = "history.csv"
STATE_FILE = "state.json"
PLOT_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
BEST_CHECKPOINT = "best.keras"
LAST_CHECKPOINT = "last.keras"
PERIODIC_CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
SAMPLE_FILE = "sample.npy"
DECLARATION_FILE = "declaration.json"
PACKAGE_FILE = "package.zip"
DATA_DIR = "data"  # the embedded demo's generated data, kept with the run

CHECKPOINTS = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}
SAMPLE_SIZE = 256

# Files written atomically through a temporary `.NAME.<random>` beside them (checkpoints: a temporary
# ending in `.partial.keras`; the package: `.package.zip.<random>.partial`).
ATOMIC_FILES = (
    CONFIG_FILE,
    SPLIT_FILE,
    DATA_FILE,
    NORMALIZATION_FILE,
    POSTPROCESSING_FILE,
    INIT_FILE,
    HISTORY_FILE,
    STATE_FILE,
    PLOT_FILE,
    METRICS_FILE,
    SAMPLE_FILE,
    DECLARATION_FILE,
    PACKAGE_FILE,
)
PARTIAL_CHECKPOINT_SUFFIX = ".partial.keras"


def checkpoint_file(run_dir: Path, choice: str) -> Path:
    """The checkpoint `best` or `last` of a run folder; a missing best falls back to last (a run whose
    monitored quantity never improved on a finite value keeps no best)."""
    if choice not in CHECKPOINTS:
        raise UserInputError(f"{run_dir}: unknown checkpoint {choice!r} (best or last)")
    path = run_dir / CHECKPOINTS[choice]
    if choice == "best" and not path.is_file():
        path = run_dir / LAST_CHECKPOINT
    if not path.is_file():
        raise UserInputError(f"{run_dir}: incomplete run folder (no {path.name})")
    return path


def stale_temporaries(run_dir: Path) -> list[Path]:
    """The temporary files a killed process left in a run folder (never a finished file)."""
    prefixes = tuple(f".{name}." for name in ATOMIC_FILES)
    return [
        path
        for path in run_dir.iterdir()
        if path.is_file()
        and path.name.startswith(".")
        and (path.name.endswith(PARTIAL_CHECKPOINT_SUFFIX) or path.name.startswith(prefixes))
    ]


def read_record(path: Path, what: str) -> dict:
    """One JSON file of a run folder, as a dict; a missing or unreadable file is a one-line error that
    says what the file holds."""
    if not path.is_file():
        raise UserInputError(f"{path.parent}: incomplete run folder (no {path.name}: {what})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserInputError(f"{path}: unreadable ({error})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def schema_version(config: dict) -> int:
    """The schema version of a run folder's config.json (1 for folders written before it was recorded)."""
    version = config.get(SCHEMA_KEY, 1)
    if not isinstance(version, int) or version < 1:
        raise UserInputError(
            f"{CONFIG_FILE}: {SCHEMA_KEY} must be a positive whole number, found {version!r}"
        )
    return version


def check_schema(run_dir: Path, config: dict) -> None:
    """Refuse a run folder of another schema than this code's, saying what to do."""
    version = schema_version(config)
    if version > SCHEMA_VERSION:
        raise UserInputError(
            f"{run_dir}: run folder of schema {version}, written by a newer bioimage-keras-zoo (this one "
            f"reads schema {SCHEMA_VERSION}); upgrade it with pip install -U bioimage-keras-zoo"
        )
    if version < SCHEMA_VERSION:
        raise UserInputError(
            f"{run_dir}: run folder of schema {version}, written by an older bioimage-keras-zoo; bring it to "
            f"schema {SCHEMA_VERSION} with: python -m training.upgrade {run_dir}"
        )
