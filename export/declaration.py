"""What a run's package declares, as its task wrote it into the run folder (`declaration.json`).

Training's task objects know what their network computes: tensor names, channel names, the pre- and
post-processing that reproduces training's normalisation, the text of the documentation, citations.
They write it here once, at the end of training; export builds the package from it and from the model,
with no knowledge of any task. This class is the contract between the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from base.cli import format_validation_error
from base.errors import UserInputError
from base.run_folder import CHECKPOINTS, DECLARATION_FILE, read_record

# The processing operations a declaration may use: those bioimage.io defines, that deepImageJ's JDLL
# implements and that `export.processing.apply` computes.
OPERATIONS = ("scale_range", "fixed_zero_mean_unit_variance", "scale_linear")


class Operation(BaseModel):
    """One rdf processing step: its id and kwargs as they appear in rdf.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Literal["scale_range", "fixed_zero_mean_unit_variance", "scale_linear"]
    kwargs: dict = Field(default_factory=dict)


class Tensor(BaseModel):
    """One input or output of the network."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    channels: list[str] = Field(min_length=1)
    processing: list[Operation] = Field(default_factory=list)
    description: str  # one sentence for the documentation: what it holds, how it is normalised


class Citation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    doi: str


class Instances(BaseModel):
    """How the output's class probabilities (background, interior, boundary) become one label per object:
    the thresholds of the seeded watershed the run chose (`training.targets.classes_to_instances`). The
    package carries the same rule as an ImageJ macro (`export.imagej`)."""

    model_config = ConfigDict(extra="forbid")

    interior_threshold: float = Field(gt=0, lt=1)
    foreground_threshold: float = Field(gt=0, lt=1)
    min_object_size: int = Field(ge=0)


class Declaration(BaseModel):
    """Everything task-specific that a package holds."""

    model_config = ConfigDict(extra="forbid")

    task: str
    checkpoint: Literal["best", "last"]  # the one the run's results come from, and exported by default
    name: str
    description: str
    tags: list[str]
    cite: list[Citation] = Field(min_length=1)
    input: Tensor
    output: Tensor
    # RGB colour of each output channel in the cover (class probabilities); none: the output is an image,
    # shown in grey beside the input.
    cover_colours: list[tuple[int, int, int]] | None = None
    training: list[str]  # documentation lines (Markdown) under "Training"
    validation: list[str]  # documentation lines under "# Validation": the held-out scores
    # Segmentation: the rule from the output's class probabilities to labels; none: the output is the result.
    instances: Instances | None = None

    @model_validator(mode="after")
    def _instances_need_three_classes(self) -> Declaration:
        if self.instances is not None and len(self.output.channels) != 3:
            raise ValueError("instances need an output of 3 classes (background, interior, boundary)")
        return self

    @property
    def checkpoint_file(self) -> str:
        return CHECKPOINTS[self.checkpoint]


def read_declaration(run_dir: Path) -> Declaration:
    """The declaration of a run folder, validated."""
    values = read_record(run_dir / DECLARATION_FILE, "what the package declares, written when training ends")
    try:
        return Declaration(**values)
    except ValidationError as error:
        raise UserInputError(format_validation_error(error, str(run_dir / DECLARATION_FILE))) from None
