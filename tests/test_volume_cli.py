"""Volumes from the command line: 3D segmentation and 3D Noise2Void trained, recorded, predicted and
exported, and the bad volumes each refused in one line that names the file, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

import training.denoise
import training.predict
import training.segment
from training.synthetic_files import write_synthetic_volumes

TINY_3D_FLAGS = tuple(
    "--epochs 1 --steps-per-epoch 2 --patch-size 32 --patch-depth 8 --batch-size 2 --depth 2 "
    "--base-filters 4 --val-patches 2 --tile-size 64 --no-export".split()
)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic nuclei volumes of 16 x 48 x 48 (z spacing 2 in their metadata), with masks."""
    return write_synthetic_volumes(
        tmp_path_factory.mktemp("volumes") / "data", n_volumes=4, seed=3, shape=(16, 48, 48)
    )


@pytest.fixture(scope="module")
def volume_run(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    argv = [*TINY_3D_FLAGS, "--data", str(volumes), "--out-dir", str(out), "--run-name", "vol"]
    assert training.segment.main(argv) == 0
    return out / "vol"


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_volume_masks_make_a_3d_run_with_the_files_anisotropy(volume_run: Path) -> None:
    config = json.loads((volume_run / "config.json").read_text())
    assert (config["ndim"], config["anisotropy"]) == (3, 2.0)
    metrics = json.loads((volume_run / "metrics.json").read_text())
    # z is pooled once (its spacing is 2 xy pixels), y and x twice.
    assert metrics["geometry"]["step"] == [2, 4, 4]
    assert metrics["voxel_size_um"] == {"z": 2.0, "y": 1.0, "x": 1.0}  # as the files record it
    assert np.load(volume_run / "sample.npy").shape == (16, 48, 48, 1)
    declaration = json.loads((volume_run / "declaration.json").read_text())
    assert "3d" in declaration["tags"]


def test_a_3d_run_fine_tunes_from_a_3d_run_in_bfloat16(
    volume_run: Path, volumes: Path, tmp_path: Path
) -> None:
    argv = [*TINY_3D_FLAGS, "--data", str(volumes), "--out-dir", str(tmp_path), "--run-name", "tuned",
            "--init-from", str(volume_run), "--precision", "mixed_bfloat16"]  # fmt: skip
    assert training.segment.main(argv) == 0
    tuned = tmp_path / "tuned"
    assert json.loads((tuned / "init.json").read_text())["init_from"] == str(volume_run)
    config = json.loads((tuned / "config.json").read_text())
    assert (config["ndim"], config["precision"]) == (3, "mixed_bfloat16")
    history = (tuned / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1]


def test_predicting_a_volume_writes_zcyx_probabilities_and_zyx_labels(
    volume_run: Path, volumes: Path, tmp_path: Path
) -> None:
    image = sorted((volumes / "images").iterdir())[0]
    assert (
        training.predict.main([str(volume_run), str(image), "--out", str(tmp_path), "--precision", "float32"])
        == 0
    )
    probabilities = tifffile.TiffFile(tmp_path / f"{image.stem}_probabilities.tif")
    assert probabilities.series[0].axes == "ZCYX" and probabilities.series[0].shape == (16, 3, 48, 48)
    sums = probabilities.asarray().sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, atol=1e-4)
    labels = tifffile.imread(tmp_path / f"{image.stem}_labels.tif")
    assert labels.shape == (16, 48, 48) and np.issubdtype(labels.dtype, np.unsignedinteger)


def _four_d_image(data: Path) -> Path:
    path = sorted((data / "images").iterdir())[0]
    volume = tifffile.imread(path)
    tifffile.imwrite(path, np.stack([volume, volume], axis=1))  # plain ZCYX, no axes in the file
    return path


def _mask_of_another_shape(data: Path) -> Path:
    path = sorted((data / "masks").iterdir())[1]
    tifffile.imwrite(path, tifffile.imread(path)[:, :40], imagej=True, metadata={"axes": "ZYX"})
    return path


def _thin_volume(data: Path) -> Path:
    image, mask = sorted((data / "images").iterdir())[2], sorted((data / "masks").iterdir())[2]
    for path in (image, mask):
        options = {"resolution": (1.0, 1.0), "metadata": {"axes": "ZYX", "spacing": 2.0, "unit": "um"}}
        tifffile.imwrite(path, tifffile.imread(path)[:6], imagej=True, **options)
    return image


def _coarse_z(data: Path) -> Path:
    path = sorted((data / "images").iterdir())[0]
    tifffile.imwrite(
        path,
        tifffile.imread(path),
        imagej=True,
        resolution=(1.0, 1.0),
        metadata={"axes": "ZYX", "spacing": 10.0, "unit": "um"},
    )
    return path


BREAKERS = {
    "4D file without axes": _four_d_image,
    "mask shape differs": _mask_of_another_shape,
    "thinner than a patch": _thin_volume,
    "z too coarse for the depth": _coarse_z,
}


@pytest.mark.parametrize("breaker", BREAKERS.values(), ids=BREAKERS.keys())
def test_a_bad_volume_is_refused_in_one_line_naming_it_and_nothing_is_written(
    breaker, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = Path(shutil.copytree(volumes, tmp_path / "data"))
    offending = breaker(data)
    out_dir = tmp_path / "runs"

    code = training.segment.main([*TINY_3D_FLAGS, "--data", str(data), "--out-dir", str(out_dir)])

    assert code == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and str(offending) in errors[0], errors
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_a_4d_file_is_read_with_the_axes_given(volumes: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(volumes, tmp_path / "data"))
    for path in (data / "images").iterdir():
        volume = tifffile.imread(path)
        tifffile.imwrite(path, np.stack([volume, volume // 2]))  # plain CZYX: two channels
    out = tmp_path / "runs"
    argv = [*TINY_3D_FLAGS, "--data", str(data), "--axes", "czyx", "--out-dir", str(out), "--run-name", "c"]
    assert training.segment.main(argv) == 0
    config = json.loads((out / "c" / "config.json").read_text())
    assert (config["axes"], config["ndim"]) == ("CZYX", 3)
    assert np.load(out / "c" / "sample.npy").shape == (16, 48, 48, 2)


def test_a_patch_depth_off_the_z_step_is_refused(volumes: Path, tmp_path: Path, capsys) -> None:
    flags = [*TINY_3D_FLAGS, "--patch-depth", "7", "--data", str(volumes), "--out-dir", str(tmp_path)]
    assert training.segment.main(flags) == 2
    assert any("--patch-depth 7" in line and "z step 2" in line for line in _errors(capsys))


def test_3d_noise2void_with_structn2v_along_z_denoises_a_volume(tmp_path: Path) -> None:
    argv = [
        "--ndim", "3", "--model", "n2v2", "--struct-axis", "0", "--struct-span", "1",
        "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "32",
        "--patch-depth", "8", "--base-filters", "4", "--val-patches", "2", "--checkpoint-every", "0",
        "--no-export", "--out-dir", str(tmp_path), "--run-name", "n",
    ]  # fmt: skip
    assert training.denoise.main(argv) == 0
    run = tmp_path / "n"
    config = json.loads((run / "config.json").read_text())
    assert (config["ndim"], config["anisotropy"], config["struct_axis"]) == (3, 2.0, 0)
    denoised = tifffile.TiffFile(run / "denoised" / "noisy.tif")
    # One channel: ImageJ's TIFF leaves out the channel axis.
    assert denoised.series[0].axes == "ZYX" and denoised.series[0].shape == (32, 96, 96)
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["images"][0]["denoised"]["psnr"])


def test_struct_axis_2_needs_a_volume(tmp_path: Path, capsys) -> None:
    argv = ["--struct-axis", "2", "--struct-span", "1", "--out-dir", str(tmp_path)]
    assert training.denoise.main(argv) == 2
    assert any("struct_axis 2" in line for line in _errors(capsys))


def test_a_volume_predicted_block_by_block_equals_the_volume_predicted_whole(
    volume_run: Path, volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zarr

    import training.blockwise

    choose = training.blockwise.choose_sizes

    def small(*args, **kwargs):  # blocks of 16 x 16 x 16: 27 of them
        sizes = choose(*args, **kwargs)
        return training.blockwise.Sizes((16, 16, 16), (16, 16, 16), sizes.tile, sizes.call_voxels)

    monkeypatch.setattr(training.blockwise, "choose_sizes", small)
    image = sorted((volumes / "images").iterdir())[0]
    flags = ["--precision", "float32", "--tile-size", "48"]
    assert training.predict.main([str(volume_run), str(image), "--out", str(tmp_path / "whole"), *flags]) == 0
    command = [str(volume_run), str(image), "--out", str(tmp_path / "blocks"), "--blockwise", *flags]
    assert training.predict.main(command) == 0
    whole = tifffile.imread(tmp_path / "whole" / f"{image.stem}_probabilities.tif")  # ZCYX
    group = zarr.open_group(str(tmp_path / "blocks" / f"{image.stem}_probabilities.ome.zarr"), mode="r")
    blocks = np.moveaxis(np.asarray(group["0"]), 0, 1)  # CZYX -> ZCYX
    assert [a["name"] for a in group.attrs["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=2e-5)
    labels = np.asarray(
        zarr.open_group(str(tmp_path / "blocks" / f"{image.stem}_labels.ome.zarr"), mode="r")["0"]
    )
    reference = tifffile.imread(tmp_path / "whole" / f"{image.stem}_labels.tif")
    pairs = np.unique(np.stack([reference.ravel().astype(np.int64), labels.ravel().astype(np.int64)]), axis=1)
    assert len(pairs[0]) == len(np.unique(pairs[0])) == len(np.unique(pairs[1]))  # the same objects
