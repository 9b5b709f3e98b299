"""`python -m training.denoise`: the inputs it refuses (exit status 2, one `error:` line naming the file or
key, no run folder left behind), 3D stacks denoised slice by slice, `--resume` with more epochs, and the
step timing columns of `history.csv`.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from training.denoise import main

# The tiny options of tests/test_denoise_cli.py, with a second epoch so the history has several rows.
TINY = (
    "--epochs 2 --steps-per-epoch 2 --batch-size 4 --patch-size 32 --base-filters 4 --depth 1 "
    "--val-patches 4 --mask-fraction 0.01 --warmup-epochs 0 --no-export"
).split()
SLICES = 6


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _noisy(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 15.0, shape).astype(np.float32)


def _clean_stack() -> np.ndarray:
    """(Z, Y, X) stripes of a different frequency in every slice: orthogonal patterns, told apart by
    correlation."""
    x = np.arange(48)
    stripes = np.stack([np.sin(2 * np.pi * (z + 1) * x / 48) for z in range(SLICES)])
    return np.broadcast_to(100.0 + 40.0 * stripes[:, None, :], (SLICES, 48, 48)).astype(np.float32)


def _stack() -> np.ndarray:
    return _clean_stack() + np.random.default_rng(1).normal(0.0, 10.0, (SLICES, 48, 48)).astype(np.float32)


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run on a 3D stack of six 48x48 slices (data/stack.tif next to the runs)."""
    root = tmp_path_factory.mktemp("stack")
    (root / "data").mkdir()
    tifffile.imwrite(root / "data" / "stack.tif", _stack())
    data, out_dir = root / "data" / "stack.tif", root / "runs"
    # With the residual path a two-epoch network stays close to its input, so each output slice can be
    # told apart by its stripes; without it, two epochs leave little of the input.
    flags = [*TINY, "--residual"]
    code = main(["--data", str(data), "--out-dir", str(out_dir), "--run-name", "tiny", *flags])
    assert code == 0, "the tiny denoising run on a stack failed"
    return root / "runs" / "tiny"


# === Refused inputs ===


def _missing_path(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "missing.tif"
    return ["--data", str(path)], str(path)


def _empty_folder(tmp_path: Path) -> tuple[list[str], str]:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image\n")
    return ["--data", str(folder)], str(folder)


def _corrupt_tiff(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "corrupt.tif"
    path.write_bytes(bytes(range(256)) * 4)
    return ["--data", str(path)], str(path)


def _corrupt_tiff_in_a_folder(tmp_path: Path) -> tuple[list[str], str]:
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "good.tif", _noisy((64, 64)))
    # A real TIFF cut short: the header is fine, the image data is missing.
    (folder / "truncated.tif").write_bytes((folder / "good.tif").read_bytes()[:200])
    return ["--data", str(folder)], str(folder / "truncated.tif")


def _too_small(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, _noisy((12, 80)))
    return ["--data", str(path)], f"{path}: image of 12x80 pixels is too small"


def _mask_radius_zero(tmp_path: Path) -> tuple[list[str], str]:
    tifffile.imwrite(tmp_path / "image.tif", _noisy((64, 64)))
    return ["--data", str(tmp_path / "image.tif"), "--mask-radius", "0"], "mask_radius"


def _mask_radius_too_large(tmp_path: Path) -> tuple[list[str], str]:
    tifffile.imwrite(tmp_path / "image.tif", _noisy((64, 64)))
    return ["--data", str(tmp_path / "image.tif"), "--mask-radius", "11"], "mask_radius"


def _unknown_config_key(tmp_path: Path) -> tuple[list[str], str]:
    tifffile.imwrite(tmp_path / "image.tif", _noisy((64, 64)))
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"mask_radius": 2, "mask_radious": 3}))
    return ["--data", str(tmp_path / "image.tif"), "--config", str(config)], f"{config}"


def _config_value_out_of_range(tmp_path: Path) -> tuple[list[str], str]:
    tifffile.imwrite(tmp_path / "image.tif", _noisy((64, 64)))
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"mask_radius": 20}))
    return ["--data", str(tmp_path / "image.tif"), "--config", str(config)], f"{config}"


def _config_not_json(tmp_path: Path) -> tuple[list[str], str]:
    tifffile.imwrite(tmp_path / "image.tif", _noisy((64, 64)))
    config = tmp_path / "options.json"
    config.write_text("mask_radius = 2\n")
    return ["--data", str(tmp_path / "image.tif"), "--config", str(config)], f"{config}"


REFUSED: dict[str, tuple[Callable[[Path], tuple[list[str], str]], str]] = {
    "missing path": (_missing_path, "no such file or folder"),
    "empty folder": (_empty_folder, "no images"),
    "corrupt tiff": (_corrupt_tiff, "unreadable image"),
    "corrupt tiff in a folder": (_corrupt_tiff_in_a_folder, "unreadable image"),
    "image too small for the patch": (_too_small, "--patch-size"),
    "mask radius 0": (_mask_radius_zero, "got '0'"),
    "mask radius 11": (_mask_radius_too_large, "got '11'"),
    "unknown key in config file": (_unknown_config_key, "unknown key 'mask_radious'"),
    "config value out of range": (_config_value_out_of_range, "mask_radius"),
    "config file not json": (_config_not_json, "not a readable JSON file"),
}


@pytest.mark.parametrize(("make", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_input_gives_one_error_line_naming_it_and_no_run_folder(
    make, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, named = make(tmp_path)
    out = tmp_path / "runs"

    code = main([*TINY, *flags, "--out-dir", str(out)])

    assert code == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1, errors
    assert named in errors[0] and reason in errors[0], errors
    assert not out.exists() or not any(out.iterdir())


def test_every_bad_file_of_a_folder_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"garbage" * 50)
    tifffile.imwrite(folder / "b.tif", _noisy((64, 64)))
    nan = _noisy((64, 64))
    nan[5, 5] = np.nan
    tifffile.imwrite(folder / "c.tif", nan)
    out = tmp_path / "runs"

    assert main([*TINY, "--data", str(folder), "--out-dir", str(out)]) == 2

    errors = _error_lines(capsys)
    assert len(errors) == 2, errors
    assert str(folder / "a.tif") in errors[0] and str(folder / "c.tif") in errors[1]
    assert not out.exists() or not any(out.iterdir())


# === A 3D stack ===


def test_stack_is_denoised_as_2d_slices_kept_in_order(stack_run: Path) -> None:
    outputs = sorted((stack_run / "denoised").iterdir())
    assert [p.name for p in outputs] == [f"stack_z{z:04d}.tif" for z in range(SLICES)]
    clean = _clean_stack()
    for z, path in enumerate(outputs):
        denoised = tifffile.imread(path)
        assert denoised.shape == clean.shape[1:] and denoised.dtype == np.float32
        # Output z shows the stripes of slice z, and not those of another slice.
        correlations = [np.corrcoef(denoised.ravel(), plane.ravel())[0, 1] for plane in clean]
        assert int(np.argmax(correlations)) == z and correlations[z] > 0.5, correlations
    metrics = json.loads((stack_run / "metrics.json").read_text())
    assert [entry["name"] for entry in metrics["images"]] == [f"stack_z{z:04d}" for z in range(SLICES)]


def test_history_has_positive_step_and_epoch_times_in_every_row(stack_run: Path) -> None:
    rows = _history(stack_run)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    for row in rows:
        step_ms, epoch_seconds = float(row["step_ms"]), float(row["epoch_seconds"])
        assert 0 < step_ms and 0 < epoch_seconds
        # A step is part of its epoch.
        assert step_ms / 1000 <= epoch_seconds


# === Resume ===


def test_resume_with_more_epochs_continues_the_run(stack_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(stack_run, tmp_path / "runs" / "tiny"))
    before = _history(run)

    assert main(["--resume", str(run), "--epochs", "3"]) == 0

    rows = _history(run)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert rows[:2] == before
    assert float(rows[2]["step_ms"]) > 0 and float(rows[2]["epoch_seconds"]) > 0
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 3
    assert json.loads((run / "config.json").read_text())["epochs"] == 2  # the original record is kept
    assert len(list((run / "denoised").iterdir())) == SLICES
