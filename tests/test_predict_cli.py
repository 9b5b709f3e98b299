"""`python -m training.predict` on tiny denoising and segmentation runs: the files it writes, how it treats
existing outputs, test-time augmentation, tiling, and the inputs it refuses (exit status 2, one `error:`
line naming the path).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile

import zoo
from training import denoise, segment
from training.predict import main

# The tiny options of tests/test_denoise_cli.py: a denoising run in a few seconds on two CPU cores.
# What the float32 reproductions below compare in (the default is the fastest precision here).
FLOAT32 = ("--precision", "float32")

TINY_DENOISE = (
    "--epochs 1 --steps-per-epoch 2 --batch-size 4 --patch-size 32 --base-filters 4 --depth 1 "
    "--val-patches 4 --mask-fraction 0.01 --warmup-epochs 0 --no-export"
).split()


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _noisy(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth ramp of intensities around 100 with Gaussian noise, float32."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60.0, 140.0, shape[-1])
    return (ramp + rng.normal(0.0, 15.0, shape)).astype(np.float32)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch denoising run on one noisy 64x64 image (data/noisy.tif next to it)."""
    root = tmp_path_factory.mktemp("denoise")
    (root / "data").mkdir()
    tifffile.imwrite(root / "data" / "noisy.tif", _noisy((64, 64), seed=0))
    data, out_dir = root / "data" / "noisy.tif", root / "runs"
    code = denoise.main(["--data", str(data), "--out-dir", str(out_dir), "--run-name", "tiny", *TINY_DENOISE])
    assert code == 0, "the tiny denoising run failed"
    return root / "runs" / "tiny"


@pytest.fixture(scope="module")
def segment_run(tmp_path_factory: pytest.TempPathFactory, tiny_segment_flags: tuple[str, ...]) -> Path:
    """A finished two-epoch segmentation run on the tiny synthetic dataset."""
    out_dir = tmp_path_factory.mktemp("segment-run") / "runs"
    code = segment.main([*tiny_segment_flags, "--out-dir", str(out_dir), "--run-name", "tiny"])
    assert code == 0, "the tiny segmentation run failed"
    return out_dir / "tiny"


@pytest.fixture
def noisy_folder(tmp_path: Path) -> Path:
    """A 2D image, a 3D stack of five slices and a non-square 16-bit image."""
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "plain.tif", _noisy((40, 52), seed=1))
    tifffile.imwrite(folder / "stack.tif", _noisy((5, 24, 30), seed=2))
    tifffile.imwrite(folder / "wide.tif", _noisy((20, 70), seed=3).astype(np.uint16))
    return folder


# === Denoising ===


def test_denoising_a_folder_writes_float32_tiffs_of_the_input_shapes(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    assert main([str(denoise_run), str(noisy_folder), "--out", str(out), *FLOAT32]) == 0

    assert _files(out) == ["plain_denoised.tif", "stack_denoised.tif", "wide_denoised.tif"]
    for name in ("plain", "stack", "wide"):
        image = tifffile.imread(noisy_folder / f"{name}.tif").astype(np.float32)
        denoised = tifffile.imread(out / f"{name}_denoised.tif")
        assert denoised.shape == image.shape, name
        assert denoised.dtype == np.float32, name
        assert np.isfinite(denoised).all(), name
        # In the input's intensities (the normalisation is undone), not in normalised units (a spread of
        # about 1). How close to the input depends on the tiny training (and its backend's random
        # initial weights); the exact values are checked against a hand computation below.
        assert denoised.std() > 0.1 * image.std(), name


def test_denoising_the_training_image_reproduces_the_output_of_the_training_run(
    denoise_run: Path, tmp_path: Path
) -> None:
    training_image = denoise_run.parents[1] / "data" / "noisy.tif"
    out = tmp_path / "out"

    assert main([str(denoise_run), str(training_image), "--out", str(out), *FLOAT32]) == 0

    denoised = tifffile.imread(out / "noisy_denoised.tif")
    np.testing.assert_allclose(denoised, tifffile.imread(denoise_run / "denoised" / "noisy.tif"), rtol=1e-5)

    # Both of those come from `training.restoration.restore_image`; the expectation below does not. By
    # hand: normalise with the run's normalization.json, mirror the model's border around the image (and
    # pad it to a multiple of the step), one call of the Keras model on the whole image, crop, scale back.
    stats = json.loads((denoise_run / "normalization.json").read_text())
    mean, scale = stats["mean"][0], stats["std"][0] + 1e-6  # bioimage.io's epsilon
    image = tifffile.imread(training_image).astype(np.float64)
    model = keras.models.load_model(denoise_run / "last.keras", compile=False)  # the N2V results' checkpoint
    geometry = zoo.model_geometry(model)
    border, step = geometry.border, geometry.step
    padded = np.pad((image - mean) / scale, border, mode="symmetric")
    padded = np.pad(padded, [(0, -n % step) for n in padded.shape], mode="symmetric")
    output = keras.ops.convert_to_numpy(model(padded[np.newaxis, :, :, np.newaxis].astype(np.float32)))
    expected = output[0, border : border + image.shape[0], border : border + image.shape[1], 0] * scale + mean
    assert np.abs(expected - image).max() > 1.0  # the control: the model does change the image
    # Tiled prediction is designed to equal whole-image prediction within 1e-4 of the output's range;
    # tiles of 32 pixels (raised to 8 aligned halos, fewer than the mirrored image) do split it.
    assert (
        main(
            [
                str(denoise_run),
                str(training_image),
                "--out",
                str(tmp_path / "tiled"),
                "--tile-size",
                "32",
                *FLOAT32,
            ]
        )
        == 0
    )
    tiled = tifffile.imread(tmp_path / "tiled" / "noisy_denoised.tif")
    for result in (denoised, tiled):
        assert result.shape == expected.shape
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-4 * float(np.ptp(expected)))


def test_stack_slices_are_denoised_like_single_images(denoise_run: Path, tmp_path: Path) -> None:
    stack = _noisy((5, 24, 30), seed=4)
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "stack.tif", stack)
    tifffile.imwrite(folder / "slice.tif", stack[3])
    out = tmp_path / "out"

    assert main([str(denoise_run), str(folder), "--out", str(out), *FLOAT32]) == 0

    denoised_stack = tifffile.imread(out / "stack_denoised.tif")
    np.testing.assert_allclose(denoised_stack[3], tifffile.imread(out / "slice_denoised.tif"), rtol=1e-6)


def test_existing_output_is_refused_without_overwrite_and_the_other_inputs_are_written(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "plain_denoised.tif"
    existing.write_bytes(b"an earlier result")

    code = main([str(denoise_run), str(noisy_folder), "--out", str(out)])

    assert code == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(existing) in errors[0] and "--overwrite" in errors[0], errors
    assert existing.read_bytes() == b"an earlier result"
    assert _files(out) == ["plain_denoised.tif", "stack_denoised.tif", "wide_denoised.tif"]


def test_existing_output_is_replaced_with_overwrite(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "plain_denoised.tif"
    existing.write_bytes(b"an earlier result")

    assert (
        main(
            [
                str(denoise_run),
                str(noisy_folder / "plain.tif"),
                "--out",
                str(out),
                "--overwrite",
                *FLOAT32,
            ]
        )
        == 0
    )

    assert _error_lines(capsys) == []
    assert tifffile.imread(existing).shape == (40, 52)
    assert [p.name for p in out.iterdir()] == ["plain_denoised.tif"]  # no temporary file left behind


def test_tta_averages_the_predictions_of_the_eight_orientations(denoise_run: Path, tmp_path: Path) -> None:
    # Black box: --tta on an image equals the mean of the plain predictions of its eight rotated and
    # flipped copies, each turned back, since the normalisation is per pixel and the same for all.
    image = _noisy((24, 36), seed=5)
    folder = tmp_path / "orientations"
    folder.mkdir()
    for flip in (0, 1):
        for turns in range(4):
            oriented = np.rot90(image[:, ::-1] if flip else image, turns)
            tifffile.imwrite(folder / f"o{flip}{turns}.tif", np.ascontiguousarray(oriented))
    tifffile.imwrite(tmp_path / "image.tif", image)

    assert main([str(denoise_run), str(folder), "--out", str(tmp_path / "plain"), *FLOAT32]) == 0
    assert (
        main(
            [
                str(denoise_run),
                str(tmp_path / "image.tif"),
                "--out",
                str(tmp_path / "tta"),
                "--tta",
                *FLOAT32,
            ]
        )
        == 0
    )

    turned_back = []
    for flip in (0, 1):
        for turns in range(4):
            output = np.rot90(tifffile.imread(tmp_path / "plain" / f"o{flip}{turns}_denoised.tif"), -turns)
            turned_back.append(output[:, ::-1] if flip else output)
    plain = turned_back[0]
    tta = tifffile.imread(tmp_path / "tta" / "image_denoised.tif")
    assert np.abs(tta - plain).max() > 1e-3  # the control: the network is not orientation-invariant
    np.testing.assert_allclose(tta, np.mean(turned_back, axis=0), rtol=1e-5, atol=1e-3)


def test_a_corrupt_input_is_reported_and_skipped(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = noisy_folder / "broken.tif"
    corrupt.write_bytes(b"not a TIFF at all" * 20)
    out = tmp_path / "out"

    code = main([str(denoise_run), str(noisy_folder), "--out", str(out)])

    assert code == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(corrupt) in errors[0], errors
    assert _files(out) == ["plain_denoised.tif", "stack_denoised.tif", "wide_denoised.tif"]


# === Segmentation ===


@pytest.fixture
def segment_inputs(tiny_segment_data: Path, tmp_path: Path) -> Path:
    """Two synthetic nuclei images and a non-square crop of one of them."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("synth_000.tif", "synth_001.tif"):
        shutil.copy(tiny_segment_data / "images" / name, folder / name)
    crop = tifffile.imread(tiny_segment_data / "images" / "synth_002.tif")[:40, :56]
    tifffile.imwrite(folder / "crop.tif", crop)
    return folder


def test_segmentation_writes_probabilities_and_labels_of_the_input_shapes(
    segment_run: Path, segment_inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    assert main([str(segment_run), str(segment_inputs), "--out", str(out), *FLOAT32]) == 0

    names = ["crop", "synth_000", "synth_001"]
    assert _files(out) == sorted(f"{n}_{kind}.tif" for n in names for kind in ("labels", "probabilities"))
    for name in names:
        height, width = tifffile.imread(segment_inputs / f"{name}.tif").shape[:2]
        probabilities = tifffile.imread(out / f"{name}_probabilities.tif")
        labels = tifffile.imread(out / f"{name}_labels.tif")
        assert probabilities.shape == (3, height, width) and probabilities.dtype == np.float32, name
        assert probabilities.min() >= 0 and probabilities.max() <= 1, name
        np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
        assert labels.shape == (height, width) and np.issubdtype(labels.dtype, np.unsignedinteger), name
        # Instance labels are numbered 1..N without gaps.
        np.testing.assert_array_equal(np.unique(labels[labels > 0]), np.arange(1, labels.max() + 1))


def test_labels_follow_the_thresholds_of_the_run_config(
    segment_run: Path, segment_inputs: Path, tmp_path: Path
) -> None:
    # Two epochs leave every probability near 1/3 and the default thresholds (0.5) find no object; the
    # thresholds of a copy of the run are set from the probabilities, so that objects do appear.
    image = segment_inputs / "synth_000.tif"
    assert main([str(segment_run), str(image), "--out", str(tmp_path / "first"), *FLOAT32]) == 0
    probabilities = tifffile.imread(tmp_path / "first" / "synth_000_probabilities.tif")
    interior_threshold = float(np.quantile(probabilities[1], 0.9))
    foreground_threshold = float(np.quantile(1.0 - probabilities[0], 0.5))
    run = Path(shutil.copytree(segment_run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    config |= {
        "interior_threshold": interior_threshold,
        "foreground_threshold": foreground_threshold,
        "min_object_size": 0,
    }
    (run / "config.json").write_text(json.dumps(config))
    # Without the thresholds the run chose on its validation images, the configured ones apply.
    (run / "postprocessing.json").unlink()

    assert main([str(run), str(image), "--out", str(tmp_path / "second"), *FLOAT32]) == 0

    labels = tifffile.imread(tmp_path / "second" / "synth_000_labels.tif")
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "second" / "synth_000_probabilities.tif"), probabilities
    )
    seeds = probabilities[1] > interior_threshold
    foreground = (1.0 - probabilities[0]) > foreground_threshold
    assert labels.max() >= 1
    np.testing.assert_array_equal(np.unique(labels[labels > 0]), np.arange(1, labels.max() + 1))
    assert (labels > 0)[seeds].all()  # every seed pixel belongs to an object (no size filter)
    assert not (labels > 0)[~(seeds | foreground)].any()  # and no object reaches into the background


def test_segmentation_in_small_tiles_equals_whole_image_segmentation(
    segment_run: Path, segment_inputs: Path, tmp_path: Path
) -> None:
    image = segment_inputs / "synth_000.tif"
    assert main([str(segment_run), str(image), "--out", str(tmp_path / "whole"), *FLOAT32]) == 0
    assert (
        main(
            [
                str(segment_run),
                str(image),
                "--out",
                str(tmp_path / "tiled"),
                "--tile-size",
                "32",
                *FLOAT32,
            ]
        )
        == 0
    )

    whole = tifffile.imread(tmp_path / "whole" / "synth_000_probabilities.tif")
    tiled = tifffile.imread(tmp_path / "tiled" / "synth_000_probabilities.tif")
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_existing_segmentation_outputs_are_refused_then_replaced_with_overwrite(
    segment_run: Path, segment_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = segment_inputs / "synth_001.tif"
    out = tmp_path / "out"
    out.mkdir()
    labels = out / "synth_001_labels.tif"
    labels.write_bytes(b"an earlier result")

    assert main([str(segment_run), str(image), "--out", str(out), *FLOAT32]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(labels) in errors[0], errors
    # Neither output of that image is written: the probabilities would not match the kept labels.
    assert _files(out) == ["synth_001_labels.tif"]
    assert labels.read_bytes() == b"an earlier result"

    assert main([str(segment_run), str(image), "--out", str(out), "--overwrite", *FLOAT32]) == 0
    assert tifffile.imread(labels).shape == (64, 64)
    assert _files(out) == ["synth_001_labels.tif", "synth_001_probabilities.tif"]


def test_tta_is_refused_for_a_segmentation_run(
    segment_run: Path, segment_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    assert main([str(segment_run), str(segment_inputs), "--out", str(out), "--tta", *FLOAT32]) == 2

    errors = _error_lines(capsys)
    assert len(errors) == 1 and "--tta" in errors[0], errors
    assert _files(out) == []


# === Refused inputs ===


def _missing_input(run: Path, tmp_path: Path) -> tuple[list[str], Path]:
    missing = tmp_path / "no-such-folder"
    return [str(run), str(missing)], missing


def _empty_input_folder(run: Path, tmp_path: Path) -> tuple[list[str], Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    return [str(run), str(empty)], empty


def _image_folder_as_model(run: Path, tmp_path: Path) -> tuple[list[str], Path]:
    images = tmp_path / "not-a-run"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", _noisy((32, 32), seed=6))
    return [str(images), str(images)], images


def _missing_model(run: Path, tmp_path: Path) -> tuple[list[str], Path]:
    missing = tmp_path / "no-such-run"
    return [str(missing), str(run.parents[1] / "data")], missing


def _run_without_checkpoint(run: Path, tmp_path: Path) -> tuple[list[str], Path]:
    copy = Path(shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns("*.keras")))
    return [str(copy), str(run.parents[1] / "data")], copy


BAD_INPUTS = {
    "missing input folder": _missing_input,
    "empty input folder": _empty_input_folder,
    "image folder as the model": _image_folder_as_model,
    "missing model folder": _missing_model,
    "run folder without checkpoint": _run_without_checkpoint,
}


@pytest.mark.parametrize("make", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_refused_with_one_line_naming_the_path(
    make, denoise_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments, offending = make(denoise_run, tmp_path)
    out = tmp_path / "out"

    code = main([*arguments, "--out", str(out)])

    assert code == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(offending) in errors[0], errors
    assert not out.exists()  # nothing made, not even the output folder


def test_unknown_checkpoint_name_is_an_argparse_error(denoise_run: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(denoise_run), str(tmp_path), "--out", str(tmp_path / "out"), "--checkpoint", "first"])
    assert exit_info.value.code == 2


def test_two_inputs_with_one_stem_are_refused_before_anything_is_written(
    denoise_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", _noisy((40, 52), seed=1))
    tifffile.imwrite(folder / "a.png", _noisy((30, 30), seed=2).astype(np.uint8))
    out = tmp_path / "out"

    assert main([str(denoise_run), str(folder), "--out", str(out), "--overwrite", *FLOAT32]) == 2
    (error,) = _error_lines(capsys)
    assert "a_denoised.tif" in error and "a.png" in error and "a.tif" in error
    assert not out.exists()


@pytest.mark.parametrize("tile_size", ["-5", "16"])
def test_out_of_range_tile_size_is_refused_naming_the_option(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tile_size: str
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                str(denoise_run),
                str(noisy_folder),
                "--out",
                str(out),
                "--tile-size",
                tile_size,
                *FLOAT32,
            ]
        )
        == 2
    )
    (error,) = _error_lines(capsys)
    assert "tile_size" in error
    assert not out.exists()


# === The onnxruntime engine ===


def test_onnx_engine_gives_the_keras_segmentation(
    segment_run: Path, segment_inputs: Path, tmp_path: Path
) -> None:
    outputs = {}
    for engine in ("keras", "onnx"):
        out = tmp_path / engine
        assert (
            main(
                [
                    str(segment_run),
                    str(segment_inputs),
                    "--out",
                    str(out),
                    "--engine",
                    engine,
                    *FLOAT32,
                ]
            )
            == 0
        )
        outputs[engine] = out
    for name in ("crop", "synth_000", "synth_001"):
        keras_p = tifffile.imread(outputs["keras"] / f"{name}_probabilities.tif")
        onnx_p = tifffile.imread(outputs["onnx"] / f"{name}_probabilities.tif")
        np.testing.assert_allclose(onnx_p, keras_p, atol=1e-4)


def test_onnx_engine_gives_the_keras_denoising_with_tta(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path
) -> None:
    for engine in ("keras", "onnx"):
        argv = [
            str(denoise_run),
            str(noisy_folder),
            "--out",
            str(tmp_path / engine),
            "--engine",
            engine,
            "--tta",
            *FLOAT32,
        ]
        assert main(argv) == 0
    for name in ("plain", "stack", "wide"):
        expected = tifffile.imread(tmp_path / "keras" / f"{name}_denoised.tif")
        got = tifffile.imread(tmp_path / "onnx" / f"{name}_denoised.tif")
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, atol=1e-4 * scale)


# === bfloat16 prediction ===


def test_bfloat16_denoising_stays_close_to_float32(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path
) -> None:
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        assert main([str(denoise_run), str(noisy_folder), "--out", str(out), "--precision", precision]) == 0
    for name in ("plain", "stack", "wide"):
        full = tifffile.imread(tmp_path / "float32" / f"{name}_denoised.tif")
        reduced = tifffile.imread(tmp_path / "bfloat16" / f"{name}_denoised.tif")
        assert reduced.shape == full.shape and reduced.dtype == full.dtype
        difference = float(np.sqrt(np.mean((reduced - full) ** 2)))
        # Computed differently (not a copy of the float32 output), yet far below the image's own spread.
        assert 0 < difference < 0.02 * float(np.std(full))


def test_bfloat16_with_the_onnx_engine_is_refused(
    denoise_run: Path, noisy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        str(denoise_run),
        str(noisy_folder),
        "--out",
        str(out),
        "--engine",
        "onnx",
        "--precision",
        "bfloat16",
    ]

    assert main(argv) == 2

    (error,) = _error_lines(capsys)
    assert "--precision bfloat16" in error and "--engine keras" in error
    assert not out.exists()
