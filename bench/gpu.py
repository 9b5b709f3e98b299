"""Training and prediction speed on a GPU machine, under every Keras backend it has, against CAREamics.

    PYTHONPATH=. python bench/gpu.py [--quick] [--budget-s 300] [--out bench/results/gpu.json]

Made for a machine with Python, an NVIDIA GPU and JAX and/or PyTorch but no TensorFlow and no network:
Keras and the other pure-Python requirements come as wheels (bench/README.md, "On a GPU machine",
says how to build and install the bundle); the project is the working tree. It installs nothing.

For each backend present (jax, torch, tensorflow) and each precision (float32, mixed_bfloat16,
mixed_float16), a fresh process (`bench/gpu_worker.py train`, KERAS_BACKEND set) times
`train_on_batch` of N2V (depth 2, 32 filters, batch 64, 64^2 patches) and of the U-Net (depth 4, 32
filters, batch 8, 256^2) on random batches already on the device, compiled as the training tasks
compile them; the median step after a warm-up, patches per second, and the convolution arithmetic of
a step (3 forward passes, `zoo.flops`) as a fraction of the matrix-product peak of that backend and
dtype, measured in the same process. Then each model traced to TorchScript as its package is
(`python -m export.torchscript`) predicts one 2048^2 image on the device in float32 and under float16
and bfloat16 autocast (`bench/gpu_worker.py predict`). Where CAREamics imports, its N2V step at the
same batch, patch and network (`bench/gpu_careamics.py`): through its trainer, and its module's step
alone.

Without a GPU the same command runs a reduced plan (N2V, float32, a 1024^2 image, few steps) so that
it ends in a few minutes. Jobs run in order of importance until `--budget-s` is spent; the rest are
recorded as skipped. Prints a table and writes JSON (after every job) to --out, each job's log beside
it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

# None of these imports a framework: this process leaves the device to the workers (JAX would take most
# of the GPU's memory for itself).
from gpu_worker import AUTOCAST_DTYPE  # noqa: E402

from base.backend import BACKENDS, has_nvidia_gpu, installed  # noqa: E402

WORKER = str(ROOT / "bench" / "gpu_worker.py")
CAREAMICS = str(ROOT / "bench" / "gpu_careamics.py")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MODELS = ("n2v", "unet")
# The options that decide what is measured, recorded with the results.
PLAN_KEYS = ("backends", "precisions", "models", "warmup", "steps", "unet_steps", "side", "repeats")
MIN_JOB_S = 30  # a job is not started with less of the budget left


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(job key, KERAS_BACKEND, script and its arguments) in order of importance: CAREamics (the peer of
    the goal), float32 and bfloat16 training, prediction, then float16 training (whose loss scaling no
    other measurement needs)."""
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    models = ["--models", *args.models]
    training = [WORKER, "train", *common, *models, "--unet-steps", str(args.unet_steps)]
    train = [
        (f"train/{backend}/{precision}", backend, [*training, "--precision", precision])
        for precision in args.precisions
        for backend in args.backends
    ]
    jobs = []
    if not args.no_careamics and installed("careamics") and "torch" in args.backends:
        jobs.append(("careamics", "torch", [CAREAMICS, *common]))
    jobs += [job for job in train if not job[0].endswith("mixed_float16")]
    if not args.no_predict and "torch" in args.backends:
        predict = ["--side", str(args.side), "--repeats", str(args.repeats), *models]
        jobs.append(("predict/torch", "torch", [WORKER, "predict", *predict]))
    jobs += [job for job in train if job[0].endswith("mixed_float16")]
    return jobs


def run_job(key: str, backend: str, command: list[str], timeout: float, logs: Path) -> dict:
    """One worker process; its result, or why there is none (the last line of its log)."""
    log = logs / f"{key.replace('/', '-')}.log"
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        env = os.environ | {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        start = time.perf_counter()
        with log.open("w") as handle:
            try:
                code = subprocess.run(
                    [sys.executable, *command, "--result", str(result)],
                    cwd=ROOT,
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                code = f"timed out after {timeout:.0f} s"
        seconds = time.perf_counter() - start
        if code == 0 and result.is_file():
            return json.loads(result.read_text()) | {"job_seconds": seconds}
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    return {"error": f"exit {code}: {tail[0]}", "log": str(log), "job_seconds": seconds}


def speedups(jobs: dict) -> dict:
    """Our N2V step time against CAREamics's: its trainer step, and its module step at float32."""
    peer = jobs.get("careamics", {})
    if "trainer" not in peer:
        return {}
    references = {
        "trainer": peer["trainer"]["step_ms"],
        "module float32": peer["module"]["float32"]["step_ms"],
    }
    return {
        key.removeprefix("train/"): {
            name: ms / job["models"]["n2v"]["step_ms"] for name, ms in references.items()
        }
        for key, job in jobs.items()
        if key.startswith("train/") and "step_ms" in job.get("models", {}).get("n2v", {})
    }


def _row(*cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _why(job: dict) -> str:
    return job.get("error") or job.get("skipped") or "no result"


def table(summary: dict) -> str:
    """The training table (with CAREamics's rows and the speed-ups) and the prediction table."""
    jobs = summary["jobs"]
    lines = [
        _row(
            "model", "backend", "precision", "step (ms)", "patches/s", "TFLOP/s", "of peak", "peak (TFLOP/s)"
        ),
        _row(*["---"] * 8),
    ]
    for model in summary["plan"]["models"]:
        for key, job in jobs.items():
            if not key.startswith("train/"):
                continue
            _, backend, precision = key.split("/")
            row = job.get("models", {}).get(model, job)
            if "step_ms" not in row:
                lines.append(_row(model, backend, precision, _why(row), "", "", "", ""))
                continue
            peak = job["peak"]
            lines.append(
                _row(
                    f"{model} ({row['batch']} x {row['patch']}^2)",
                    backend,
                    precision,
                    f"{row['step_ms']:.1f}",
                    f"{row['patches_per_s']:.0f}",
                    f"{row['tflops']:.3g}",
                    f"{row['fraction_of_peak']:.1%}",
                    f"{peak['tflops']:.3g} ({peak['dtype']})",
                )
            )
    peer = jobs.get("careamics")
    if peer and "trainer" in peer:
        rows = [("trainer", "float32", peer["trainer"])]
        rows += [("module step", precision, row) for precision, row in peer["module"].items()]
        for name, precision, row in rows:
            peak = peer["peaks"][AUTOCAST_DTYPE[precision]]
            speed = [f"{row['step_ms']:.1f}", f"{row['patches_per_s']:.0f}", f"{row['tflops']:.3g}"]
            speed += [f"{row['fraction_of_peak']:.1%}", f"{peak['tflops']:.3g} ({peak['dtype']})"]
            lines.append(_row(f"n2v, {peer['implementation']}, {name}", "torch", precision, *speed))
    elif peer:
        lines.append(_row("n2v, CAREamics", "torch", "", _why(peer), "", "", "", ""))
    if summary["n2v_speedup_vs_careamics"]:
        lines += ["", "N2V step, CAREamics's time / ours (its trainer step; its module step in float32):"]
        for key, ratios in summary["n2v_speedup_vs_careamics"].items():
            lines.append(f"  {key}: {ratios['trainer']:.2f}x; {ratios['module float32']:.2f}x")
    predict = jobs.get("predict/torch")
    if predict and "models" in predict:
        header = [f"TorchScript, {predict['side']}^2", "precision", "s", "Mpx/s", "TFLOP/s", "of peak"]
        lines += ["", _row(*header, "max diff / range"), _row(*["---"] * 7)]
        for model, measured in predict["models"].items():
            for row in measured["rows"]:
                if "seconds" not in row:
                    lines.append(_row(model, row["precision"], f"failed: {row['error']}", "", "", "", ""))
                    continue
                lines.append(
                    _row(
                        model,
                        row["precision"],
                        f"{row['seconds']:.4f}",
                        f"{row['megapixels_per_s']:.1f}",
                        f"{row['tflops']:.3g}",
                        f"{row['fraction_of_peak']:.1%}",
                        f"{row['max_relative_difference']:.1e}",
                    )
                )
    elif predict:
        lines += ["", f"TorchScript prediction: {_why(predict)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    gpu = has_nvidia_gpu()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=[b for b in BACKENDS if installed(b)]
    )
    parser.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS if gpu else ["float32"]
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS if gpu else ["n2v"])
    parser.add_argument(
        "--warmup", type=int, default=3 if gpu else 1, help="untimed steps (the first compiles)"
    )
    parser.add_argument(
        "--steps", type=int, default=20 if gpu else 2, help="timed steps of N2V and CAREamics"
    )
    parser.add_argument("--unet-steps", type=int, default=10 if gpu else 2, help="timed steps of the U-Net")
    parser.add_argument("--side", type=int, default=2048 if gpu else 1024, help="side of the predicted image")
    parser.add_argument("--repeats", type=int, default=10 if gpu else 2, help="timed predictions")
    parser.add_argument(
        "--budget-s", type=float, default=300, help="seconds for all jobs; the one running then is stopped"
    )
    parser.add_argument("--no-careamics", action="store_true", help="skip CAREamics even where it imports")
    parser.add_argument("--no-predict", action="store_true", help="skip the TorchScript prediction")
    parser.add_argument(
        "--quick", action="store_true", help="check the script end to end: N2V, float32, 1 step"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.precisions, args.models, args.warmup, args.steps, args.unet_steps = ["float32"], ["n2v"], 1, 1, 1
        args.side, args.repeats = 256, 1
    if not installed("keras"):
        parser.error(
            "Keras is not importable: install the wheel bundle first (bench/README.md, 'On a GPU machine')"
        )
    if not args.backends:
        parser.error("none of jax, torch, tensorflow is importable")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logs = args.out.with_name(f"{args.out.stem}-logs")
    logs.mkdir(exist_ok=True)
    summary = {
        "benchmark": "gpu",
        "command": " ".join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "gpu_driver": gpu,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": {
            name: version(name) for name in ("keras", "jax", "jaxlib", "torch", "tensorflow", "careamics")
        },
        "budget_s": args.budget_s,
        "plan": {key: getattr(args, key) for key in PLAN_KEYS},
        "jobs": {},
        "n2v_speedup_vs_careamics": {},
    }
    if not args.no_careamics and not installed("careamics"):
        summary["jobs"]["careamics"] = {"skipped": "careamics is not installed"}
    start = time.perf_counter()
    for key, backend, command in plan(args):
        remaining = args.budget_s - (time.perf_counter() - start)
        if remaining < MIN_JOB_S:
            summary["jobs"][key] = {"skipped": f"time budget ({args.budget_s:.0f} s) spent"}
            continue
        print(f"[{time.perf_counter() - start:5.0f} s] {key}", flush=True)
        summary["jobs"][key] = run_job(key, backend, command, remaining, logs)
        summary["n2v_speedup_vs_careamics"] = speedups(summary["jobs"])
        summary["elapsed_s"] = time.perf_counter() - start
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    summary["elapsed_s"] = time.perf_counter() - start
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    devices = sorted({job["device"] for job in summary["jobs"].values() if "device" in job})
    versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items() if v)
    print(f"\n# {'; '.join(devices) or 'no device measured'}; Python {summary['python']}; {versions}")
    print(table(summary))
    print(f"\nwritten: {args.out} ({summary['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
