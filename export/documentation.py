"""The package's documentation.md: what the model does, how it was trained, its held-out scores
(`# Validation`) and how to run it in each consumer. The task-specific parts come from the run's
declaration."""

from __future__ import annotations

from export.declaration import Instances
from export.describe import Tensors
from export.imagej import MACRO_FILE
from export.run_folder import Run


def documentation(run: Run, sizes: Tensors, *, name: str, torchscript: bool) -> str:
    declared = run.declaration
    volume = len(sizes.axes) == 3
    kind = "volume" if volume else "image"
    weights = "ONNX (opset 15), Keras 3 (`.keras`)" + (", TorchScript" if torchscript else "")
    lines = [
        f"# {name}",
        "",
        declared.description,
        "",
        "## Input and output",
        "",
        f"- `{sizes.input_id}`: axes b, {', '.join(sizes.axes)}, c; {len(sizes.input_channels)} channel(s); "
        f"{_sizes(sizes)} (any larger {kind} is predicted in tiles). {declared.input.description}",
        f"- `{sizes.output_id}`: {declared.output.description} Same size as the input; the outer "
        f"{_halos(sizes)} of a tile lack context (the halo) and are cut off when tiling.",
        f"- Weights: {weights}.",
        "",
        "## Training",
        "",
        *declared.training,
        f"- Checkpoint: `{run.checkpoint.name}` of run `{run.folder.name}`",
        "",
        "# Validation",
        "",
        *declared.validation,
        "",
        "## How to use",
        "",
        "- Fiji / deepImageJ: install the package from its zip file (deepImageJ > Install model), open an "
        "image and run the model; tiling is allowed.",
        "- ilastik: Neural Network Classification / Trainable Domain Adaptation workflows run the "
        "TorchScript weights."
        if torchscript
        else "- ilastik needs the TorchScript weights, which this "
        "package lacks (PyTorch was not installed when it was exported).",
        "- Python: `bioimageio predict PACKAGE.zip --inputs image.tif` (bioimageio.core), or "
        "`bioimageio.core.predict(model=..., inputs=...)`.",
        "",
        *(_cells(declared.instances, volume=volume) if declared.instances is not None else []),
        "## Limitations",
        "",
        "- Volumes (z, y, x) only; a 2D image is a volume of one slice, which is mirrored up to the minimum "
        "depth."
        if volume
        else "- 2D images only; a stack is processed slice by slice by the consumer.",
        "- The model knows only what its training data showed; check outputs on new kinds of images.",
        "",
        "## References",
        "",
        *[f"- {citation.text} doi:{citation.doi}" for citation in declared.cite],
        "",
    ]
    return "\n".join(lines)


_FIJI = (
    "- Fiji: install deepImageJ (Help > Update... > Manage update sites: tick DeepImageJ, apply, "
    "restart), install this package (deepImageJ: Install model, from the zip file), open an image and "
    f"run the model. The package's macro `{MACRO_FILE}` runs after the model and leaves a 16-bit label "
    "image, `<title>_labels`. If your deepImageJ does not run it, select the probability image and run "
    f"it yourself: Plugins > Macros > Run... > `{MACRO_FILE}` (in the model's folder under "
    "Fiji.app/models). It needs plain ImageJ only (no plugins) and runs in batch mode."
)


def _sizes(sizes: Tensors) -> str:
    """'height and width 64 + n x 8 pixels', or per axis for a volume."""
    if len(sizes.axes) == 2 and len(set(sizes.min_sizes)) == 1 and len(set(sizes.steps)) == 1:
        return f"height and width {sizes.min_sizes[0]} + n x {sizes.steps[0]} pixels"
    return ", ".join(
        f"{axis}: {low} + n x {step}"
        for axis, low, step in zip(sizes.axes, sizes.min_sizes, sizes.steps, strict=True)
    )


def _halos(sizes: Tensors) -> str:
    if len(set(sizes.halos)) == 1:
        return f"{sizes.halos[0]} pixels"
    return ", ".join(f"{halo} along {axis}" for axis, halo in zip(sizes.axes, sizes.halos, strict=True))


def _cells(instances: Instances, *, volume: bool = False) -> list[str]:
    """How to get one label per cell from the probabilities, in Fiji (images) and in Python."""
    thresholds = (
        f"interior_threshold={instances.interior_threshold}, "
        f"foreground_threshold={instances.foreground_threshold}, min_size={instances.min_object_size}"
    )
    return [
        "## Cells, not probabilities",
        "",
        "The model gives probabilities; a seeded watershed turns them into a label image (0 background, "
        f"1..N one per cell): seeds where p(interior) > {instances.interior_threshold}, grown into "
        f"1 - p(background) > {instances.foreground_threshold}, objects under "
        f"{instances.min_object_size} px removed.",
        "",
        *([] if volume else [_FIJI]),
        "- Python: `python -m training.predict RUN_OR_MODEL IMAGES/ --out OUT/` (bioimage-keras-zoo) "
        "writes `NAME_labels.tif` beside `NAME_probabilities.tif`; or, on probabilities `p` of shape "
        f"({'Z, ' if volume else ''}Y, X, 3): `training.targets.classes_to_instances(p, {thresholds})`.",
        "",
    ]
