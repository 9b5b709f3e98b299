"""CARE, content-aware image restoration (Weigert et al., Nature Methods 2018): a U-Net learns to map
low-quality images (noisy, dim) to high-quality ones from pairs of images matched by file name: the task
object.

Data: `DATA/low/` + `DATA/high/` (or `DATA/noisy/` + `DATA/clean/`), split as segmentation's pairs
(`training.data`). Inputs and targets are normalised each with their own training mean and std; outputs
come back in the targets' intensities. Inference and quality: `training.restoration`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tifffile
from pydantic import Field

from base.errors import UserInputError
from base.run_folder import DATA_DIR, METRICS_FILE, NORMALIZATION_FILE, read_record
from export.declaration import Citation, Declaration, Tensor
from training import restoration
from training.callbacks import adam
from training.config import PairSplitOptions, RestorationOptions, TrainingConfig, UNetOptions
from training.data import SPLITS, PairLayout, PairSplit, find_pairs, keep_split, recorded_split
from training.files import write_json
from training.images import read_image
from training.lazy import LazyView, image_stem, open_lazy, read_lazily
from training.pipeline import grid_patches, training_batches
from training.task import NETWORK_OPTIONS, Task, TaskData, TrainingData, training_lines
from zoo import build_model

CARE = Citation(
    text="Weigert, Schmidt, Boothe et al.: Content-aware image restoration: pushing the limits of "
    "fluorescence microscopy. Nature Methods 15, 2018.",
    doi="10.1038/s41592-018-0216-7",
)
LAYOUTS = (
    PairLayout("low", "high", "low-quality image", "high-quality image"),
    PairLayout("noisy", "clean", "noisy image", "clean image"),
)
OUTPUT_DIR = "restored"  # in the run folder: the held-out images, restored by the results checkpoint
DEMO_GRID = 4  # the demo cuts scikit-image's `cell` into DEMO_GRID x DEMO_GRID pairs


class CareConfig(UNetOptions, PairSplitOptions, RestorationOptions, TrainingConfig):
    """Supervised restoration (CARE) from pairs of low- and high-quality images."""

    task: Literal["care"] = Field(
        "care", description="What the run learns.", json_schema_extra={"cli": False}
    )
    data: str | None = Field(
        None,
        description="Folder with low/ and high/ (or noisy/ and clean/): image pairs matched by file name; "
        "none: the embedded demo, tiles of scikit-image's `cell` image with added Gaussian noise.",
    )

    patch_size: int = Field(64, ge=16, le=4096, description="Side of the square training patches, in pixels.")
    batch_size: int = Field(16, ge=1, le=4096, description="Global batch size (split across replicas).")
    epochs: int = Field(20, ge=1, le=100_000, description="Number of epochs.")
    steps_per_epoch: int = Field(25, ge=1, le=1_000_000, description="Training batches per epoch.")
    learning_rate: float = Field(
        4e-4, gt=0, le=1.0, description="Initial (peak, with warm-up) learning rate (CSBDeep's CARE default)."
    )
    plateau_patience: int = Field(10, ge=1, description="Epochs without improvement before a reduction.")
    model: Literal["n2v", "n2v2"] = Field(
        "n2v",
        description="Network: n2v, the U-Net of CSBDeep that CARE and Noise2Void share; n2v2: with blur-pool "
        "down-sampling and no top-level skip.",
    )
    residual: bool = Field(
        False,
        description="Add the input to the network's output, so it learns the correction (CSBDeep's default). "
        "Off by default: inputs and targets are normalised each with their own statistics, so the input is "
        "not the target's baseline, and the residual network validated worse (docs/benchmarks.md).",
    )
    loss: Literal["mae", "mse"] = Field("mae", description="Loss between output and target (CARE: mae).")


@dataclass
class Pair:
    """One low/high pair, (Y, X, C) float32 each, in the files' intensities."""

    name: str
    low: np.ndarray
    high: np.ndarray


@dataclass
class PairData(TaskData):
    split: PairSplit
    pairs: dict[str, list[Pair]]
    stats: dict  # normalization.json: inputs' mean and std, and the targets' under "target"
    demo: bool  # generated (the embedded demo), to be kept in the run folder


def embedded_demo(out_dir: Path, *, sigma: float, seed: int) -> None:
    """scikit-image's `cell` (a quantitative phase image, CC0, in its wheel) cut into DEMO_GRID^2 tiles:
    each tile with Gaussian noise of `sigma` (0-255 scale) in `low/`, the clean tile in `high/`."""
    from skimage import data as skimage_data

    clean = skimage_data.cell().astype(np.float32)
    rng = np.random.default_rng(seed)
    height, width = (side // DEMO_GRID for side in clean.shape)
    for folder in ("low", "high"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for row in range(DEMO_GRID):
        for column in range(DEMO_GRID):
            tile = clean[row * height : (row + 1) * height, column * width : (column + 1) * width]
            noisy = tile + rng.normal(0.0, sigma, tile.shape).astype(np.float32)
            tifffile.imwrite(out_dir / "low" / f"cell_{row}{column}.tif", noisy)
            tifffile.imwrite(out_dir / "high" / f"cell_{row}{column}.tif", tile)


def _layout(data_dir: Path) -> PairLayout:
    for layout in LAYOUTS:
        if (data_dir / layout.inputs).is_dir() or (data_dir / "train" / layout.inputs).is_dir():
            return layout
    names = " or ".join(f"{layout.inputs}/ and {layout.targets}/" for layout in LAYOUTS)
    raise UserInputError(f"{data_dir}: expected {names} with image pairs matched by file name")


def _lazy_pair(low_path: Path, high_path: Path, split: str) -> tuple[LazyView, LazyView]:
    """A training pair too big to hold, read patch by patch (`training.lazy.LazyView`)."""
    if split != "train":
        raise UserInputError(
            f"{low_path}: too big to hold, so it can only train (read patch by patch); validation and test "
            "pairs must fit in memory (choose the split with --split-csv)"
        )
    views = []
    for path in (low_path, high_path):
        view = LazyView(open_lazy(path))
        if view.ndim != 3:
            raise UserInputError(f"{path}: a {view.ndim - 1}D image ({view.image.axes}); CARE takes 2D ones")
        views.append(view)
    return views[0], views[1]


def _read_pairs(split: PairSplit, channel_axis: int | None) -> dict[str, list[Pair]]:
    pairs, problems = {}, []
    for name in SPLITS:
        pairs[name] = []
        for low_path, high_path in split.pairs[name]:
            try:
                if read_lazily(low_path) or read_lazily(high_path):
                    low, high = _lazy_pair(low_path, high_path, name)
                else:
                    low = read_image(low_path, channel_axis=channel_axis)
                    high = read_image(high_path, channel_axis=channel_axis)
            except UserInputError as error:
                problems.append(str(error))
                continue
            if low.shape != high.shape:
                problems.append(
                    f"{high_path}: shape {high.shape[:2]} with {high.shape[-1]} channel(s) differs from "
                    f"{low_path.name}'s {low.shape[:2]} with {low.shape[-1]}"
                )
                continue
            pairs[name].append(Pair(image_stem(low_path), low, high))
    channels = {p.low.shape[-1] for group in pairs.values() for p in group}
    if len(channels) > 1:
        problems.append(f"{split.data_dir}: images have different numbers of channels {sorted(channels)}")
    if problems:
        raise UserInputError("\n".join(problems))
    return pairs


class CareTask(Task):
    name = "care"
    options = CareConfig
    summary = (
        "Train CARE, supervised image restoration, on pairs of low- and high-quality images (DATA/low/ and "
        "DATA/high/, matched by file name), measure PSNR and SSIM on held-out pairs and leave everything in "
        "a run folder. With no --data: tiles of scikit-image's `cell` image with added Gaussian noise."
    )
    results_checkpoint = "best"
    source_options = (*NETWORK_OPTIONS, "residual")

    def load_data(self, config: CareConfig, *, resume_dir: Path | None, scratch: Path | None) -> PairData:
        if resume_dir is not None:
            split = recorded_split(resume_dir)
        else:
            data_dir = Path(config.data) if config.data is not None else scratch / DATA_DIR
            if config.data is None:
                print(
                    "no --data given: tiles of scikit-image's `cell` image, Gaussian noise sigma "
                    f"{config.noise_sigma}"
                )
                embedded_demo(data_dir, sigma=config.noise_sigma, seed=config.seed)
            elif not data_dir.is_dir():
                raise UserInputError(f"{data_dir}: data folder not found")
            split = find_pairs(
                data_dir,
                split_csv=Path(config.split_csv) if config.split_csv else None,
                val_fraction=config.val_fraction,
                test_fraction=config.test_fraction,
                seed=config.seed,
                layout=_layout(data_dir),
            )
        pairs = _read_pairs(split, config.channel_axis)
        small = [
            f"{split.data_dir / split.layout.inputs / p.name}: image of {p.low.shape[0]}x{p.low.shape[1]} "
            f"pixels is too small for patches of {config.patch_size} (lower --patch-size)"
            for group in pairs.values()
            for p in group
            if min(p.low.shape[:2]) < config.patch_size // 2
        ]
        if small:
            raise UserInputError("\n".join(small))
        if resume_dir is not None:
            stats = restoration.read_normalization(resume_dir)
        else:
            stats = restoration.normalization_stats([p.low for p in pairs["train"]])
            stats["target"] = restoration.normalization_stats([p.high for p in pairs["train"]])
        channels = pairs["train"][0].low.shape[-1]
        return PairData(
            channels=channels,
            summary=f"pairs: {', '.join(f'{len(pairs[s])} {s}' for s in SPLITS)}; {channels} channel(s)",
            split=split,
            pairs=pairs,
            stats=stats,
            demo=resume_dir is None and config.data is None,
        )

    def keep_data(self, data: PairData, run_dir: Path) -> None:
        keep_split(data.split, run_dir, generated=data.demo)
        write_json(run_dir / NORMALIZATION_FILE, data.stats)

    def build_model(self, config: CareConfig, channels: int) -> keras.Model:
        model = build_model(
            config.model,
            input_channels=channels,
            **config.network_arguments(),
            residual=config.residual,
        )
        loss = keras.losses.MeanAbsoluteError() if config.loss == "mae" else keras.losses.MeanSquaredError()
        model.compile(optimizer=adam(config), loss=loss)
        return model

    def _normalized(self, pairs: list[Pair], stats: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
        target = restoration.target_stats(stats)
        return (
            [restoration.normalize(p.low, stats) for p in pairs],
            [restoration.normalize(p.high, target) for p in pairs],
        )

    def training_data(
        self, config: CareConfig, data: PairData, run_dir: Path, *, first_epoch: int
    ) -> TrainingData:
        train = training_batches(
            *self._normalized(data.pairs["train"], data.stats),
            patch_size=config.patch_size,
            batch_size=config.batch_size,
            seed=config.seed,
            first_epoch=first_epoch,
            steps_per_epoch=config.steps_per_epoch,
        )
        val = grid_patches(
            *self._normalized(data.pairs["val"], data.stats),
            patch_size=config.patch_size,
            max_patches=config.val_patches,
        )
        return TrainingData(train, val)

    def evaluate(self, config: CareConfig, data: PairData, run_dir: Path, model, runner) -> dict:
        evaluated_on = "test" if data.pairs["test"] else "val"
        out_dir = run_dir / OUTPUT_DIR
        out_dir.mkdir(exist_ok=True)
        results = []
        for pair in data.pairs[evaluated_on]:
            restored = restoration.restore_image(
                model, pair.low, stats=data.stats, tile_size=config.tile_size, tta=config.tta, runner=runner
            )
            target = out_dir / f"{pair.name}.tif"
            restoration.write_restored(target, restored)
            results.append(restoration.compared(pair.name, target, restored, pair.low, pair.high))
        return {
            "evaluated_on": evaluated_on,
            "tta": config.tta,
            "images": results,
            **restoration.quality_summary(results),
        }

    def report(self, metrics: dict) -> list[str]:
        lines = [f"{metrics['checkpoint']} on the {metrics['evaluated_on']} pairs:"]
        lines += restoration.quality_lines(metrics["images"])
        lines.append(
            f"mean PSNR {metrics['mean_psnr']:.2f} dB (gain {metrics['mean_psnr_gain_db']:+.2f} dB), "
            f"mean SSIM {metrics['mean_ssim']:.3f}"
        )
        return lines

    def sample(self, data: PairData) -> np.ndarray:
        held_out = data.pairs["test"] or data.pairs["val"] or data.pairs["train"]
        low = held_out[0].low
        return low.center_crop(512) if isinstance(low, LazyView) else low

    def declare(self, run_dir: Path, config: CareConfig) -> Declaration:
        stats = restoration.read_normalization(run_dir)
        metrics = read_record(run_dir / METRICS_FILE, "the held-out evaluation")
        pre, post = restoration.declared_processing(stats)
        channels = [f"channel{c}" for c in range(len(stats["mean"]))]
        return Declaration(
            task=self.name,
            checkpoint=self.results_checkpoint,
            name=f"CARE restoration ({run_dir.name})",
            description="Content-aware image restoration (CARE): a U-Net trained with bioimage-keras-zoo on "
            "pairs of low- and high-quality images; output in the high-quality images' intensities.",
            tags=["restoration", "denoising", "care", "supervised", "2d", "keras"],
            cite=[CARE],
            input=Tensor(
                id="raw",
                channels=channels,
                processing=pre,
                description="The input is normalised with the mean and standard deviation of the training "
                "inputs (`fixed_zero_mean_unit_variance`), the output scaled back with those of the "
                "training targets (`scale_linear`).",
            ),
            output=Tensor(
                id="restored",
                channels=channels,
                processing=post,
                description="the restored image, in the intensities of the high-quality training images.",
            ),
            training=training_lines(
                config,
                data=config.data
                or "tiles of scikit-image's `cell` image with added Gaussian noise (the embedded demo)",
            ),
            validation=[
                "PSNR and SSIM against the high-quality images of the held-out "
                f"**{metrics['evaluated_on']}** "
                "pairs (the data range of each high-quality image), never used for training:",
                "",
                *restoration.quality_table(metrics["images"], before="input", after="restored"),
            ],
        )

    def output_names(self, stem: str) -> list[str]:
        return [f"{stem}_restored.tif"]

    def predict_file(self, path: Path, out_dir: Path, *, run_dir: Path, config, model, runner) -> None:
        target = out_dir / self.output_names(path.stem)[0]
        restoration.restore_file(path, target, run_dir=run_dir, config=config, model=model, runner=runner)
        print(f"{path.name}: restored -> {target}")

    def blockwise(self, run_dir: Path, config):
        return restoration.blockwise_spec(run_dir, config, "restored")
