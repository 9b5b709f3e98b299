"""The shipped models (`zoo.pretrained`): each is complete, small, documented and predicts by name right
after install; the nuclei model segments real DSB2018 test images it never trained on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from training import predict
from training.metrics import evaluate_instances
from zoo.pretrained import CARD_FILE, SHIPPED, resolve_run

SIZE_LIMIT = 10 * 2**20  # the aim for the weights in the project


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_model_is_a_small_documented_run_folder(name: str):
    folder = SHIPPED[name].folder
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == SHIPPED[name].task
    assert (folder / "best.keras").stat().st_size <= SIZE_LIMIT
    card = (folder / CARD_FILE).read_text()
    # The card names the data, its licence, the command that trained it and the test scores.
    for needed in ("CC0", "python bench/", "F1 at IoU 0.5"):
        assert needed in card, needed
    metrics = json.loads((folder / "metrics.json").read_text())
    assert f"{metrics['instances']['f1_at_0.5']:.3f}" in card
    assert resolve_run(name) == folder


def test_a_folder_named_like_a_shipped_model_is_taken_as_a_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei").mkdir()
    assert resolve_run("nuclei") == Path("nuclei")


def test_the_nuclei_model_predicts_by_name_with_nothing_but_the_package(tmp_path: Path):
    """No shared data, no training, no network: the embedded synthetic nuclei are found."""
    from training.synthetic_files import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_images=3, shape=(128, 128), seed=4)
    image = next((data / "images").iterdir())
    assert predict.main(["nuclei", str(image), "--out", str(tmp_path / "out")]) == 0
    labels = tifffile.imread(tmp_path / "out" / f"{image.stem}_labels.tif")
    truth = tifffile.imread(data / "masks" / image.name)
    assert evaluate_instances([(truth, labels)], thresholds=(0.5,))["f1_at_0.5"] >= 0.5


def test_the_nuclei_model_segments_dsb_test_images_by_name(dsb_dir: Path, tmp_path: Path):
    with (dsb_dir / "index.csv").open(newline="") as handle:
        test = [row["name"] for row in csv.DictReader(handle) if row["split"] == "test"][:4]
    inputs = tmp_path / "images"
    inputs.mkdir()
    for name in test:
        (inputs / f"{name}.tif").symlink_to(dsb_dir / "images" / f"{name}.tif")
    assert predict.main(["nuclei", str(inputs), "--out", str(tmp_path / "out")]) == 0
    pairs = []
    for name in test:
        labels = tifffile.imread(tmp_path / "out" / f"{name}_labels.tif")
        truth = tifffile.imread(dsb_dir / "masks" / f"{name}.tif")
        assert labels.shape == truth.shape and np.issubdtype(labels.dtype, np.integer)
        pairs.append((truth, labels))
    # A floor well below the model's card (F1 on all 14 test images), above what an untrained network or
    # a broken normalisation or post-processing reaches.
    assert evaluate_instances(pairs, thresholds=(0.5,))["f1_at_0.5"] >= 0.8


@pytest.mark.slow
def test_the_nuclei_model_exports_as_a_package_that_passes_every_check(nuclei_package: Path):
    import zipfile

    with zipfile.ZipFile(nuclei_package) as archive:
        names = set(archive.namelist())
    assert {"rdf.yaml", "weights.keras", "weights.onnx", "instances.ijm"} <= names
