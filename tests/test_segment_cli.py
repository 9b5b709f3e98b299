"""Tests of the `python -m training.segment` entry point: the run folder a training leaves, the errors it
reports for bad input (exit status 2, one `error:` line per problem naming the file or key, and no run
folder left behind), run-name collisions, and what `--resume` accepts and refuses.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from training.segment import main
from training.tasks.segment import SegmentConfig

RUN_FILES = (
    "config.json",
    "split.json",
    "state.json",
    "best.keras",
    "last.keras",
    "history.csv",
    "curves.png",
    "metrics.json",
    "sample.npy",
    "declaration.json",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The split written by write_synthetic_dataset(n_images=4, seed=0) into index.csv.
TRAIN_IMAGE, VAL_IMAGE = "synth_002.tif", "synth_001.tif"


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _epochs(run_dir: Path) -> list[int]:
    return [int(row["epoch"]) for row in _history(run_dir)]


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_segment_flags: tuple[str, ...]) -> Path:
    """A finished two-epoch run on the tiny dataset (shared: copy it before changing it)."""
    out_dir = tmp_path_factory.mktemp("finished") / "runs"
    code = main([*tiny_segment_flags, "--out-dir", str(out_dir), "--run-name", "tiny"])
    assert code == 0, "the tiny training run failed"
    return out_dir / "tiny"


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, for tests that resume it."""
    return Path(shutil.copytree(finished_run, tmp_path / "runs" / "tiny"))


# === A successful run ===


def test_successful_run_leaves_every_file_of_a_run_folder(finished_run: Path) -> None:
    missing = [name for name in RUN_FILES if not (finished_run / name).is_file()]
    assert not missing
    assert (finished_run / "tensorboard").is_dir()


def test_history_has_one_row_per_epoch_with_losses_and_learning_rate(finished_run: Path) -> None:
    rows = _history(finished_run)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"loss", "val_loss", "learning_rate"} <= set(rows[0])
    for row in rows:
        assert np.isfinite([float(row["loss"]), float(row["val_loss"])]).all()
        assert float(row["learning_rate"]) == pytest.approx(1e-3)


def test_state_counts_the_epochs_done(finished_run: Path) -> None:
    state = json.loads((finished_run / "state.json").read_text())
    assert state["epochs_done"] == 2
    assert state["monitor"] == "val_loss"


def test_curves_png_is_a_readable_png(finished_run: Path) -> None:
    path = finished_run / "curves.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = iio.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_tensorboard_folder_holds_event_files(finished_run: Path) -> None:
    events = list((finished_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    assert all(path.stat().st_size > 0 for path in events)


def test_metrics_json_has_pixel_iou_and_instance_metrics(finished_run: Path) -> None:
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert {"pixel_iou", "instances"} <= set(metrics)
    assert set(metrics["pixel_iou"]) == {"background", "interior", "boundary"}
    assert all(value is None or 0 <= value <= 1 for value in metrics["pixel_iou"].values())
    assert metrics["evaluated_on"] == "test"
    assert metrics["images"] == ["synth_000"]


def test_split_json_follows_the_index_csv(finished_run: Path, tiny_segment_data: Path) -> None:
    split = json.loads((finished_run / "split.json").read_text())
    assert Path(split["data_dir"]) == tiny_segment_data.resolve()
    names = {name: [image for image, _ in pairs] for name, pairs in split["pairs"].items()}
    assert names == {
        "train": ["synth_002.tif", "synth_003.tif"],
        "val": ["synth_001.tif"],
        "test": ["synth_000.tif"],
    }


def test_config_json_holds_the_options_of_the_command_line(finished_run: Path) -> None:
    values = json.loads((finished_run / "config.json").read_text())
    assert values["schema_version"] == 2
    config = SegmentConfig(**values)
    assert (config.epochs, config.patch_size, config.depth, config.base_filters) == (2, 32, 1, 4)
    assert config.run_name == "tiny"


# === Bad input: exit status 2, the offending file named, no run folder ===


def _remove_folder(data: Path) -> Path:
    shutil.rmtree(data)
    return data


def _empty_folders(data: Path) -> Path:
    for sub in ("images", "masks"):
        for path in (data / sub).iterdir():
            path.unlink()
    return data / "images"


def _image_without_mask(data: Path) -> Path:
    (data / "masks" / TRAIN_IMAGE).unlink()
    return data / "images" / TRAIN_IMAGE


def _mask_without_image(data: Path) -> Path:
    (data / "images" / TRAIN_IMAGE).unlink()
    return data / "masks" / TRAIN_IMAGE


def _mask_of_another_shape(data: Path) -> Path:
    tifffile.imwrite(data / "masks" / TRAIN_IMAGE, np.zeros((48, 64), np.uint16))
    return data / "masks" / TRAIN_IMAGE


def _corrupt_tiff(data: Path) -> Path:
    (data / "images" / TRAIN_IMAGE).write_bytes(b"this is not a TIFF file at all" * 10)
    return data / "images" / TRAIN_IMAGE


def _stack_instead_of_2d(data: Path) -> Path:
    tifffile.imwrite(data / "images" / TRAIN_IMAGE, np.zeros((10, 64, 64), np.uint8))
    return data / "images" / TRAIN_IMAGE


def _nan_in_image(data: Path) -> Path:
    image = np.ones((64, 64), np.float32)
    image[3, 5] = np.nan
    tifffile.imwrite(data / "images" / TRAIN_IMAGE, image)
    return data / "images" / TRAIN_IMAGE


def _fractional_mask(data: Path) -> Path:
    tifffile.imwrite(data / "masks" / TRAIN_IMAGE, np.full((64, 64), 0.5, np.float32))
    return data / "masks" / TRAIN_IMAGE


BREAKERS: dict[str, Callable[[Path], Path]] = {
    "missing data folder": _remove_folder,
    "empty images and masks": _empty_folders,
    "image without mask": _image_without_mask,
    "mask without image": _mask_without_image,
    "mask of another shape": _mask_of_another_shape,
    "corrupt tiff": _corrupt_tiff,
    "3d stack": _stack_instead_of_2d,
    "nan in float image": _nan_in_image,
    "non-integer float mask": _fractional_mask,
}


@pytest.mark.parametrize("breaker", BREAKERS.values(), ids=BREAKERS.keys())
def test_bad_data_is_refused_naming_the_file_and_leaves_no_run_folder(
    breaker: Callable[[Path], Path],
    tiny_segment_data: Path,
    tiny_segment_flags: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = Path(shutil.copytree(tiny_segment_data, tmp_path / "data"))
    offending = breaker(data)
    out_dir = tmp_path / "runs"

    code = main([*tiny_segment_flags, "--data", str(data), "--out-dir", str(out_dir)])

    assert code == 2
    errors = _error_lines(capsys)
    assert any(str(offending) in line for line in errors), errors
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_two_bad_files_are_reported_together(
    tiny_segment_data: Path,
    tiny_segment_flags: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = Path(shutil.copytree(tiny_segment_data, tmp_path / "data"))
    corrupt = _corrupt_tiff(data)
    tifffile.imwrite(data / "images" / VAL_IMAGE, np.full((64, 64), np.inf, np.float32))
    out_dir = tmp_path / "runs"

    code = main([*tiny_segment_flags, "--data", str(data), "--out-dir", str(out_dir)])

    assert code == 2
    errors = _error_lines(capsys)
    assert [line for line in errors if str(corrupt) in line]
    assert [line for line in errors if str(data / "images" / VAL_IMAGE) in line]
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (("--patch-size", "4"), "patch_size"),
        (("--learning-rate", "-1"), "learning_rate"),
    ],
)
def test_out_of_range_option_is_refused_naming_the_key(
    flags: tuple[str, ...],
    key: str,
    tiny_segment_flags: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = tmp_path / "runs"

    code = main([*tiny_segment_flags, "--out-dir", str(out_dir), *flags])

    assert code == 2
    assert any(key in line for line in _error_lines(capsys))
    assert not out_dir.exists()


def test_unknown_key_in_config_file_is_refused_naming_file_and_key(
    tiny_segment_flags: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "options.json"
    config_file.write_text(json.dumps({"patch_sise": 32}))
    out_dir = tmp_path / "runs"

    code = main([*tiny_segment_flags, "--out-dir", str(out_dir), "--config", str(config_file)])

    assert code == 2
    errors = _error_lines(capsys)
    assert any(str(config_file) in line and "patch_sise" in line for line in errors), errors
    assert not out_dir.exists()


@pytest.mark.parametrize("what", ["empty folder", "missing path"])
def test_resume_of_something_that_is_not_a_run_is_refused(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_run = tmp_path / "not-a-run"
    if what == "empty folder":
        not_a_run.mkdir()
    before = sorted(tmp_path.rglob("*"))

    code = main(["--resume", str(not_a_run)])

    assert code == 2
    assert any(str(not_a_run) in line for line in _error_lines(capsys))
    assert sorted(tmp_path.rglob("*")) == before


# === Run-name collision ===


def test_existing_run_name_is_refused_and_left_untouched(
    tiny_segment_flags: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "runs" / "taken"
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("an earlier experiment\n")
    before = _snapshot(taken)

    code = main([*tiny_segment_flags, "--out-dir", str(tmp_path / "runs"), "--run-name", "taken"])

    assert code == 2
    assert any(str(taken) in line for line in _error_lines(capsys))
    assert _snapshot(taken) == before
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["taken"]


# === Resume ===


def test_resume_refuses_a_changed_depth_and_leaves_the_run_untouched(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run_copy)

    code = main(["--resume", str(run_copy), "--depth", "2"])

    assert code == 2
    assert any("depth" in line and str(run_copy) in line for line in _error_lines(capsys))
    assert _snapshot(run_copy) == before


def test_resume_refuses_a_changed_depth_from_a_config_file(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--config` with `--resume` must not be silently ignored: its options are changes like flags."""
    config_file = tmp_path / "options.json"
    config_file.write_text(json.dumps({"depth": 2}))
    before = _snapshot(run_copy)

    code = main(["--resume", str(run_copy), "--config", str(config_file)])

    assert code == 2
    assert any("depth" in line for line in _error_lines(capsys))
    assert _snapshot(run_copy) == before


def test_resume_with_more_epochs_extends_a_finished_run(run_copy: Path) -> None:
    first_rows = _history(run_copy)

    code = main(["--resume", str(run_copy), "--epochs", "3"])

    assert code == 0
    assert _epochs(run_copy) == [1, 2, 3]
    assert _history(run_copy)[:2] == first_rows
    assert json.loads((run_copy / "state.json").read_text())["epochs_done"] == 3
    assert (run_copy / "metrics.json").is_file()


def test_resume_of_a_finished_run_trains_no_more_epochs(run_copy: Path) -> None:
    history = (run_copy / "history.csv").read_bytes()

    code = main(["--resume", str(run_copy)])

    assert code == 0
    assert (run_copy / "history.csv").read_bytes() == history
    assert (run_copy / "metrics.json").is_file()


def test_resume_upgrades_a_run_folder_of_schema_1_in_place(run_copy: Path) -> None:
    config = json.loads((run_copy / "config.json").read_text())
    del config["schema_version"]
    (run_copy / "config.json").write_text(json.dumps(config))
    (run_copy / "declaration.json").unlink()
    history = (run_copy / "history.csv").read_bytes()

    assert main(["--resume", str(run_copy)]) == 0

    assert json.loads((run_copy / "config.json").read_text()) == config | {"schema_version": 2}
    assert (run_copy / "declaration.json").is_file()
    assert (run_copy / "history.csv").read_bytes() == history
