"""Training and prediction throughput at the standard sizes, as fractions of this machine's ceiling.

    python bench/throughput.py [--backends tensorflow jax torch] [--models n2v unet]
                               [--precisions float32 mixed_bfloat16] [--skip-training] [--skip-prediction]
                               [--tile-size 512]

1. Ceiling: a 4096 x 4096 matrix product in TensorFlow at each precision (float32; bfloat16 for
   mixed_bfloat16), the most arithmetic this machine delivers per second to a dense kernel.
2. Training: the project's own command lines (`python -m training.denoise` / `training.segment`) at the
   standard sizes, N2V (depth 2, 32 filters, batch 64, 64 x 64 patches) and U-Net (depth 4, 32 filters,
   batch 8, 256 x 256 patches), for a few short epochs; the median step time of the epochs after the
   first (`step_ms` of history.csv, input waits included). Work per step: three forward passes'
   worth of convolution FLOPs (forward, and the two products of the backward pass; `zoo.flops`). Each
   installed Keras backend (`--backend`) is measured, and each step is also given as a ratio to the
   fastest backend at the same model and precision in the same run.
3. Prediction: a 2048 x 2048 image, tiled as `training.predict` does (tiles of at most `--tile-size`
   pixels or 8 halos, batches of 4, the halo mirrored around the image), through Keras in float32 and
   in bfloat16 (`--precision bfloat16`: batch norm folded, as always) and through onnxruntime
   (`--engine onnx`); the median of three runs after a warm-up. Work: one forward pass over the image
   (overlaps not counted), as a fraction of the ceiling of the precision it runs in.

Prints a table and writes bench/results/throughput.json. The peers (juglab n2v, CAREamics) are in
`bench/n2v_compare.py`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from base.backend import BACKENDS, installed  # noqa: E402

STANDARD = {
    "n2v": {"task": "denoise", "depth": 2, "base_filters": 32, "batch": 64, "patch": 64, "steps": 10},
    "unet": {"task": "segment", "depth": 4, "base_filters": 32, "batch": 8, "patch": 256, "steps": 4},
}
PREDICT_SIDE = 2048


def ceiling(precision: str, side: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a side x side matrix product at the compute dtype of `precision`."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    a = tf.random.normal((side, side), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.matmul(x, x))
    product(a).numpy()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).numpy()
        times.append(time.perf_counter() - start)
    return 2 * side**3 / statistics.median(times)


def _history_step_ms(run_dir: Path) -> float:
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return statistics.median(float(r["step_ms"]) for r in rows[1:])  # the first epoch traces the graph


def training_step(name: str, precision: str, backend: str, scratch: Path) -> dict:
    spec = STANDARD[name]
    run = f"{name}-{precision}-{backend}"
    flags = [
        "--out-dir", str(scratch), "--run-name", run, "--no-export",
        "--depth", str(spec["depth"]), "--base-filters", str(spec["base_filters"]),
        "--batch-size", str(spec["batch"]), "--patch-size", str(spec["patch"]),
        "--epochs", "4", "--steps-per-epoch", str(spec["steps"]), "--val-patches", "8",
        "--precision", precision, "--backend", backend,
    ]  # fmt: skip
    if spec["task"] == "segment":
        flags += ["--synthetic-images", "12", "--no-tune-thresholds", "--lr-schedule", "constant"]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", f"training.{spec['task']}", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name} {precision} {backend} failed:\n{result.stderr[-2000:]}")
    step = _history_step_ms(scratch / run) / 1000
    return {"step_s": step, "patches_per_s": spec["batch"] / step}


# (engine, precision) of each prediction measured: see training.engines.
PREDICTION_ENGINES = [("keras", "float32"), ("keras", "bfloat16"), ("onnx", "float32")]


def prediction_speed(name: str, engine: str, precision: str, tile_size: int) -> float:
    """Seconds to predict a 2048 x 2048 image (median of three after a warm-up)."""
    import zoo
    from training.engines import predictor
    from training.tiling import predict_with_geometry

    spec = STANDARD[name]
    model = zoo.build_model(name, depth=spec["depth"], base_filters=spec["base_filters"])
    geometry = zoo.model_geometry(model)
    runner = predictor(model, engine, precision)
    image = np.random.default_rng(0).normal(size=(PREDICT_SIDE, PREDICT_SIDE, 1)).astype(np.float32)

    def once() -> float:
        start = time.perf_counter()
        predict_with_geometry(runner, image, geometry, tile_size=tile_size)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument(
        "--backends", nargs="+", default=[b for b in BACKENDS if installed(b)], choices=BACKENDS
    )
    parser.add_argument("--models", nargs="+", default=list(STANDARD), choices=list(STANDARD))
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-prediction", action="store_true")
    parser.add_argument("--tile-size", type=int, default=512, help="prediction tiles (default: 512)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import zoo
    from zoo.flops import conv_flops

    keras.utils.disable_interactive_logging()
    result: dict = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
        },
        "ceiling_gflops": {},
        "training": {},
        "prediction": {},
    }
    for precision in dict.fromkeys([*args.precisions, "float32", "mixed_bfloat16"]):  # prediction needs both
        result["ceiling_gflops"][precision] = ceiling(precision) / 1e9
    flops = {
        name: conv_flops(
            zoo.build_model(name, depth=s["depth"], base_filters=s["base_filters"]), s["patch"], s["patch"]
        )
        for name, s in STANDARD.items()
    }
    lines = [
        "| model | backend | precision | step (s) | patches/s | GFLOP/s | of ceiling | x fastest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as scratch:
            for name in args.models:
                spec = STANDARD[name]
                for precision in args.precisions:
                    steps = {}
                    for backend in args.backends:
                        measured = training_step(name, precision, backend, Path(scratch))
                        achieved = 3 * flops[name] * spec["batch"] / measured["step_s"] / 1e9
                        measured |= {
                            "gflops": achieved,
                            "fraction_of_ceiling": achieved / result["ceiling_gflops"][precision],
                        }
                        steps[backend] = measured
                    fastest = min(m["step_s"] for m in steps.values())
                    for backend, measured in steps.items():
                        measured["times_fastest"] = measured["step_s"] / fastest
                        result["training"][f"{name}/{backend}/{precision}"] = measured
                        lines.append(
                            f"| {name} (batch {spec['batch']}, {spec['patch']}^2) | {backend} | "
                            f"{precision} | "
                            f"{measured['step_s']:.3f} | {measured['patches_per_s']:.1f} | "
                            f"{measured['gflops']:.1f} | {measured['fraction_of_ceiling']:.1%} | "
                            f"{measured['times_fastest']:.2f} |"
                        )
    if args.skip_prediction:
        _report(result, lines)
        return
    lines += ["", "| model | engine | 2048^2 (s) | megapixels/s | GFLOP/s | of its precision's ceiling |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for name, spec in STANDARD.items():
        model = zoo.build_model(name, depth=spec["depth"], base_filters=spec["base_filters"])
        work = conv_flops(model, PREDICT_SIDE, PREDICT_SIDE)
        for engine, precision in PREDICTION_ENGINES:
            seconds = prediction_speed(name, engine, precision, args.tile_size)
            achieved = work / seconds / 1e9
            ceiling_gflops = result["ceiling_gflops"][
                f"{'mixed_' if precision == 'bfloat16' else ''}{precision}"
            ]
            result["prediction"][f"{name}/{engine}/{precision}"] = {
                "seconds": seconds,
                "tile_size": args.tile_size,
                "megapixels_per_s": PREDICT_SIDE**2 / 1e6 / seconds,
                "gflops": achieved,
                "fraction_of_ceiling": achieved / ceiling_gflops,
            }
            lines.append(
                f"| {name} | {engine} {precision} | {seconds:.2f} | {PREDICT_SIDE**2 / 1e6 / seconds:.2f} | "
                f"{achieved:.1f} | {achieved / ceiling_gflops:.1%} |"
            )
    _report(result, lines)


def _report(result: dict, lines: list[str]) -> None:
    print(
        "ceiling (4096^2 matmul): "
        + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in result["ceiling_gflops"].items())
    )
    print("\n".join(lines))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {results / 'throughput.json'}")


if __name__ == "__main__":
    main()
