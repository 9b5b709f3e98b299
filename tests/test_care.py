"""CARE, the supervised restoration task: pairs in, a restored image out, a package that passes the checks."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bioimageio.spec.utils import read_yaml

from base.run_folder import DECLARATION_FILE, METRICS_FILE, NORMALIZATION_FILE, SPLIT_FILE
from training.care import main
from training.predict import main as predict_main
from training.tasks.care import DEMO_GRID, embedded_demo

TINY_CARE_FLAGS = tuple(
    "--epochs 2 --steps-per-epoch 2 --patch-size 32 --batch-size 4 --base-filters 8 --val-patches 4 "
    "--no-export".split()
)


def _pairs(folder: Path, names: list[str], *, shape=(48, 48), seed: int = 0) -> Path:
    """Noisy/clean pairs of smooth random images in FOLDER/low and FOLDER/high."""
    rng = np.random.default_rng(seed)
    for sub in ("low", "high"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        clean = rng.uniform(0, 200, shape).astype(np.float32)
        tifffile.imwrite(folder / "high" / f"{name}.tif", clean)
        tifffile.imwrite(folder / "low" / f"{name}.tif", clean + rng.normal(0, 20, shape).astype(np.float32))
    return folder


def _run_dir(out: Path) -> Path:
    (run_dir,) = out.iterdir()
    return run_dir


def test_the_embedded_demo_is_noisy_tiles_of_a_clean_image_with_known_noise(tmp_path):
    embedded_demo(tmp_path, sigma=25.0, seed=3)
    low = sorted((tmp_path / "low").iterdir())
    assert len(low) == DEMO_GRID**2
    for path in low:
        noise = tifffile.imread(path) - tifffile.imread(tmp_path / "high" / path.name)
        assert abs(float(noise.std()) - 25.0) < 2.5
        assert abs(float(noise.mean())) < 2.5


def test_a_care_run_records_its_pairs_and_predicts_as_it_evaluated(tmp_path):
    out = tmp_path / "runs"
    assert main(["--out-dir", str(out), *TINY_CARE_FLAGS]) == 0  # the embedded demo
    run_dir = _run_dir(out)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert metrics["checkpoint"] == "best.keras"
    assert metrics["evaluated_on"] == "test"
    split = json.loads((run_dir / SPLIT_FILE).read_text())
    tested = [low for low, _ in split["pairs"]["test"]]
    assert [entry["name"] + ".tif" for entry in metrics["images"]] == tested
    assert not set(tested) & {low for low, _ in split["pairs"]["train"]}
    stats = json.loads((run_dir / NORMALIZATION_FILE).read_text())
    assert {"mean", "std", "target"} <= set(stats)
    declaration = json.loads((run_dir / DECLARATION_FILE).read_text())
    assert (declaration["input"]["id"], declaration["output"]["id"]) == ("raw", "restored")
    assert declaration["cite"][0]["doi"] == "10.1038/s41592-018-0216-7"

    # training.predict on the raw test input gives the run's own output of it
    low = Path(split["data_dir"]) / "low" / tested[0]
    assert (
        predict_main([str(run_dir), str(low), "--out", str(tmp_path / "pred"), "--precision", "float32"]) == 0
    )
    predicted = tifffile.imread(tmp_path / "pred" / f"{low.stem}_restored.tif").squeeze()
    own = tifffile.imread(run_dir / "restored" / tested[0]).squeeze()
    np.testing.assert_allclose(predicted, own, atol=1e-4)


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("missing_partner", "low-quality image has no high-quality image"),
        ("other_size", "differs from"),
        ("other_channels", "differs from"),
        ("nan", "NaN"),
    ],
)
def test_bad_pairs_are_refused_one_line_each_and_nothing_is_written(tmp_path, capsys, damage, problem):
    data = _pairs(tmp_path / "data", [f"im{i}" for i in range(6)])
    bad = {"missing_partner": "im1", "other_size": "im2", "other_channels": "im3", "nan": "im4"}[damage]
    if damage == "missing_partner":
        (data / "high" / f"{bad}.tif").unlink()
    elif damage == "other_size":
        tifffile.imwrite(data / "high" / f"{bad}.tif", np.ones((40, 48), np.float32))
    elif damage == "other_channels":
        tifffile.imwrite(data / "high" / f"{bad}.tif", np.ones((48, 48, 2), np.float32))
    else:
        image = tifffile.imread(data / "low" / f"{bad}.tif")
        image[3, 3] = np.nan
        tifffile.imwrite(data / "low" / f"{bad}.tif", image)
    out = tmp_path / "runs"
    assert main(["--data", str(data), "--out-dir", str(out), *TINY_CARE_FLAGS]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert bad in errors[0] and problem in errors[0]
    assert not out.exists() or not list(out.iterdir())


def test_noisy_and_clean_folders_are_pairs_too(tmp_path):
    data = _pairs(tmp_path / "data", [f"im{i}" for i in range(5)])
    shutil.move(data / "low", data / "noisy")
    shutil.move(data / "high", data / "clean")
    out = tmp_path / "runs"
    assert main(["--data", str(data), "--out-dir", str(out), *TINY_CARE_FLAGS]) == 0
    assert json.loads((_run_dir(out) / SPLIT_FILE).read_text())["layout"] == ["noisy", "clean"]


def test_a_folder_without_pairs_says_which_folders_it_needs(tmp_path, capsys):
    (tmp_path / "data" / "images").mkdir(parents=True)
    assert (
        main(["--data", str(tmp_path / "data"), "--out-dir", str(tmp_path / "runs"), *TINY_CARE_FLAGS]) == 2
    )
    assert "expected low/ and high/ or noisy/ and clean/" in capsys.readouterr().err


@pytest.mark.slow
def test_care_learns_resumes_exactly_and_exports_a_checked_package(tmp_path):
    """A resumed run continues as an uninterrupted one; CARE improves held-out PSNR clearly; the package
    passes every export check (training ends with it) and declares CARE's normalisation."""
    flags = ["--epochs", "6", "--steps-per-epoch", "10", "--batch-size", "8", "--patch-size", "48"]
    flags += ["--base-filters", "16", "--val-patches", "8", "--run-name", "care"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["--out-dir", str(whole), *flags]) == 0
    assert main(["--out-dir", str(parts), *flags, "--epochs", "3", "--no-export"]) == 0
    assert main(["--resume", str(parts / "care"), "--epochs", "6"]) == 0

    def history(run: Path) -> list[tuple]:
        with (run / "history.csv").open(newline="") as handle:
            return [
                (row["epoch"], row["loss"], row["val_loss"], row["learning_rate"])
                for row in csv.DictReader(handle)
            ]

    assert history(whole / "care") == history(parts / "care")
    assert len(history(whole / "care")) == 6
    metrics = json.loads((whole / "care" / METRICS_FILE).read_text())
    assert metrics["mean_psnr_gain_db"] > 5.0, metrics["mean_psnr_gain_db"]

    with zipfile.ZipFile(whole / "care" / "package.zip") as package:
        package.extract("rdf.yaml", tmp_path)
    rdf = read_yaml(tmp_path / "rdf.yaml")
    # bioimageio.spec adds `ensure_dtype` steps around the declared ones
    pre = {op["id"]: op for op in rdf["inputs"][0]["preprocessing"]}
    post = {op["id"]: op for op in rdf["outputs"][0]["postprocessing"]}
    stats = json.loads((whole / "care" / NORMALIZATION_FILE).read_text())
    assert pre["fixed_zero_mean_unit_variance"]["kwargs"]["mean"] == pytest.approx(stats["mean"][0])
    assert post["scale_linear"]["kwargs"]["offset"] == pytest.approx(stats["target"]["mean"][0])


def test_care_trains_on_ome_zarr_pairs_read_patch_by_patch_as_in_memory(tmp_path):
    import csv

    import zarr

    from training.lazy import ngff_attributes

    memory = _pairs(tmp_path / "memory", [f"im{i}" for i in range(4)], shape=(96, 80))
    rows = ["name,split", "im0,train", "im1,train", "im2,val", "im3,test"]
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    lazy = tmp_path / "lazy"
    shutil.copytree(memory, lazy)
    for name in ("im0", "im1"):  # the training pairs, as OME-Zarr
        for sub in ("low", "high"):
            tiff = next((lazy / sub).glob(f"{name}.*"))
            group = zarr.open_group(str(lazy / sub / f"{name}.ome.zarr"), mode="w", zarr_format=2)
            group.attrs.update(ngff_attributes("YX", {}, name=name))
            group.create_array("0", data=tifffile.imread(tiff), chunks=(32, 32))
            tiff.unlink()
    for data in (memory, lazy):
        argv = ["--data", str(data), "--split-csv", str(tmp_path / "split.csv"), *TINY_CARE_FLAGS]
        assert main([*argv, "--out-dir", str(tmp_path / "runs"), "--run-name", data.name]) == 0
    histories = [
        list(csv.DictReader((tmp_path / "runs" / n / "history.csv").open())) for n in ("memory", "lazy")
    ]
    for in_memory, read_lazily in zip(*histories, strict=True):
        for key in ("loss", "val_loss"):
            assert float(read_lazily[key]) == pytest.approx(float(in_memory[key]), rel=1e-5)
