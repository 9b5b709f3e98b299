"""Cells in Fiji: the ImageJ macro a segmentation package carries, and how deepImageJ finds it.

`instances.ijm`, beside this module, is the seeded watershed of `training.targets.classes_to_instances`
in plain ImageJ 1.x macro language; an export fills in the run's thresholds, writes it into the package
and declares it in the rdf, where deepImageJ looks for the macros it runs after the model.
"""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from export.declaration import Instances

MACRO_FILE = "instances.ijm"
TEMPLATE = Path(__file__).with_name(MACRO_FILE)
# How an rdf names an ImageJ macro among deepImageJ's pre- and post-processing steps.
RUN_MACRO_SPEC = "ij.IJ::runMacroFile"


def write_macro(instances: Instances, folder: Path) -> str:
    """Write the macro with the run's thresholds into `folder`; returns its file name."""
    text = Template(TEMPLATE.read_text()).substitute(
        # repr: the shortest decimal that reads back as the same double, in ImageJ as in Python.
        interior_threshold=repr(float(instances.interior_threshold)),
        foreground_threshold=repr(float(instances.foreground_threshold)),
        min_object_size=str(int(instances.min_object_size)),
    )
    (folder / MACRO_FILE).write_text(text)
    return MACRO_FILE


def deepimagej_config(postprocess_macro: str | None) -> dict:
    """The rdf's `config.deepimagej`: tiling allowed, and the macro to run on the output, if any.

    Keys as deepImageJ reads them: JDLL's `DeepImageJExecutionConfig` and `DeepImageJProcessing`
    (bioimage-io/JDLL, `io.bioimage.modelrunner.bioimageio.description.deepimagej`) take `allow_tiling`,
    `pyramidal_model` and `prediction.preprocess` / `prediction.postprocess`, lists of `{spec, kwargs}`
    where spec `ij.IJ::runMacroFile` marks a macro and kwargs is its file in the package; deepImageJ 2's
    `ProcessingBridge.runPostprocessingMacro` runs it with `IJ.runMacroFile` on the output image.
    bioimageio.core's deepImageJ config builder and StarDist's packages write the same keys. The file is
    also an rdf `attachment`, so that every consumer downloads it with the package.
    """
    config: dict = {"allow_tiling": True, "pyramidal_model": False}
    if postprocess_macro is not None:
        config["prediction"] = {"postprocess": [{"spec": RUN_MACRO_SPEC, "kwargs": postprocess_macro}]}
    return config
