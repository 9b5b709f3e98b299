"""Every Keras backend: training without TensorFlow, runs that move between backends, data parallelism on
JAX, and the choice of backend (`base.backend`).

Each run here is a child process with its own backend, since a process has one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from base.backend import has_nvidia_gpu, resolve_backend, select_backend
from base.errors import UserInputError

BACKENDS = ("tensorflow", "jax", "torch")
TINY_DENOISE = (
    "--epochs 2 --steps-per-epoch 3 --patch-size 32 --batch-size 4 --depth 1 --base-filters 4 "
    "--val-patches 4 --tile-size 64".split()
)
TINY_SEGMENT = (
    "--epochs 2 --steps-per-epoch 2 --patch-size 32 --batch-size 2 --depth 1 --base-filters 4 "
    "--val-patches 4 --tile-size 64".split()
)

# Run as sitecustomize in every child process (exports spawn their own): TensorFlow cannot be imported,
# and `importlib.util.find_spec` reports it absent, as on a machine without it.
WITHOUT_TENSORFLOW = 'import sys\nsys.modules["tensorflow"] = None\n'


def _env(tmp_path: Path, *, without_tensorflow: bool = False, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | extra
    if without_tensorflow:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(WITHOUT_TENSORFLOW)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def _run(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [float(line.split(",")[header.index("loss")]) for line in lines[1:]]


# === Training without TensorFlow ===


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_denoising_trains_and_predicts_where_tensorflow_cannot_be_imported(backend, tmp_path):
    env = _env(tmp_path, without_tensorflow=True)
    _run(["-m", "training.denoise", *TINY_DENOISE, "--backend", backend, "--no-export",
          "--out-dir", str(tmp_path), "--run-name", "run"], env)  # fmt: skip
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "config.json").read_text())["backend"] == backend
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["images"][0]["denoised"]["psnr"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("task", ["segment", "denoise"])
def test_each_task_trains_and_exports_a_checked_package_without_tensorflow(
    backend, task, tmp_path, tiny_segment_data
):
    env = _env(tmp_path, without_tensorflow=True)
    flags = TINY_DENOISE if task == "denoise" else [*TINY_SEGMENT, "--data", str(tiny_segment_data)]
    result = _run(["-m", f"training.{task}", *flags, "--backend", backend,
                   "--out-dir", str(tmp_path), "--run-name", "run"], env)  # fmt: skip
    assert "all checks passed" in result.stdout
    assert (tmp_path / "run" / "package.zip").is_file()


@pytest.mark.slow
def test_a_3d_run_trains_on_pytorch_and_resumes_on_jax_without_tensorflow_to_a_checked_package(tmp_path):
    """Volumes on the backends without TensorFlow: the ONNX weights come from PyTorch's converter."""
    env = _env(tmp_path, without_tensorflow=True)
    flags = [*TINY_SEGMENT, "--ndim", "3", "--synthetic-images", "4", "--patch-depth", "8"]
    _run(["-m", "training.segment", *flags, "--backend", "torch", "--no-export",
          "--out-dir", str(tmp_path), "--run-name", "vol"], env)  # fmt: skip
    result = _run(["-m", "training.segment", "--resume", str(tmp_path / "vol"), "--backend", "jax",
                   "--epochs", "3", "--export"], env)  # fmt: skip
    assert "all checks passed" in result.stdout
    assert json.loads((tmp_path / "vol" / "config.json").read_text())["ndim"] == 3
    assert len(_losses(tmp_path / "vol")) == 3


def test_jax_training_does_not_load_tensorflow_even_where_it_is_installed(tmp_path):
    script = (
        "import sys\n"
        "from training.denoise import main\n"
        f"code = main({[*TINY_DENOISE, '--backend', 'jax', '--no-export', '--out-dir', str(tmp_path)]!r})\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
        "print('loaded:', loaded[:3])\n"
        "sys.exit(code or bool(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "loaded: []" in result.stdout


@pytest.mark.slow
def test_every_backend_trains_on_the_same_patches_and_masks(tmp_path):
    """The denoising task's first training batches and its validation masks, hashed in a process of each
    backend: numpy draws them, so a seed gives the same ones everywhere."""
    script = (
        "import hashlib, itertools, sys\n"
        "from pathlib import Path\n"
        "from training.tasks import get_task\n"
        "task = get_task('denoise')\n"
        f"config = task.options(**{{'patch_size': 32, 'batch_size': 4, 'out_dir': {str(tmp_path)!r}}})\n"
        "data = task.load_data(config, resume_dir=None, scratch=Path(sys.argv[1]))\n"
        "batches = task.training_data(config, data, Path(sys.argv[1]), first_epoch=1)\n"
        "digest = hashlib.sha256()\n"
        "for x, y in [*itertools.islice(iter(batches.train), 3), batches.val]:\n"
        "    digest.update(x.tobytes()); digest.update(y.tobytes())\n"
        "batches.train.close()\n"
        "print('digest', digest.hexdigest())\n"
    )
    digests = set()
    for backend in BACKENDS:
        scratch = tmp_path / backend
        scratch.mkdir()
        result = _run(["-c", script, str(scratch)], _env(tmp_path, KERAS_BACKEND=backend))
        digests.add(next(line for line in result.stdout.splitlines() if line.startswith("digest")))
    assert len(digests) == 1


# === One run, several backends ===


@pytest.mark.slow
def test_a_run_moves_between_backends_with_predictions_within_1e_4(tmp_path):
    """Trained on TensorFlow, predicted on every backend, resumed on JAX, then on PyTorch."""
    run_dir = tmp_path / "run"
    _run(["-m", "training.denoise", *TINY_DENOISE, "--backend", "tensorflow", "--no-export",
          "--out-dir", str(tmp_path), "--run-name", "run"], _env(tmp_path))  # fmt: skip
    image = tmp_path / "noisy.tif"
    tifffile.imwrite(image, np.random.default_rng(0).normal(100, 20, (70, 90)).astype(np.float32))
    outputs = {}
    for backend in BACKENDS:
        out = tmp_path / f"predicted-{backend}"
        command = ["-m", "training.predict", str(run_dir), str(image), "--out", str(out)]
        _run([*command, "--precision", "float32"], _env(tmp_path, KERAS_BACKEND=backend))
        outputs[backend] = tifffile.imread(out / "noisy_denoised.tif")
    scale = float(np.abs(outputs["tensorflow"]).max())
    for backend in ("jax", "torch"):
        np.testing.assert_allclose(outputs[backend], outputs["tensorflow"], rtol=0, atol=1e-4 * scale)

    for backend, epochs in (("jax", 3), ("torch", 4)):
        _run(["-m", "training.denoise", "--resume", str(run_dir), "--backend", backend,
              "--epochs", str(epochs), "--no-export"], _env(tmp_path))  # fmt: skip
        assert json.loads((run_dir / "metrics.json").read_text())["backend"] == backend
    assert len(_losses(run_dir)) == 4
    assert all(np.isfinite(_losses(run_dir)))


# === Several devices on JAX ===


@pytest.mark.slow
def test_jax_data_parallel_over_two_cpu_devices_follows_the_one_device_run(tmp_path):
    env = _env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    for name, distribute in (("one", "none"), ("two", "mirrored")):
        flags = ["--backend", "jax", "--distribute", distribute, "--no-export"]
        result = _run(["-m", "training.denoise", *TINY_DENOISE, *flags,
                       "--out-dir", str(tmp_path), "--run-name", name], env)  # fmt: skip
        assert f"{1 if name == 'one' else 2} replica(s)" in result.stdout
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-4)


@pytest.mark.slow
def test_jax_on_two_processes_follows_the_one_process_run_and_only_process_0_writes(tmp_path):
    """Two processes on loopback stand for two machines (`keras.distribution.initialize`)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    flags = [*TINY_DENOISE, "--backend", "jax", "--no-export", "--out-dir", str(tmp_path)]
    _run(["-m", "training.denoise", *flags, "--distribute", "none", "--run-name", "one"], _env(tmp_path))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "training.denoise",
                *flags,
                "--distribute",
                "multiworker",
                "--run-name",
                "two",
            ],
            env=_env(
                tmp_path,
                KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
                KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                KERAS_DISTRIBUTION_PROCESS_ID=str(index),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in (0, 1)
    ]
    logs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "2 replica(s)" in logs[0]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]  # the worker's folder is gone


def test_torch_refuses_several_devices_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training.denoise", *TINY_DENOISE, "--backend", "torch",
         "--distribute", "mirrored", "--out-dir", str(tmp_path)],
        env=_env(tmp_path), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not supported on the torch backend" in errors[0]
    assert not any(tmp_path.iterdir())


# === Choosing the backend ===


def test_auto_keeps_the_backend_keras_runs_on():
    import keras

    assert resolve_backend("auto") == keras.backend.backend()
    assert select_backend("auto") == keras.backend.backend()


def test_another_backend_than_the_loaded_one_is_refused_in_one_line():
    import keras

    other = next(b for b in BACKENDS if b != keras.backend.backend())
    with pytest.raises(UserInputError, match=f"cannot switch to {other}") as error:
        select_backend(other)
    assert "\n" not in str(error.value)


def test_unknown_backend_is_refused():
    with pytest.raises(UserInputError, match="unknown backend 'numpy'"):
        resolve_backend("numpy")


def test_a_backend_that_is_not_installed_is_refused_with_its_install_command(tmp_path):
    script = "from base.backend import select_backend\nselect_backend('tensorflow')\n"
    env = _env(tmp_path, without_tensorflow=True)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert (
        "backend tensorflow is not installed (pip install 'bioimage-keras-zoo[tensorflow]')" in result.stderr
    )


@pytest.mark.skipif(has_nvidia_gpu(), reason="the CPU order is tested; this machine has a GPU")
def test_auto_without_a_standing_choice_takes_the_first_installed_of_the_cpu_order(tmp_path):
    script = "from base.backend import resolve_backend\nprint(resolve_backend('auto'))\n"
    for blocked, expected in (("", "tensorflow"), ("tensorflow", "jax")):
        env = _env(tmp_path, without_tensorflow=blocked == "tensorflow")
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        assert result.stdout.strip() == expected, result.stderr


# === Precision on the backend of this run (CI runs the fast tests on each) ===


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_finite_losses_and_keeps_float32_weights(precision, tmp_path):
    import keras

    from training.denoise import main

    previous = keras.config.dtype_policy()
    try:
        code = main([*TINY_DENOISE, "--precision", precision, "--no-export",
                     "--out-dir", str(tmp_path), "--run-name", "run"])  # fmt: skip
    finally:
        keras.config.set_dtype_policy(previous)
    assert code == 0
    assert all(np.isfinite(_losses(tmp_path / "run")))
    model = keras.models.load_model(tmp_path / "run" / "last.keras", compile=False)
    assert {w.dtype for w in model.weights} == {"float32"}
    assert model.layers[1].dtype_policy.name == precision  # the first layer after the input computes so
    assert model.outputs[0].dtype == "float32"
