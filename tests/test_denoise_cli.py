"""`python -m training.denoise` on tiny data: a complete run, the PSNR report, and refused inputs."""

import json

import numpy as np
import tifffile

from training.denoise import main

TINY = [
    "--no-export",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "2",
    "--batch-size",
    "4",
    "--patch-size",
    "32",
    "--base-filters",
    "4",
    "--depth",
    "1",
    "--val-patches",
    "4",
    "--mask-fraction",
    "0.01",
    "--warmup-epochs",
    "0",
]


def test_embedded_demo_run_leaves_denoised_image_and_psnr(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path), "--run-name", "run", *TINY]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    (entry,) = metrics["images"]
    assert np.isfinite(entry["psnr_gain_db"])
    denoised = tifffile.imread(run / "denoised" / "noisy.tif")
    assert denoised.shape == (660, 550) and denoised.dtype == np.float32
    for name in ("config.json", "normalization.json", "last.keras", "history.csv", "curves.png"):
        assert (run / name).is_file(), name
    assert "PSNR" in capsys.readouterr().out


def test_constant_image_is_refused_without_a_run_folder(tmp_path, capsys):
    image = tmp_path / "flat.tif"
    tifffile.imwrite(image, np.full((64, 64), 7, np.uint16))
    out = tmp_path / "runs"
    assert main(["--data", str(image), "--out-dir", str(out), *TINY]) == 2
    assert f"{image}: image is constant" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_nan_image_and_bad_fraction_are_refused(tmp_path, capsys):
    image = tmp_path / "nan.tif"
    data = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    data[3, 3] = np.nan
    tifffile.imwrite(image, data)
    assert main(["--data", str(image), "--out-dir", str(tmp_path / "runs"), *TINY]) == 2
    assert f"{image}: image contains NaN" in capsys.readouterr().err
    assert (
        main(["--data", str(image), "--out-dir", str(tmp_path / "runs"), *TINY, "--mask-fraction", "0.5"])
        == 2
    )
    assert "mask_fraction" in capsys.readouterr().err


def test_two_channel_image_with_independent_channels_trains_one_network_per_channel(tmp_path):
    import keras

    import zoo  # noqa: F401  (registers the custom layers for loading)

    rng = np.random.default_rng(0)
    image = tmp_path / "two.tif"
    tifffile.imwrite(
        image, rng.normal(100, 10, (2, 64, 64)).astype(np.float32), imagej=True, metadata={"axes": "CYX"}
    )
    out = tmp_path / "runs"
    flags = [*TINY, "--independent-channels", "--channel-axis", "0"]
    assert main(["--data", str(image), "--out-dir", str(out), "--run-name", "run", *flags]) == 0
    model = keras.models.load_model(out / "run" / "last.keras", compile=False)
    assert {"ch0_head_conv", "ch1_head_conv"} <= {layer.name for layer in model.layers}
    assert tifffile.imread(out / "run" / "denoised" / "two.tif").shape == (2, 64, 64)
