"""Fine-tuning the shipped nuclei model against training from scratch, on a few annotated images.

    python bench/finetune_nuclei.py [--shared ../shared/data] [--out bench/results] [--sizes 3 10]

For each size N, N training images of `nuclei_dsb2018` (the first N of its train split in a seeded
shuffle) train two runs with the same network, steps and seed: one from random weights, one from the
shipped model (`--init-from nuclei`). Both choose their checkpoint and thresholds on the 14 val images and
are scored on the 14 test images, which neither the shipped model nor these runs trained on. Prints and
writes (JSON) F1@0.5, mAP and the wall time of each run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from pretrain_nuclei import index_rows, linked_dataset  # bench/ is the script's folder

# Short runs, as a user with a few images would make them; the same for both arms.
TRAINING_ARGS = [
    "--epochs",
    "10",
    "--steps-per-epoch",
    "50",
    "--lr-schedule",
    "cosine",
    "--warmup-epochs",
    "1",
]


# Both fine-tuned arms start from the shipped model; the second at a tenth of the learning rate, as
# fine-tuning usually wants.
ARMS = {
    "scratch": lambda network: network,
    "fine-tuned": lambda network: ["--init-from", "nuclei"],
    "fine-tuned-lr1e-4": lambda network: ["--init-from", "nuclei", "--learning-rate", "1e-4"],
}


def subset(shared: Path, out: Path, n: int, seed: int) -> Path:
    """OUT/finetune-data-N: links to N train images of nuclei_dsb2018 and all its val and test images."""
    source = shared / "nuclei_dsb2018"
    rows = index_rows(source)
    train = [row["name"] for row in rows if row["split"] == "train"]
    chosen = {train[i] for i in np.random.default_rng(seed).permutation(len(train))[:n]}
    kept = [row for row in rows if row["split"] != "train" or row["name"] in chosen]
    pairs = [(source, {"name": row["name"], "split": row["split"]}) for row in kept]
    return linked_dataset(out / f"finetune-data-{n}", pairs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--shared", type=Path, default=root.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=root / "bench" / "results")
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = parser.parse_args()
    if not (args.shared / "nuclei_dsb2018" / "index.csv").is_file():
        parser.error(f"{args.shared / 'nuclei_dsb2018'}: DSB2018 folder not found")

    from training.segment import main as segment_main
    from zoo.pretrained import shipped_folder

    shipped = json.loads((shipped_folder("nuclei") / "config.json").read_text())
    network = ["--depth", str(shipped["depth"]), "--base-filters", str(shipped["base_filters"])]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for n in args.sizes:
        data = subset(args.shared, args.out, n, args.seed)
        for arm in args.arms:
            extra = ARMS[arm](network)
            run_name = f"finetune-{stamp}-{n}-{arm}"
            start = time.perf_counter()
            flags = ["--data", str(data), "--out-dir", str(args.out), "--run-name", run_name]
            status = segment_main([*flags, "--seed", str(args.seed), "--no-export", *TRAINING_ARGS, *extra])
            if status:
                return status
            metrics = json.loads((args.out / run_name / "metrics.json").read_text())
            results.append(
                {
                    "train_images": n,
                    "arm": arm,
                    "f1_at_0.5": metrics["instances"]["f1_at_0.5"],
                    "mean_average_precision_0.5_0.9": metrics["instances"]["mean_average_precision"],
                    "evaluated_on": f"{len(metrics['images'])} {metrics['evaluated_on']} images",
                    "wall_seconds": round(time.perf_counter() - start, 1),
                    "run_dir": str(args.out / run_name),
                }
            )
    summary = {"command": "python bench/finetune_nuclei.py", "training_args": TRAINING_ARGS, "runs": results}
    (args.out / f"finetune-{stamp}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print("\n| training images | " + " | ".join(f"{arm} F1@0.5" for arm in args.arms) + " |")
    print("| --- |" + " --- |" * len(args.arms))
    for n in args.sizes:
        f1 = {r["arm"]: r["f1_at_0.5"] for r in results if r["train_images"] == n}
        print(f"| {n} | " + " | ".join(f"{f1[arm]:.3f}" for arm in args.arms) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
