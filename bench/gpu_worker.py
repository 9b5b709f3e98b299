"""The measurements of `bench/gpu.py`, one kind per process: `gpu.py` runs this file once per Keras
backend and precision (KERAS_BACKEND set in the environment, so each backend and each global dtype policy
starts clean) and once for the TorchScript prediction (CAREamics: `bench/gpu_careamics.py`).

    KERAS_BACKEND=jax python bench/gpu_worker.py train --precision mixed_bfloat16 --result R.json
    KERAS_BACKEND=torch python bench/gpu_worker.py predict --result R.json

Each kind also measures the matrix-product peak of its own backend and dtypes on the same device, so a
step time turns into a fraction of what that device delivers to a dense kernel in that run. Needs Keras,
NumPy and the backend, and no TensorFlow unless it is the backend. A model that fails (an import, a
dtype) records its error in the result and the other model is measured all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from throughput import PREDICT_SIDE, STANDARD  # noqa: E402  (the standard sizes, one definition)

# The compute dtype of each Keras precision policy, and of each prediction row (`package_torch.py`'s).
COMPUTE_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
AUTOCAST_DTYPE = {"float32": "float32", "float16 autocast": "float16", "bfloat16 autocast": "bfloat16"}
# === Device and matrix-product peak: the one backend-specific seam ===


def backend_device() -> tuple[bool, str]:
    """(on a GPU, a description of the device) of the current Keras backend's default device."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return True, f"cuda: {torch.cuda.get_device_name()}"
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return True, f"gpu: {device.device_kind}"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return True, f"gpu: {tf.config.experimental.get_device_details(gpus[0]).get('device_name')}"
    return False, "cpu"


@contextlib.contextmanager
def float32_like_convolutions():
    """Let float32 matrix products run as the backend's float32 convolutions do, and say how.

    PyTorch lets cuDNN convolutions use TF32 by default (`torch.backends.cudnn.allow_tf32`) but not
    matrix products; without this the float32 peak would be IEEE float32, which the training step never
    runs at on an NVIDIA GPU since Ampere. JAX (XLA) and TensorFlow use one setting for both."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        matmul = torch.backends.cuda.matmul
        before, matmul.allow_tf32 = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        try:
            precision = getattr(matmul, "fp32_precision", "n/a")  # PyTorch >= 2.9's view of the same flag
            yield f"torch: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}; matmul alike ({precision})"
        finally:
            matmul.allow_tf32 = before
    elif backend == "jax":
        import jax

        yield f"jax: default_matmul_precision={jax.config.jax_default_matmul_precision}"
    else:
        import tensorflow as tf

        yield f"tensorflow: tf32={tf.config.experimental.tensor_float_32_execution_enabled()}"


def matmul_peak(dtype: str, side: int) -> dict:
    """TFLOP/s of side x side matrix products in `dtype` through `keras.ops` on the default device:
    the median of five timings, each of enough back-to-back products to last 50 ms."""
    import keras
    from keras import ops

    with float32_like_convolutions() as mode:
        a = keras.random.normal((side, side), dtype=dtype, seed=0)
        b = keras.random.normal((side, side), dtype=dtype, seed=1)

        def products(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                c = ops.matmul(a, b)
            ops.convert_to_numpy(c[0, 0])  # waits for the device
            return time.perf_counter() - start

        products(1)
        count = max(1, round(0.05 / products(1)))
        seconds = statistics.median(products(count) / count for _ in range(5))
    return {"dtype": dtype, "side": side, "tflops": 2 * side**3 / seconds / 1e12, "float32_mode": mode}


def timed_steps(step, warmup: int, steps: int) -> dict:
    """Median milliseconds of `steps` calls of `step` (which must wait for the device) after `warmup`;
    also the first call's seconds (compilation, where the backend compiles)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"step_ms": 1000 * statistics.median(times), "first_step_s": first, "steps_timed": steps}


# === Training steps of this project's models ===


def compiled_model(name: str):
    """The standard-size model, built and compiled by its training task (`Task.build_model`: the task's
    optimizer, loss and metrics, at the defaults of its config), and that config."""
    from training.tasks import get_task

    spec = STANDARD[name]
    task = get_task(spec["task"])
    config = task.options(
        model=name,
        depth=spec["depth"],
        base_filters=spec["base_filters"],
        batch_size=spec["batch"],
        patch_size=spec["patch"],
    )
    return task.build_model(config, 1), config


def random_batch(model, config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of one batch: for N2V, noise and concat(noise, mask of the configured masked
    fraction); for segmentation, noise and random classes. Values do not change a step's arithmetic."""
    x = rng.normal(size=(config.batch_size, config.patch_size, config.patch_size, 1)).astype(np.float32)
    if config.task == "denoise":
        mask = (rng.random(x.shape) < config.mask_fraction).astype(np.float32)
        return x, np.concatenate([x, mask], axis=-1)
    return x, rng.integers(0, model.output_shape[-1], size=x.shape).astype(np.int32)


def train(precision: str, warmup: int, steps: dict[str, int]) -> dict:
    import keras
    from keras import ops

    from zoo.flops import conv_flops

    keras.utils.disable_interactive_logging()
    keras.mixed_precision.set_global_policy(precision)
    on_gpu, device = backend_device()
    peak = matmul_peak(COMPUTE_DTYPE[precision], 8192 if on_gpu else 2048)
    result = {"precision": precision, "device": device, "on_gpu": on_gpu, "peak": peak, "models": {}}
    rng = np.random.default_rng(0)
    for name, count in steps.items():
        spec = STANDARD[name]
        try:
            model, config = compiled_model(name)
            x, y = (ops.convert_to_tensor(a) for a in random_batch(model, config, rng))  # on the device
            measured = timed_steps(lambda model=model, x=x, y=y: model.train_on_batch(x, y), warmup, count)
        except Exception as error:  # one model's failure (an import, a dtype) must not hide the other's
            result["models"][name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
            traceback.print_exc()
            continue
        flops = 3 * conv_flops(model, spec["patch"], spec["patch"]) * spec["batch"]
        seconds = measured["step_ms"] / 1000
        result["models"][name] = measured | {
            "batch": spec["batch"],
            "patch": spec["patch"],
            "patches_per_s": spec["batch"] / seconds,
            "tflops": flops / seconds / 1e12,
            "fraction_of_peak": flops / seconds / 1e12 / peak["tflops"],
            "jit_compile": model.jit_compile,
            "dtype_policy": model.dtype_policy.name,
            "optimizer": type(model.optimizer).__name__,
        }
    return result


# === Prediction through TorchScript ===


def prediction_rows(module, image: np.ndarray, device: str, precisions: list[str], repeats: int) -> list:
    """As `package_torch.speed`: one call on the whole image, in float32 and under autocast; the median
    of `repeats` calls after two warm-ups, the device synchronised around each; and the largest difference
    of each output from float32's, relative to the range of float32's output."""
    import torch

    x = torch.from_numpy(image[np.newaxis, ..., np.newaxis]).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows, reference = [], None
    for precision in precisions:
        dtype = getattr(torch, AUTOCAST_DTYPE[precision])
        output = []

        def call(dtype=dtype, output=output) -> None:
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                output[:] = [module(x)]
            sync()

        sync()
        seconds = timed_steps(call, 2, repeats)["step_ms"] / 1000
        y = output[0].float().cpu().numpy()
        reference = y if reference is None else reference
        spread = float(reference.max() - reference.min()) or 1.0
        rows.append(
            {
                "precision": precision,
                "seconds": seconds,
                "megapixels_per_s": image.size / seconds / 1e6,
                "max_relative_difference": float(np.abs(y - reference).max() / spread),
            }
        )
    return rows


def predict(side: int, repeats: int, models: list[str]) -> dict:
    """Each model made portable and traced by `python -m export.torchscript` as the package's TorchScript
    weights are (`export.package.build_description`), loaded onto the device, and timed on one
    side x side image. Autocast only on a GPU: on a CPU it is many times slower than float32."""
    import torch

    import zoo
    from export.portable import portable_model
    from zoo.flops import conv_flops

    on_gpu, device_name = backend_device()
    device = "cuda" if on_gpu else "cpu"
    precisions = list(AUTOCAST_DTYPE) if on_gpu else ["float32"]
    peaks = {AUTOCAST_DTYPE[p]: matmul_peak(AUTOCAST_DTYPE[p], 8192 if on_gpu else 2048) for p in precisions}
    result = {"side": side, "device": device_name, "peaks": peaks, "models": {}}
    image = np.random.default_rng(0).normal(size=(side, side)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        for name in models:
            spec = STANDARD[name]
            model = zoo.build_model(name, depth=spec["depth"], base_filters=spec["base_filters"])
            keras_file, traced = Path(scratch, f"{name}.keras"), Path(scratch, f"{name}.pt")
            portable_model(model).save(keras_file)
            start = time.perf_counter()
            subprocess.run(  # as `export.weights.write_torchscript`: traced on the CPU, in its own process
                [sys.executable, "-m", "export.torchscript", str(keras_file), str(traced)],
                cwd=ROOT,
                env=os.environ | {"KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""},
                check=True,
            )
            trace_seconds = time.perf_counter() - start
            module = torch.jit.load(str(traced), map_location=device).eval()
            flops = conv_flops(model, side, side)
            rows = prediction_rows(module, image, device, precisions, repeats)
            for row in rows:
                row["tflops"] = flops / row["seconds"] / 1e12
                row["fraction_of_peak"] = row["tflops"] / peaks[AUTOCAST_DTYPE[row["precision"]]]["tflops"]
            result["models"][name] = {"trace_seconds": trace_seconds, "rows": rows}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["train", "predict"])
    parser.add_argument("--result", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--precision", choices=list(COMPUTE_DTYPE), default="float32")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of N2V")
    parser.add_argument("--unet-steps", type=int, default=10, help="timed steps of the U-Net")
    parser.add_argument("--models", nargs="+", choices=list(STANDARD), default=list(STANDARD))
    parser.add_argument("--side", type=int, default=PREDICT_SIDE, help="predicted image side")
    parser.add_argument("--repeats", type=int, default=10, help="timed predictions of each precision")
    args = parser.parse_args()
    steps = {name: args.steps if name == "n2v" else args.unet_steps for name in args.models}
    if args.kind == "train":
        result = train(args.precision, args.warmup, steps)
    else:
        result = predict(args.side, args.repeats, args.models)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
