"""Choosing the post-processing thresholds on validation images (`training.evaluate.tune_postprocessing`)
and how a segmentation run and `training.predict` use the choice."""

import json

import numpy as np
import tifffile
from skimage.draw import disk

from training.evaluate import POSTPROCESSING_KEYS, tune_postprocessing
from training.predict import main as predict_main
from training.segment import main as segment_main
from training.targets import classes_to_instances, instance_to_classes
from training.tasks.segment import SegmentConfig


def _nuclei(seed: int) -> np.ndarray:
    """A 96x96 label image of 6 separate disks."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((96, 96), np.uint16)
    centres = [(20, 20), (20, 70), (50, 45), (78, 18), (78, 72), (50, 85)]
    for index, (row, col) in enumerate(centres, start=1):
        labels[disk((row + rng.integers(-2, 3), col + rng.integers(-2, 3)), rng.integers(6, 10))] = index
    return labels


def _probabilities(labels: np.ndarray, interior_peak: float) -> np.ndarray:
    """Class probabilities that are right everywhere but never more than `interior_peak` sure of the
    interior (the rest of its mass goes to the boundary class)."""
    classes = instance_to_classes(labels)
    probabilities = np.zeros((*labels.shape, 3), np.float32)
    probabilities[..., 0] = classes == 0
    probabilities[..., 1] = (classes == 1) * interior_peak
    probabilities[..., 2] = (classes == 2) + (classes == 1) * (1 - interior_peak)
    return probabilities


def test_an_unsure_model_gets_a_lower_interior_threshold_that_finds_every_object():
    labels = [_nuclei(seed) for seed in range(3)]
    probabilities = [_probabilities(lab, interior_peak=0.45) for lab in labels]
    config = SegmentConfig()
    tuned = tune_postprocessing(probabilities, labels, config=config)
    default = next(
        point
        for point in tuned["grid"]
        if tuple(point[key] for key in POSTPROCESSING_KEYS) == (0.5, 0.5, config.min_object_size)
    )
    assert default["f1_at_0.5"] == 0.0  # p(interior) never passes 0.5: no seeds, no objects
    assert tuned["interior_threshold"] < 0.45
    assert tuned["f1_at_0.5"] == 1.0


def test_ties_keep_the_configured_values_even_off_the_grid():
    labels = [_nuclei(seed) for seed in range(2)]
    probabilities = [_probabilities(lab, interior_peak=1.0) for lab in labels]
    config = SegmentConfig(interior_threshold=0.55, foreground_threshold=0.45, min_object_size=12)
    tuned = tune_postprocessing(probabilities, labels, config=config)
    # Perfect probabilities: every reasonable threshold scores 1.0, so nothing is changed.
    assert tuned["f1_at_0.5"] == 1.0
    assert (tuned["interior_threshold"], tuned["foreground_threshold"], tuned["min_object_size"]) == (
        0.55,
        0.45,
        12,
    )
    # The grid holds the configured point and a third and twice the configured minimum size.
    assert {point["min_object_size"] for point in tuned["grid"]} == {4, 12, 24}


def test_segment_run_keeps_its_choice_and_predict_uses_it(tmp_path, tiny_segment_flags, tiny_segment_data):
    out = tmp_path / "runs"
    assert segment_main([*tiny_segment_flags, "--out-dir", str(out), "--run-name", "run"]) == 0
    run = out / "run"
    tuned = json.loads((run / "postprocessing.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["postprocessing"] == {key: tuned[key] for key in POSTPROCESSING_KEYS}
    assert tuned["chosen_on"] and set(tuned["chosen_on"]).isdisjoint(metrics["images"])

    # Predict follows postprocessing.json. Two epochs leave the probabilities unsure, so thresholds are
    # set from the probabilities of one image, where the configured ones (config.json) give other labels.
    image = next((tiny_segment_data / "images").glob("*.tif"))
    assert (
        predict_main([str(run), str(image), "--out", str(tmp_path / "first"), "--precision", "float32"]) == 0
    )
    probabilities = np.moveaxis(
        tifffile.imread(tmp_path / "first" / f"{image.stem}_probabilities.tif"), 0, -1
    )
    chosen = {
        "interior_threshold": float(np.quantile(probabilities[..., 1], 0.9)),
        "foreground_threshold": float(np.quantile(1.0 - probabilities[..., 0], 0.5)),
        "min_object_size": 3,
    }
    (run / "postprocessing.json").write_text(json.dumps(tuned | chosen))
    assert (
        predict_main([str(run), str(image), "--out", str(tmp_path / "pred"), "--precision", "float32"]) == 0
    )

    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "pred" / f"{image.stem}_probabilities.tif"),
        np.moveaxis(probabilities, -1, 0),
    )
    labels = tifffile.imread(tmp_path / "pred" / f"{image.stem}_labels.tif")

    def instances(thresholds: dict) -> np.ndarray:
        return classes_to_instances(
            probabilities,
            interior_threshold=thresholds["interior_threshold"],
            foreground_threshold=thresholds["foreground_threshold"],
            min_size=thresholds["min_object_size"],
        )

    expected = instances(chosen)
    assert expected.max() >= 2  # the control: the file's thresholds find objects, and each of its values
    configured = json.loads((run / "config.json").read_text())
    for key in POSTPROCESSING_KEYS:  # matters: the configured one in its place gives other labels
        assert not np.array_equal(instances(chosen | {key: configured[key]}), expected), key
    np.testing.assert_array_equal(labels, expected)


def test_no_tuning_leaves_no_file_and_keeps_the_configured_values(tmp_path, tiny_segment_flags):
    out = tmp_path / "runs"
    flags = [*tiny_segment_flags, "--no-tune-thresholds", "--interior-threshold", "0.6"]
    assert segment_main([*flags, "--out-dir", str(out), "--run-name", "run"]) == 0
    assert not (out / "run" / "postprocessing.json").exists()
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["postprocessing"]["interior_threshold"] == 0.6
