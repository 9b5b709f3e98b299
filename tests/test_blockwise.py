"""Images larger than memory: lazy reading (`training.lazy`) and blockwise prediction (`training.blockwise`)
into OME-Zarr, equal to the in-memory path, with labels stitched across blocks and a resumable run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import training.blockwise as blockwise
import training.lazy
from base.errors import UserInputError
from training.images import channel_percentiles
from training.lazy import MAX_LAZY_VOXELS, ngff_attributes, open_lazy
from training.metrics import evaluate_instances
from training.predict import auto_precision, main
from training.synthetic import synthetic_nuclei_image
from training.tiling import mirror_border, pad_to_step


def _nuclei(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Synthetic nuclei tiles of 256 x 256 side by side: objects everywhere, across block borders."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.uint8)
    for y in range(0, shape[0], 256):
        for x in range(0, shape[1], 256):
            tile, _ = synthetic_nuclei_image(rng, shape=(256, 256))
            image[y : y + 256, x : x + 256] = tile[: shape[0] - y, : shape[1] - x]
    return image


def _ome_zarr(path: Path, array: np.ndarray, axes: str, sizes: dict[str, float]) -> Path:
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(ngff_attributes(axes, sizes, name="test"))
    group.create_array("0", data=array, chunks=(64,) * array.ndim)
    return path


def _zarr(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(path), mode="r")["0"])


# === Lazy reading ===


def test_ome_zarr_is_read_window_by_window_with_its_axes_and_pixel_sizes(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (2, 90, 70)).astype(np.uint16)
    image = open_lazy(_ome_zarr(tmp_path / "a.ome.zarr", array, "CYX", {"y": 0.25, "x": 0.5}))
    assert (image.axes, image.shape, image.channels) == ("CYX", (90, 70), 2)
    assert image.pixel_sizes == {"y": 0.25, "x": 0.5}
    np.testing.assert_array_equal(
        image.read((slice(10, 30), slice(5, 69))), np.moveaxis(array, 0, -1)[10:30, 5:69]
    )


def test_tiled_bigtiff_is_read_window_by_window(tmp_path):
    array = np.random.default_rng(1).integers(0, 2**16, (300, 500), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", array, tile=(128, 128), bigtiff=True)
    image = open_lazy(tmp_path / "a.tif")
    assert (image.axes, image.shape) == ("YX", (300, 500))
    np.testing.assert_array_equal(image.read((slice(100, 260), slice(0, 333)))[..., 0], array[100:260, :333])


def test_tiff_pointing_past_its_end_is_refused_before_reading(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((256, 256), np.uint16), tile=(128, 128))
    path.write_bytes(path.read_bytes()[:40_000])
    with pytest.raises(UserInputError, match=r"cut.tif: .*(past|up to byte|unreadable)"):
        open_lazy(path)


def test_absurd_declared_sizes_are_refused_before_reading(tmp_path):
    side = int(MAX_LAZY_VOXELS**0.5) * 2
    group = zarr.open_group(str(tmp_path / "huge.ome.zarr"), mode="w", zarr_format=2)
    group.attrs.update(ngff_attributes("YX", {}, name="huge"))
    group.create_array("0", shape=(side, side), chunks=(1024, 1024), dtype=np.uint8)
    with pytest.raises(UserInputError, match=r"huge\.ome\.zarr: declares a"):
        open_lazy(tmp_path / "huge.ome.zarr")


# === Exact percentiles and the virtual image ===


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_percentiles_of_a_file_read_in_pieces_equal_those_of_the_image_in_memory(
    tmp_path, monkeypatch, dtype
):
    monkeypatch.setattr(training.lazy, "PIECE_VOXELS", 50)  # many pieces
    rng = np.random.default_rng(2)
    array = (rng.gamma(2.0, 30.0, (2, 123, 97)) * (1 if dtype == np.float32 else 10)).astype(dtype)
    image = open_lazy(_ome_zarr(tmp_path / "p.ome.zarr", array, "CYX", {}))
    held = np.moveaxis(array, 0, -1).astype(np.float32)
    for got, q in zip(blockwise.exact_percentiles(image, [1.0, 99.8, 50.0]), [1.0, 99.8, 50.0], strict=True):
        np.testing.assert_array_equal(got, channel_percentiles(held, q))


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 40), border=st.integers(0, 50), step=st.sampled_from([1, 2, 4, 8, 16]))
def test_virtual_indices_are_the_pixels_whole_image_prediction_feeds_the_model(length, border, step):
    image = np.arange(length, dtype=np.float32)[:, np.newaxis, np.newaxis]  # (Y, X=1, C=1)
    expected = pad_to_step(mirror_border(image, (border, 0)), (step, 1))[:, 0, 0]
    np.testing.assert_array_equal(blockwise.virtual_indices(length, border, step), expected)


# === Blockwise prediction against the in-memory path ===


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks and chunks of 128: a small image becomes many blocks."""
    monkeypatch.setattr(blockwise, "CHUNK", 128)
    monkeypatch.setattr(blockwise, "choose_sizes", _small(blockwise.choose_sizes))


def _small(choose):
    def sizes(*args, **kwargs):
        found = choose(*args, **kwargs)
        return blockwise.Sizes(
            block=(128, 128), chunk=(128, 128), tile=found.tile, call_voxels=found.call_voxels
        )

    return sizes


def test_blockwise_segmentation_equals_the_in_memory_one_and_stitches_objects(tmp_path, small_blocks):
    tifffile.imwrite(tmp_path / "cells.tif", _nuclei((300, 420)))
    flags = ["--precision", "float32", "--tile-size", "256"]
    assert main(["nuclei", str(tmp_path / "cells.tif"), "--out", str(tmp_path / "memory"), *flags]) == 0
    assert (
        main(
            ["nuclei", str(tmp_path / "cells.tif"), "--out", str(tmp_path / "blocks"), "--blockwise", *flags]
        )
        == 0
    )
    # Equal up to float32 rounding: the model sees the same pixels, in tiles of other shapes, for which
    # oneDNN may sum in another order (as the in-memory path does with another tile size).
    probabilities = tifffile.imread(tmp_path / "memory" / "cells_probabilities.tif")
    blocks = _zarr(tmp_path / "blocks" / "cells_probabilities.ome.zarr")
    np.testing.assert_allclose(blocks, probabilities, rtol=0, atol=2e-5)
    whole = tifffile.imread(tmp_path / "memory" / "cells_labels.tif")
    blocks = _zarr(tmp_path / "blocks" / "cells_labels.ome.zarr")
    # The same objects: a one-to-one map between the two label sets, pixel for pixel.
    pairs = np.unique(np.stack([whole.ravel(), blocks.ravel().astype(np.int64)]), axis=1)
    assert len(pairs[0]) == len(np.unique(pairs[0])) == len(np.unique(pairs[1]))
    assert whole.max() > 40
    crossing = [label for label in np.unique(blocks[120:136]) if label]  # objects over a block border
    assert crossing
    assert evaluate_instances([(whole, blocks)])["f1_at_0.5"] == 1.0
    # Written as OME-Zarr with its metadata, and nothing left of the work folder.
    attributes = zarr.open_group(str(tmp_path / "blocks" / "cells_labels.ome.zarr"), mode="r").attrs
    assert attributes["multiscales"][0]["axes"] == [
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    assert not list((tmp_path / "blocks").glob(".*"))


def test_blockwise_denoising_of_an_ome_zarr_equals_the_in_memory_one(tmp_path, small_blocks, denoise_run):
    noisy = np.random.default_rng(3).normal(100, 20, (260, 300)).astype(np.float32)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    _ome_zarr(tmp_path / "noisy.ome.zarr", noisy, "YX", {"y": 0.5, "x": 0.5})
    flags = ["--precision", "float32", "--tile-size", "128"]
    assert (
        main([str(denoise_run), str(tmp_path / "noisy.tif"), "--out", str(tmp_path / "memory"), *flags]) == 0
    )
    assert (
        main([str(denoise_run), str(tmp_path / "noisy.ome.zarr"), "--out", str(tmp_path / "blocks"), *flags])
        == 0
    )
    output = tmp_path / "blocks" / "noisy_denoised.ome.zarr"
    memory = tifffile.imread(tmp_path / "memory" / "noisy_denoised.tif")
    np.testing.assert_allclose(_zarr(output), memory, rtol=0, atol=2e-5 * float(np.ptp(memory)))
    scale = zarr.open_group(str(output), mode="r").attrs["multiscales"][0]["datasets"][0]
    assert scale["coordinateTransformations"][0]["scale"] == [0.5, 0.5]


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory) -> Path:
    from training import denoise

    root = tmp_path_factory.mktemp("denoise")
    noisy = np.random.default_rng(0).normal(100, 20, (64, 64)).astype(np.float32)
    tifffile.imwrite(root / "noisy.tif", noisy)
    flags = (
        "--epochs 1 --steps-per-epoch 2 --batch-size 4 --patch-size 32 --base-filters 4 --depth 2 "
        "--val-patches 4 --mask-fraction 0.01 --warmup-epochs 0 --no-export"
    ).split()
    code = denoise.main(
        ["--data", str(root / "noisy.tif"), "--out-dir", str(root), "--run-name", "r", *flags]
    )
    assert code == 0
    return root / "r"


# === Resume ===


class Killed(Exception):
    pass


def test_a_killed_prediction_resumes_to_the_uninterrupted_output(tmp_path, small_blocks, monkeypatch, capsys):
    tifffile.imwrite(tmp_path / "cells.tif", _nuclei((260, 300), seed=4))
    command = [
        "nuclei",
        str(tmp_path / "cells.tif"),
        "--blockwise",
        "--precision",
        "float32",
        "--tile-size",
        "256",
    ]
    assert main([*command, "--out", str(tmp_path / "whole")]) == 0
    mark = blockwise.Progress.mark
    calls = []

    def dies(self, stage, block):
        if len(calls) == 4:
            raise Killed
        calls.append(block)
        mark(self, stage, block)

    monkeypatch.setattr(blockwise.Progress, "mark", dies)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        main([*command, "--out", str(out)])
    monkeypatch.setattr(blockwise.Progress, "mark", mark)
    # No output under its final name; a plain rerun is refused, naming what to do.
    assert not list(out.glob("*.ome.zarr"))
    capsys.readouterr()
    assert main([*command, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # Other settings do not resume this prediction.
    assert (
        main([*command[:-4], "--precision", "bfloat16", "--tile-size", "256", "--out", str(out), "--resume"])
        == 2
    )
    assert main([*command, "--out", str(out), "--resume"]) == 0
    for name in ("cells_probabilities.ome.zarr", "cells_labels.ome.zarr"):
        np.testing.assert_array_equal(_zarr(out / name), _zarr(tmp_path / "whole" / name))


# === Defaults ===


def test_the_default_precision_is_the_native_one(tmp_path):
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, _nuclei((128, 128), seed=5))
    assert main(["nuclei", str(image), "--out", str(tmp_path / "default")]) == 0
    precision = auto_precision("keras")
    assert main(["nuclei", str(image), "--out", str(tmp_path / "named"), "--precision", precision]) == 0
    for name in ("cells_probabilities.tif", "cells_labels.tif"):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "default" / name), tifffile.imread(tmp_path / "named" / name)
        )


def test_bfloat16_segmentation_stays_close_to_float32(tmp_path):
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, _nuclei((512, 512), seed=6))
    for precision in ("float32", "bfloat16"):
        assert main(["nuclei", str(image), "--out", str(tmp_path / precision), "--precision", precision]) == 0
    full = tifffile.imread(tmp_path / "float32" / "cells_probabilities.tif")
    reduced = tifffile.imread(tmp_path / "bfloat16" / "cells_probabilities.tif")
    assert 0 < np.abs(full - reduced).max() < 0.1
    labels = [tifffile.imread(tmp_path / p / "cells_labels.tif") for p in ("float32", "bfloat16")]
    assert evaluate_instances([tuple(labels)])["f1_at_0.5"] >= 0.98


@pytest.mark.slow
def test_sigkill_during_a_blockwise_prediction_then_resume_gives_the_uninterrupted_output(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    tifffile.imwrite(tmp_path / "cells.tif", _nuclei((1100, 1100), seed=7))
    command = [sys.executable, "-m", "training.predict", "nuclei", str(tmp_path / "cells.tif"), "--blockwise"]
    command += ["--memory-limit", "1", "--tile-size", "512"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    assert subprocess.run([*command, "--out", str(tmp_path / "whole")], env=env, check=False).returncode == 0
    out = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(out)], env=env)
    record = out / ".cells.blockwise" / "progress.json"
    while process.poll() is None:
        try:
            if len(json.loads(record.read_text())["done"].get("output", [])) >= 2:
                process.send_signal(signal.SIGKILL)
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert process.wait() == -signal.SIGKILL, "the prediction ended before it could be killed"
    assert not list(out.glob("*.ome.zarr"))
    assert subprocess.run([*command, "--out", str(out), "--resume"], env=env, check=False).returncode == 0
    for name in ("cells_probabilities.ome.zarr", "cells_labels.ome.zarr"):
        np.testing.assert_array_equal(_zarr(out / name), _zarr(tmp_path / "whole" / name))


# === Training from images read lazily ===


def test_n2v_trains_on_an_ome_zarr_read_patch_by_patch_as_on_the_image_in_memory(
    tmp_path, monkeypatch, small_blocks
):
    import csv

    import training.images
    from training import denoise

    noisy = np.random.default_rng(8).normal(100, 20, (200, 240)).astype(np.float32)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    _ome_zarr(tmp_path / "noisy.ome.zarr", noisy, "YX", {})
    reads = []
    monkeypatch.setattr(training.lazy.LazyImage, "read", _counting(training.lazy.LazyImage.read, reads))
    monkeypatch.setattr(training.lazy, "PIECE_VOXELS", 2000)  # statistics in pieces
    monkeypatch.setattr(training.lazy, "MAX_VIEW_READ", 2000)  # the held-out rows stay a view
    flags = (
        "--epochs 2 --steps-per-epoch 3 --batch-size 4 --patch-size 32 --base-filters 4 --depth 2 "
        "--val-patches 4 --warmup-epochs 0 --no-export"
    ).split()
    for name in ("noisy.tif", "noisy.ome.zarr"):
        argv = [
            "--data",
            str(tmp_path / name),
            "--out-dir",
            str(tmp_path / "runs"),
            "--run-name",
            name,
            *flags,
        ]
        assert denoise.main(argv) == 0
    # Patches, pieces and blocks; the whole image once, as the package's sample (a crop of at most 512).
    assert reads.count(32 * 32) >= 2 * 3 * 4 and reads.count(noisy.size) == 1
    histories = [
        list(csv.DictReader((tmp_path / "runs" / name / "history.csv").open()))
        for name in ("noisy.tif", "noisy.ome.zarr")
    ]
    for memory, lazy in zip(*histories, strict=True):
        for key in ("loss", "val_loss"):
            assert float(lazy[key]) == pytest.approx(float(memory[key]), rel=1e-5)
    assert (tmp_path / "runs" / "noisy.ome.zarr" / "denoised" / "noisy.ome.zarr").is_dir()
    # A TIFF too big to hold goes the same way.
    monkeypatch.setattr(training.images, "MAX_IMAGE_BYTES", 1000)
    assert training.lazy.read_lazily(tmp_path / "noisy.tif")


def _counting(read, sizes: list[int]):
    def counted(self, window):
        block = read(self, window)
        sizes.append(block.size)
        return block

    return counted


def test_blockwise_outputs_as_bigtiff_under_the_in_memory_names(tmp_path, small_blocks):
    from training.images import pixel_sizes

    _ome_zarr(tmp_path / "cells.ome.zarr", _nuclei((200, 260), seed=9), "YX", {"y": 0.3, "x": 0.3})
    flags = ["--precision", "float32", "--tile-size", "256"]
    assert main(["nuclei", str(tmp_path / "cells.ome.zarr"), "--out", str(tmp_path / "zarr"), *flags]) == 0
    command = ["nuclei", str(tmp_path / "cells.ome.zarr"), "--out", str(tmp_path / "tiff"), *flags]
    assert main([*command, "--output-format", "tiff"]) == 0
    for name, axes in (("cells_probabilities", "CYX"), ("cells_labels", "YX")):
        path = tmp_path / "tiff" / f"{name}.tif"
        with tifffile.TiffFile(path) as tif:
            assert (tif.is_bigtiff, tif.is_ome, tif.series[0].axes) == (True, True, axes)
        np.testing.assert_array_equal(tifffile.imread(path), _zarr(tmp_path / "zarr" / f"{name}.ome.zarr"))
        assert pixel_sizes(path) == pytest.approx({"y": 0.3, "x": 0.3})
    assert sorted(p.name for p in (tmp_path / "tiff").iterdir()) == [
        "cells_labels.tif",
        "cells_probabilities.tif",
    ]


def test_which_tiffs_go_blockwise_by_themselves(tmp_path):
    from types import SimpleNamespace

    from training.predict import _too_big_to_hold

    tifffile.imwrite(tmp_path / "plane.tif", np.zeros((300, 400), np.uint8))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((20, 300, 400), np.uint8))
    flat, volume = SimpleNamespace(ndim=None), SimpleNamespace(ndim=3)
    budget = 6 * 4 * 300 * 400  # its float32 copies need more than 60 % of this
    assert _too_big_to_hold(tmp_path / "plane.tif", budget, flat)
    assert not _too_big_to_hold(tmp_path / "plane.tif", 10 * budget, flat)
    # A stack for a 2D network is predicted slice by slice, in memory; for a 3D network it is one volume.
    assert not _too_big_to_hold(tmp_path / "stack.tif", budget, flat)
    assert _too_big_to_hold(tmp_path / "stack.tif", 10 * budget, volume)


def test_segmentation_trains_on_ome_zarr_pairs_read_patch_by_patch_as_in_memory(tmp_path, tiny_segment_data):
    import csv
    import shutil

    from tests.conftest import TINY_SEGMENT_FLAGS
    from training import segment

    data = tmp_path / "data"
    shutil.copytree(tiny_segment_data, data)
    for stem in ("synth_002", "synth_003"):  # the training pairs (index.csv), as OME-Zarr
        for folder in ("images", "masks"):
            tiff = next((data / folder).glob(f"{stem}.*"))
            _ome_zarr(data / folder / f"{stem}.ome.zarr", tifffile.imread(tiff), "YX", {})
            tiff.unlink()
    for name, source in (("memory", tiny_segment_data), ("lazy", data)):
        argv = [
            "--data",
            str(source),
            *TINY_SEGMENT_FLAGS,
            "--out-dir",
            str(tmp_path / "runs"),
            "--run-name",
            name,
        ]
        assert segment.main(argv) == 0
    histories = [
        list(csv.DictReader((tmp_path / "runs" / n / "history.csv").open())) for n in ("memory", "lazy")
    ]
    for memory, lazy in zip(*histories, strict=True):
        for key in ("loss", "val_loss"):
            assert float(lazy[key]) == pytest.approx(float(memory[key]), rel=1e-5)


def test_an_image_too_big_to_hold_may_only_train(tmp_path, tiny_segment_data, capsys):
    import shutil

    from tests.conftest import TINY_SEGMENT_FLAGS
    from training import segment

    data = tmp_path / "data"
    shutil.copytree(tiny_segment_data, data)
    for folder in ("images", "masks"):  # synth_001 is the validation pair
        tiff = next((data / folder).glob("synth_001.*"))
        _ome_zarr(data / folder / "synth_001.ome.zarr", tifffile.imread(tiff), "YX", {})
        tiff.unlink()
    argv = ["--data", str(data), *TINY_SEGMENT_FLAGS, "--out-dir", str(tmp_path / "runs")]
    assert segment.main(argv) == 2
    error = capsys.readouterr().err
    assert "synth_001.ome.zarr: too big to hold, so it can only train" in error
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_pyramid_level_of_an_ome_tiff_is_read_and_predicted(tmp_path):
    full = _nuclei((512, 512), seed=10)
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", bigtiff=True) as tif:
        options = {
            "tile": (128, 128),
            "metadata": {"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25},
        }
        tif.write(full, subifds=1, **options)
        tif.write(full[::2, ::2], subfiletype=1, tile=(128, 128))
    image = open_lazy(tmp_path / "pyramid.ome.tif", level=1)
    assert (image.shape, image.pixel_sizes) == ((256, 256), {"y": 0.5, "x": 0.5})
    np.testing.assert_array_equal(image.read((slice(0, 256), slice(0, 256)))[..., 0], full[::2, ::2])
    out = tmp_path / "out"
    assert main(["nuclei", str(tmp_path / "pyramid.ome.tif"), "--out", str(out), "--level", "1"]) == 0
    assert _zarr(out / "pyramid.ome_labels.ome.zarr").shape == (256, 256)
