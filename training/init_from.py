"""Fine-tuning: a new run that starts from trained weights (`--init-from`) instead of random ones.

The source is a shipped model's name (`zoo.pretrained`), a run folder, a bioimage.io package (.zip, its
Keras weights) or a .keras file. Where the source records its options (a shipped model, a run folder),
the run takes from it the options that shape the network or what it learned (the task's
`source_options`: depth, filters, normalisation, class definition...); one of those given differently on
the command line is an error. The source must fit the new run: same task, same input channels, and, layer
by layer, the same weight shapes; otherwise one line says what differs and nothing is written. The run
folder records where its weights came from in `init.json`.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from base.errors import UserInputError
from base.run_folder import CONFIG_FILE, INIT_FILE, checkpoint_file
from training.config import TrainingConfig
from training.files import write_json
from training.task import Task
from training.upgrade import current_config
from zoo.pretrained import SHIPPED, shipped_folder


@dataclass
class Source:
    """Trained weights to start from, and what is known of them."""

    given: str  # as the user wrote it
    kind: str  # "shipped model", "run folder", "package" or "keras file"
    checkpoint: Path  # the .keras file read (inside a package: its member name)
    sha256: str
    weights: list[np.ndarray]
    input_channels: int
    task: str | None  # None where the source does not say (a package, a .keras file)
    options: dict  # the source's config.json values ({} where there is none)

    def record(self, taken: dict) -> dict:
        """What init.json keeps: the source, its checkpoint's digest and the options taken from it."""
        return {
            "init_from": self.given,
            "kind": self.kind,
            "checkpoint": str(self.checkpoint),
            "sha256": self.sha256,
            "task": self.task,
            "options_taken": taken,
        }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_keras(path: Path, given: str, shown: Path) -> keras.Model:
    import zoo  # noqa: F401 (registers the project's layers)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged file; all mean the same here
        raise UserInputError(f"{given}: unreadable Keras weights {shown} ({type(error).__name__})") from None


def _from_keras(path: Path, given: str, kind: str, *, shown: Path, task: str | None, options: dict) -> Source:
    model = _read_keras(path, given, shown)
    if len(model.inputs) != 1 or len(model.input_shape) not in (4, 5):
        raise UserInputError(
            f"{given}: not an image or volume network of this project (input {model.input_shape})"
        )
    return Source(
        given=given,
        kind=kind,
        checkpoint=shown,
        sha256=_digest(path),
        weights=[np.asarray(w) for w in model.get_weights()],
        input_channels=int(model.input_shape[-1]),
        task=task,
        options=options,
    )


def _from_run(folder: Path, given: str, kind: str) -> Source:
    from training.tasks import get_task

    values = current_config(folder)
    task = get_task(values.get("task"), source=str(folder / CONFIG_FILE))
    path = checkpoint_file(folder, task.results_checkpoint)
    return _from_keras(path, given, kind, shown=path, task=task.name, options=values)


def _from_package(path: Path, given: str) -> Source:
    from bioimageio.spec.utils import read_yaml

    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="init-from-") as scratch:
            rdf_file = Path(scratch) / "rdf.yaml"
            rdf_file.write_bytes(archive.read("rdf.yaml"))
            member = read_yaml(rdf_file)["weights"]["keras_v3"]["source"]
            target = Path(scratch) / "weights.keras"
            target.write_bytes(archive.read(member))
            return _from_keras(target, given, "package", shown=Path(member), task=None, options={})
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else type(error).__name__
        raise UserInputError(
            f"{given}: not a bioimage.io package with Keras weights (weights: keras_v3) ({reason})"
        ) from None


def find_source(given: str) -> Source:
    """Read the weights that `--init-from` names."""
    path = Path(given)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserInputError(f"{given}: not a run folder (no {CONFIG_FILE})")
        return _from_run(path, given, "run folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            return _from_package(path, given)
        if suffix == ".keras":
            return _from_keras(path, given, "keras file", shown=path.resolve(), task=None, options={})
        raise UserInputError(f"{given}: expected a run folder, a package (.zip) or a .keras file")
    if given in SHIPPED:
        return _from_run(shipped_folder(given), given, "shipped model")
    raise UserInputError(
        f"{given}: no such file or folder, and no shipped model of that name "
        f"(shipped: {', '.join(sorted(SHIPPED))})"
    )


def take_options(config: TrainingConfig, task: Task, source: Source) -> tuple[TrainingConfig, dict]:
    """`config` with the network's options taken from the source where it records them; an option the
    user gave with another value is an error. Returns the config and the options taken."""
    if source.task is not None and source.task != task.name:
        raise UserInputError(
            f"{source.given}: a {source.task} model; it cannot start a {task.name} run "
            f"(use python -m training.{source.task})"
        )
    taken = {key: source.options[key] for key in task.source_options if key in source.options}
    clashes = [
        (key, value)
        for key, value in taken.items()
        if key in config.model_fields_set and getattr(config, key) != value
    ]
    if clashes:
        raise UserInputError(
            f"{source.given}: was trained with "
            + ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in clashes)
            + "; leave "
            + ", ".join(f"--{key.replace('_', '-')}" for key, _ in clashes)
            + " out to fine-tune it"
        )
    return config.model_copy(update=taken), taken


def check_fits(source: Source, model: keras.Model, *, channels: int) -> None:
    """The source's weights fit `model` (built for this run's data with `channels` input channels)."""
    if source.input_channels != channels:
        raise UserInputError(
            f"{source.given}: made for images of {source.input_channels} channel(s); this data has {channels}"
        )
    wanted = [tuple(w.shape) for w in model.weights]
    have = [tuple(w.shape) for w in source.weights]
    if len(wanted) != len(have):
        raise UserInputError(
            f"{source.given}: another network ({len(have)} weight arrays, this run's has {len(wanted)}); "
            "give the options it was trained with (--model, --depth, --base-filters, ...)"
        )
    for variable, mine, theirs in zip(model.weights, wanted, have, strict=True):
        if mine != theirs:
            raise UserInputError(
                f"{source.given}: another network ({variable.path}: shape {theirs}, this run's {mine}); "
                "give the options it was trained with (--model, --depth, --base-filters, ...)"
            )


def record_source(run_dir: Path, source: Source, taken: dict) -> None:
    write_json(run_dir / INIT_FILE, source.record(taken))
