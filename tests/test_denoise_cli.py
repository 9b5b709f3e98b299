"""`python -m training.denoise` on tiny data: a complete run, the PSNR report, and refused inputs; the
options `--clean`, `--model n2v2` and `--struct-axis` through the command line, each with its effect on
the run folder; and a clear PSNR gain on the embedded demo for a modest budget."""

import json
from pathlib import Path

import keras
import numpy as np
import tifffile

import zoo  # noqa: F401  (registers the custom layers for loading)
from training.denoise import main
from training.masking import blind_spot_mask
from training.restoration import image_quality
from training.tasks import denoise as denoise_task
from training.tasks.denoise import N2V, N2V2, STRUCT_N2V
from zoo.layers import MaxBlurPool2D

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


def _noisy_and_clean(folder: Path) -> tuple[Path, Path]:
    """A smooth 64 x 72 image (clean.tif) and it with Gaussian noise (noisy.tif), float32."""
    y, x = np.mgrid[:64, :72]
    clean = (100 + 50 * np.sin(y / 7) * np.cos(x / 9)).astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, 15, clean.shape).astype(np.float32)
    tifffile.imwrite(folder / "noisy.tif", noisy)
    tifffile.imwrite(folder / "clean.tif", clean)
    return folder / "noisy.tif", folder / "clean.tif"


def _run(tmp_path: Path, *flags: str) -> Path:
    noisy = tmp_path / "noisy.tif"
    if not noisy.exists():
        _noisy_and_clean(tmp_path)
    assert (
        main(["--data", str(noisy), "--out-dir", str(tmp_path / "runs"), "--run-name", "run", *TINY, *flags])
        == 0
    )
    return tmp_path / "runs" / "run"


def _declared(run: Path) -> dict:
    return json.loads((run / "declaration.json").read_text())


def _cited(run: Path) -> list[str]:
    return [citation["doi"] for citation in _declared(run)["cite"]]


def _layers(run: Path) -> dict[str, keras.layers.Layer]:
    model = keras.models.load_model(run / "last.keras", compile=False)
    return {layer.name: layer for layer in model.layers}


def test_clean_reference_gives_psnr_and_ssim_of_the_written_denoised_image(tmp_path):
    noisy_path, clean_path = _noisy_and_clean(tmp_path)
    run = _run(tmp_path, "--clean", str(clean_path))

    metrics = json.loads((run / "metrics.json").read_text())
    (entry,) = metrics["images"]
    clean = tifffile.imread(clean_path)[..., np.newaxis]
    noisy = tifffile.imread(noisy_path)[..., np.newaxis]
    denoised = tifffile.imread(run / "denoised" / "noisy.tif")[..., np.newaxis]
    assert denoised.shape == clean.shape and not np.array_equal(denoised, noisy)
    # What metrics.json says is what the written files give, recomputed: not the noisy image's quality,
    # nor a quality against another reference.
    assert entry["denoised"] == image_quality(clean, denoised)
    assert entry["noisy"] == image_quality(clean, noisy)
    assert entry["denoised"] != entry["noisy"]
    assert entry["psnr_gain_db"] == entry["denoised"]["psnr"] - entry["noisy"]["psnr"]
    assert metrics["mean_psnr"] == entry["denoised"]["psnr"]
    assert metrics["mean_ssim"] == entry["denoised"]["ssim"]
    assert json.loads((run / "data.json").read_text())["clean"] == str(clean_path.resolve())
    # A plain N2V run: its network and citation only (the controls of the n2v2 and structN2V tests).
    layers = _layers(run)
    assert "dec0_concat" in layers and not any(isinstance(la, MaxBlurPool2D) for la in layers.values())
    assert _cited(run) == [N2V.doi]
    assert any("PSNR" in line for line in _declared(run)["validation"])


def test_n2v2_through_the_command_line_trains_and_declares_n2v2(tmp_path):
    run = _run(tmp_path, "--model", "n2v2", "--depth", "2")

    layers = _layers(run)
    kinds = [type(layer) for layer in layers.values()]
    # Max-blur-pooling at both levels, no max pooling, and the skip of every level but the top one.
    assert kinds.count(MaxBlurPool2D) == 2 and keras.layers.MaxPooling2D not in kinds
    assert "dec1_concat" in layers and "dec0_concat" not in layers
    assert json.loads((run / "config.json").read_text())["model"] == "n2v2"
    declared = _declared(run)
    assert _cited(run) == [N2V.doi, N2V2.doi]
    assert "n2v2" in declared["tags"] and declared["name"].startswith("N2V2")


def test_struct_axis_through_the_command_line_hides_lines_in_the_training_masks(tmp_path, monkeypatch):
    """--struct-axis 1 --struct-span 2 reach the masks training uses (the two pixels left and right of
    every masked pixel are hidden too, the ones above and below are not), config.json and the citations."""
    calls = []

    def recording_mask(patches, seed, **options):
        masked, target = blind_spot_mask(patches, seed, **options)
        calls.append((np.asarray(patches, np.float32), masked, target))
        return masked, target

    monkeypatch.setattr(denoise_task, "blind_spot_mask", recording_mask)
    run = _run(tmp_path, "--struct-axis", "1", "--struct-span", "2")

    assert calls
    along_x = across = 0
    for patches, masked, target in calls:
        hidden = masked != patches
        b, y, x, _ = np.nonzero(target[..., 1:] == 1)  # the centres (the target's mask channel)
        for offset in (-2, -1, 1, 2):
            inside = (x + offset >= 0) & (x + offset < patches.shape[2])
            along_x += (~hidden[b[inside], y[inside], x[inside] + offset, 0]).sum()
            inside = (y + offset >= 0) & (y + offset < patches.shape[1])
            across += hidden[b[inside], y[inside] + offset, x[inside], 0].mean()
    assert along_x == 0  # every pixel of every line is hidden (random values never equal the originals)
    assert across / (4 * len(calls)) < 0.1  # the control: the line runs along x, not y

    config = json.loads((run / "config.json").read_text())
    assert (config["struct_axis"], config["struct_span"]) == (1, 2)
    assert _cited(run) == [N2V.doi, STRUCT_N2V.doi]
    assert any("structN2V axis 1" in line for line in _declared(run)["training"])


def test_a_modest_budget_clearly_denoises_the_embedded_demo(tmp_path):
    # 60 steps, a few seconds on two CPU cores: about +8 dB over the noisy 20 dB, SSIM 0.11 -> 0.62.
    flags = (
        "--no-export --epochs 3 --steps-per-epoch 20 --batch-size 8 --patch-size 48 --base-filters 8 "
        "--depth 2 --no-batch-norm --mask-fraction 0.01 --average-steps 0 --val-patches 4"
    ).split()
    assert main(["--out-dir", str(tmp_path), "--run-name", "run", *flags]) == 0
    (entry,) = json.loads((tmp_path / "run" / "metrics.json").read_text())["images"]
    assert entry["psnr_gain_db"] > 5.0, entry
    assert entry["denoised"]["ssim"] > entry["noisy"]["ssim"] + 0.1, entry
