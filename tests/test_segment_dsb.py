"""`python -m training.segment` on the real DSB2018 nuclei subset of ../shared/data, with its index.csv split.

A short run: it proves that real 8-bit images of several sizes, their uint16 instance masks and the
published split go through reading, training, evaluation and prediction, not that the model is good
(bench/segment_dsb2018.py measures that).
"""

import csv
import json
from collections import Counter

import numpy as np
import pytest
import tifffile

from training.predict import main as predict_main
from training.segment import main as segment_main


@pytest.mark.slow  # about a minute on 2 cores
def test_short_run_on_real_dsb_data_follows_its_split_and_evaluates_the_test_images(dsb_dir, tmp_path):
    flags = (
        "--epochs 2 --steps-per-epoch 4 --patch-size 64 --batch-size 4 --depth 2 --base-filters 8 "
        "--warmup-epochs 0 --val-patches 16 --no-export"
    ).split()
    out = tmp_path / "runs"
    assert segment_main(["--data", str(dsb_dir), "--out-dir", str(out), "--run-name", "dsb", *flags]) == 0
    run = out / "dsb"

    with (dsb_dir / "index.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    split = json.loads((run / "split.json").read_text())
    assert {name: len(pairs) for name, pairs in split["pairs"].items()} == Counter(r["split"] for r in rows)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "test" and len(metrics["images"]) == 14
    at_05 = metrics["instances"]["per_threshold"][0]
    # Every annotated test nucleus is counted (600 in the test split), matched or missed.
    assert at_05["tp"] + at_05["fn"] == 600
    assert 0.0 <= at_05["f1"] <= 1.0
    assert set(json.loads((run / "postprocessing.json").read_text())["chosen_on"]).isdisjoint(
        metrics["images"]
    )

    image = dsb_dir / "images" / f"{split['pairs']['test'][0][0]}"
    assert (
        predict_main([str(run), str(image), "--out", str(tmp_path / "pred"), "--precision", "float32"]) == 0
    )
    labels = tifffile.imread(tmp_path / "pred" / f"{image.stem}_labels.tif")
    assert labels.shape == tifffile.imread(image).shape[:2] and labels.dtype == np.uint16
