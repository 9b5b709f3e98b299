"""Prediction speed of a trained denoising run on a large image, by engine, precision and tile size.

    python bench/prediction.py RUN_DIR IMAGE [--side 2048] [--tile-sizes 512 1024 2048 4096]

Tiles IMAGE (a noisy image, e.g. the one the run was trained on) to SIDE x SIDE pixels and denoises it
as `python -m training.predict RUN_DIR ... --engine E --precision P --tile-size T` does (normalisation,
tiles, mirrored border), timing each combination after a warm-up in this process (median of three).
With each, the largest difference from the float32 Keras output at the same tile size, relative to that
output's range. Prints a table and writes `prediction.json` into RUN_DIR's benchmark folder under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
COMBINATIONS = [("keras", "float32"), ("keras", "bfloat16"), ("onnx", "float32")]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--tile-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument(
        "--defaults", action="store_true", help="only float32 with tiles of 512 and the command's defaults"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from worker_common import large_image

    from training.blockwise import memory_budget
    from training.engines import predictor
    from training.predict import auto_precision, default_tile_size, load_run
    from training.restoration import read_normalization, restore_image

    _, config, model = load_run(args.run_dir, "last")
    stats = read_normalization(args.run_dir)
    image = tifffile.imread(args.image).astype(np.float32)
    big = large_image(image, args.side)[..., np.newaxis]

    rows = []
    # The defaults of `python -m training.predict`: the precision and tile size chosen for this machine.
    precision = auto_precision("keras")
    default = ("keras", precision, default_tile_size(model, precision, config, memory_budget(None)))
    combinations = [(e, p, t) for e, p in COMBINATIONS for t in args.tile_sizes]
    if args.defaults:
        combinations = [("keras", "float32", 512), default]
    for engine, precision, tile in combinations:
        runner = predictor(model, engine, precision)

        def once(tile: int = tile, runner=runner) -> tuple[float, np.ndarray]:
            start = time.perf_counter()
            output = restore_image(model, big, stats=stats, tile_size=tile, tta=config.tta, runner=runner)
            return time.perf_counter() - start, output

        _, output = once()  # warm-up
        seconds = statistics.median(once()[0] for _ in range(3))
        rows.append({"engine": engine, "precision": precision, "tile_size": tile, "seconds": seconds})
        rows[-1]["default"] = (engine, precision, tile) == default
        rows[-1]["output"] = output
    for row in rows:
        reference = next(
            r["output"]
            for r in rows
            if (r["engine"], r["precision"]) == ("keras", "float32")
            and r["tile_size"] in (row["tile_size"], 512)
        )
        span = float(reference.max() - reference.min())
        row["max_difference_of_range"] = float(np.abs(row["output"] - reference).max()) / span
    for row in rows:
        del row["output"]

    print(f"\n{args.side} x {args.side} pixels, {len(os.sched_getaffinity(0))} cores")
    print(f"{'engine':8}{'precision':10}{'tile':>6}{'seconds':>9}{'max diff / range':>18}")
    for row in rows:
        print(
            f"{row['engine']:8}{row['precision']:10}{row['tile_size']:>6}{row['seconds']:>9.2f}"
            f"{row['max_difference_of_range']:>18.1e}"
        )
    out = args.out / f"prediction-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "benchmark": "prediction",
        "command": " ".join(["python", "bench/prediction.py", *sys.argv[1:]]),
        "run_dir": str(args.run_dir),
        "side": args.side,
        "rows": rows,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
