"""Cells in Fiji: the ImageJ macro a segmentation package carries (`instances.ijm`) gives, in a real
ImageJ 1.x, the labels Python's `training.targets.classes_to_instances` gives on the same probabilities.

Needs ImageJ 1.x (`java` and ij.jar: `apt-get install imagej`, or IMAGEJ_JAR=/path/to/ij.jar) and, as
its -batch mode opens no window but still needs a display, DISPLAY or `xvfb-run` (`apt-get install
xvfb`); skipped otherwise. The package is the shipped nuclei model's; the real-data test also needs
../shared/data (the DSB2018 nuclei sample).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import DATA_DIR

from export.declaration import Instances
from export.imagej import MACRO_FILE, write_macro
from training.metrics import evaluate_instances
from training.predict import main as predict_main
from training.targets import classes_to_instances
from zoo.pretrained import SHIPPED

IJ_JAR = Path(os.environ.get("IMAGEJ_JAR", "/usr/share/java/ij.jar"))
DSB_DIR = DATA_DIR / "nuclei_dsb2018"
MIN_AGREEMENT = 0.95  # F1 at IoU 0.5 between ImageJ's labels and Python's, per image
# Opens each input, runs the macro on it and saves what it leaves active (the labels).
DRIVER = """args = split(getArgument(), "|");
setBatchMode(true);
for (i = 1; i < args.length; i += 2) {
    open(args[i]);
    runMacro(args[0]);
    saveAs("Tiff", args[i + 1]);
    close("*");
}
"""


def _imagej_command() -> list[str]:
    java = shutil.which("java")
    if java is None or not IJ_JAR.is_file():
        pytest.skip(f"ImageJ is not installed (java and {IJ_JAR}; apt-get install imagej)")
    if os.environ.get("DISPLAY"):
        return [java, "-jar", str(IJ_JAR)]
    if shutil.which("xvfb-run") is None:
        pytest.skip("ImageJ's -batch mode needs a display: no DISPLAY and no xvfb-run (apt-get install xvfb)")
    return ["xvfb-run", "-a", java, "-jar", str(IJ_JAR)]


def run_in_imagej(macro: Path, probabilities: list[Path], folder: Path) -> list[np.ndarray]:
    """The label images the macro makes in ImageJ (its -batch mode) from probability TIFFs."""
    command = _imagej_command()
    driver = folder / "driver.ijm"
    driver.write_text(DRIVER)
    outputs = [folder / f"{path.stem}_labels.tif" for path in probabilities]
    argument = "|".join([str(macro), *(f"{p}|{o}" for p, o in zip(probabilities, outputs, strict=True))])
    result = subprocess.run(
        [*command, "-batch", str(driver), argument], capture_output=True, text=True, timeout=600
    )
    report = f"ImageJ exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    labels = []
    for path in outputs:
        assert path.is_file(), report
        labels.append(tifffile.imread(path))
        assert labels[-1].dtype == np.uint16, report
    return labels


def write_probabilities(path: Path, probabilities: np.ndarray) -> Path:
    """(Y, X, 3) probabilities as deepImageJ hands them to the macro: a float32 image of 3 channels."""
    tifffile.imwrite(
        path, np.moveaxis(probabilities.astype(np.float32), -1, 0), imagej=True, metadata={"axes": "CYX"}
    )
    return path


def agreement(python: np.ndarray, imagej: np.ndarray) -> float:
    """F1 at IoU 0.5 of ImageJ's objects against Python's (1.0 where both find none)."""
    return evaluate_instances([(python, imagej)], thresholds=[0.5])["f1_at_0.5"]


def _thresholds(instances: Instances) -> dict:
    return {
        "interior_threshold": instances.interior_threshold,
        "foreground_threshold": instances.foreground_threshold,
        "min_size": instances.min_object_size,
    }


def test_seeds_are_4_connected_and_small_objects_go_to_their_neighbours(tmp_path):
    """Hand-made probabilities with the cases a loose reading of the rule gets wrong: seeds that touch
    only at a corner (two objects), a one-pixel seed beside a large object (too small: its pixels go to
    the large one), foreground that no seed reaches (background)."""
    shape = (40, 48)
    interior = np.zeros(shape, np.float32)
    background = np.ones(shape, np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx, r in ((10, 10, 6), (28, 30, 8)):
        distance = np.hypot(yy - cy, xx - cx)
        interior[distance <= r] = 0.9 - 0.03 * distance[distance <= r]
        background[distance <= r + 2] = 0.1
    interior[14:17, 36:39] = interior[17:20, 39:42] = 0.8  # corner to corner
    background[13:21, 35:43] = 0.1
    interior[10, 18] = 0.95  # in the first object's rim
    background[35:39, 2:8] = 0.2  # no seed
    probabilities = np.stack([background, interior, 1 - background - interior], axis=-1)
    instances = Instances(interior_threshold=0.5, foreground_threshold=0.5, min_object_size=6)
    macro = tmp_path / write_macro(instances, tmp_path)

    (imagej,) = run_in_imagej(macro, [write_probabilities(tmp_path / "hand.tif", probabilities)], tmp_path)
    python = classes_to_instances(probabilities, **_thresholds(instances))
    assert python.max() == 4 and python[10, 18] == python[10, 10] and python[37, 4] == 0
    np.testing.assert_array_equal(imagej > 0, python > 0)
    assert imagej.max() == 4 and imagej[10, 18] == imagej[10, 10]
    assert agreement(python, imagej) == 1.0


def _package_macro(package: Path, folder: Path) -> tuple[Path, Instances, dict]:
    """The macro of the shipped nuclei model's package, the thresholds it declares and those it tuned."""
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    shipped = SHIPPED["nuclei"].folder
    declared = Instances(**json.loads((shipped / "declaration.json").read_text())["instances"])
    return folder / MACRO_FILE, declared, json.loads((shipped / "postprocessing.json").read_text())


@pytest.mark.slow  # exports the shipped model with every check: a minute or two on 2 cores
def test_macro_of_the_package_gives_pythons_cells_on_its_test_output(nuclei_package, tmp_path):
    _imagej_command()  # skips before anything else where ImageJ is missing
    macro, instances, tuned = _package_macro(nuclei_package, tmp_path / "package")
    # The package's macro holds the thresholds the run chose on its validation images.
    assert _thresholds(instances) == {
        "interior_threshold": tuned["interior_threshold"],
        "foreground_threshold": tuned["foreground_threshold"],
        "min_size": tuned["min_object_size"],
    }
    output = np.load(tmp_path / "package" / "test_output.npy")[0]

    (imagej,) = run_in_imagej(macro, [write_probabilities(tmp_path / "test_output.tif", output)], tmp_path)
    python = classes_to_instances(output, **_thresholds(instances))
    score = agreement(python, imagej)
    print(f"macro against Python on the package's test output: F1@0.5 {score} ({python.max()} objects)")
    assert score >= MIN_AGREEMENT, (python.max(), imagej.max())


@pytest.mark.slow  # exports the shipped model with every check: a minute or two on 2 cores
def test_macro_of_the_package_gives_pythons_cells_on_real_dsb_images(dsb_dir, nuclei_package, tmp_path):
    _imagej_command()
    with (dsb_dir / "index.csv").open(newline="") as handle:
        held_out = [row["name"] for row in csv.DictReader(handle) if row["split"] == "test"][:5]
    images = [dsb_dir / "images" / f"{name}.tif" for name in held_out]
    assert (
        predict_main(["nuclei", *map(str, images), "--out", str(tmp_path / "pred"), "--precision", "float32"])
        == 0
    )
    probabilities = [tmp_path / "pred" / f"{path.stem}_probabilities.tif" for path in images]
    macro, instances, _ = _package_macro(nuclei_package, tmp_path / "package")

    labels = run_in_imagej(macro, probabilities, tmp_path)
    scores = {}
    for path, imagej in zip(probabilities, labels, strict=True):
        python = classes_to_instances(np.moveaxis(tifffile.imread(path), 0, -1), **_thresholds(instances))
        assert python.max() > 0, f"{path.name}: no objects; the test needs a model that finds some"
        scores[path.stem] = agreement(python, imagej)
    print("macro against Python, F1@0.5 per image:", scores)
    assert min(scores.values()) >= MIN_AGREEMENT, scores
