"""`training.device` on TensorFlow: the precision policy (`set_precision`), the distribution strategy
(`make_devices`), the GPU count, the training input (`fit_input`), seeding, determinism and joining
processes (the JAX branches of the last four with `backend()` patched, or in a JAX process). Training on
JAX and PyTorch: tests/test_backends.py.

The GPU branches run on any machine: the devices TensorFlow lists are replaced by fakes, and so is
`tf.distribute.MirroredStrategy` where fake devices would reach it (it records the devices it was given).
The CPU branches run for real. Multi-replica training itself: tests/test_distribute.py.
"""

from __future__ import annotations

import inspect
import os
import random
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip(
        "TensorFlow's devices and strategies (this run is on another backend)", allow_module_level=True
    )

import tensorflow as tf

from base.errors import UserInputError
from training import device
from training.device import make_devices, set_precision

REPO = Path(__file__).parents[1]


def make_strategy(distribute: str, *, batch_size: int):
    return make_devices(distribute, batch_size=batch_size).strategy


@pytest.fixture(autouse=True)
def _keep_the_global_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def _fake_devices(kind: str, count: int) -> list:
    return [tf.config.LogicalDevice(name=f"/device:{kind}:{i}", device_type=kind) for i in range(count)]


@pytest.fixture
def gpus(monkeypatch):
    """`gpus(n)`: TensorFlow lists n GPUs (physical and logical), the real devices of other kinds."""
    physical, logical = tf.config.list_physical_devices, tf.config.list_logical_devices

    def pretend(count: int) -> None:
        def fake(real):
            return lambda kind=None: _fake_devices("GPU", count) if kind == "GPU" else real(kind)

        monkeypatch.setattr(tf.config, "list_physical_devices", fake(physical))
        monkeypatch.setattr(tf.config, "list_logical_devices", fake(logical))

    return pretend


class _RecordingMirrored:
    """Stands in for `tf.distribute.MirroredStrategy`: one replica per device it is given."""

    def __init__(self, devices):
        self.devices = list(devices)
        self.num_replicas_in_sync = len(self.devices)

    def scope(self):
        raise AssertionError("not used by these tests")


@pytest.fixture
def mirrored(monkeypatch) -> type[_RecordingMirrored]:
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", _RecordingMirrored)
    return _RecordingMirrored


# === Precision ===


def _layer_dtypes() -> tuple[str, str]:
    """Compute and variable dtype of a layer built now, under the global policy."""
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    return layer.compute_dtype, layer.kernel.dtype


@pytest.mark.parametrize(("count", "expected"), [(0, "float32"), (1, "mixed_float16"), (2, "mixed_float16")])
def test_auto_precision_is_mixed_float16_on_a_gpu_and_float32_elsewhere(gpus, count, expected):
    gpus(count)
    keras.config.set_dtype_policy("mixed_bfloat16")  # neither answer: the call must set the policy
    assert set_precision("auto") == expected
    assert keras.config.dtype_policy().name == expected
    assert _layer_dtypes() == (("float16" if count else "float32"), "float32")


@pytest.mark.parametrize(
    ("precision", "compute"),
    [("float32", "float32"), ("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")],
)
@pytest.mark.parametrize("count", [0, 1])
def test_an_explicit_precision_is_set_whatever_the_devices(gpus, precision, compute, count):
    gpus(count)
    keras.config.set_dtype_policy("mixed_bfloat16" if precision != "mixed_bfloat16" else "float32")
    assert set_precision(precision) == precision
    assert keras.config.dtype_policy().name == precision
    # Mixed: computations in half precision, the weights kept in float32.
    assert _layer_dtypes() == (compute, "float32")


# === Distribution strategy ===


@pytest.mark.parametrize("count", [0, 2])
def test_none_is_the_default_strategy_whatever_the_devices(gpus, mirrored, count):
    gpus(count)
    strategy = make_strategy("none", batch_size=7)
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


_REAL_GPUS = len(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(_REAL_GPUS >= 2, reason="this machine has several GPUs")
def test_auto_on_fewer_than_two_real_gpus_is_the_default_strategy():
    strategy = make_strategy("auto", batch_size=7)
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1


@pytest.mark.parametrize("count", [0, 1])
def test_auto_with_fewer_than_two_gpus_is_the_default_strategy(gpus, mirrored, count):
    gpus(count)
    strategy = make_strategy("auto", batch_size=7)
    assert strategy is tf.distribute.get_strategy()


def test_auto_with_several_gpus_mirrors_over_all_of_them(gpus, mirrored):
    gpus(3)
    strategy = make_strategy("auto", batch_size=6)
    assert isinstance(strategy, mirrored)
    assert strategy.devices == ["/device:GPU:0", "/device:GPU:1", "/device:GPU:2"]


@pytest.mark.parametrize("count", [1, 2])
def test_mirrored_uses_the_gpus_and_never_the_cpu_beside_them(gpus, mirrored, count):
    gpus(count)
    strategy = make_strategy("mirrored", batch_size=2)
    assert strategy.devices == [f"/device:GPU:{i}" for i in range(count)]


@pytest.mark.skipif(_REAL_GPUS > 0, reason="this machine has a GPU")
def test_mirrored_without_a_gpu_mirrors_over_the_logical_cpus_for_real():
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    strategy = make_strategy("mirrored", batch_size=len(cpus) * 3)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == len(cpus)
    workers = strategy.extended.worker_devices
    assert len(workers) == len(cpus) and all(w.endswith(c) for w, c in zip(workers, cpus, strict=True))
    # The strategy works: a variable made in its scope is mirrored on each device.
    with strategy.scope():
        variable = tf.Variable(1.0)
    assert float(strategy.reduce("SUM", strategy.run(lambda: variable * 2.0), axis=None)) == 2.0 * len(cpus)


def test_mirrored_without_a_gpu_lists_the_logical_cpus(monkeypatch, mirrored):
    logical = tf.config.list_logical_devices
    monkeypatch.setattr(
        tf.config,
        "list_logical_devices",
        lambda kind=None: (
            [] if kind == "GPU" else _fake_devices("CPU", 2) if kind == "CPU" else logical(kind)
        ),
    )
    strategy = make_strategy("mirrored", batch_size=4)
    assert strategy.devices == ["/device:CPU:0", "/device:CPU:1"]


@pytest.mark.parametrize(("replicas", "batch_size"), [(2, 3), (3, 4), (4, 2), (2, 1)])
def test_a_batch_not_divisible_by_the_replicas_is_refused(gpus, mirrored, replicas, batch_size):
    gpus(replicas)
    with pytest.raises(UserInputError) as caught:
        make_strategy("mirrored", batch_size=batch_size)
    assert str(caught.value) == (
        f"batch_size {batch_size} is not divisible by the {replicas} replicas of the distribution strategy"
    )


@pytest.mark.parametrize(("replicas", "batch_size"), [(2, 2), (2, 8), (3, 6), (4, 12)])
def test_a_batch_divisible_by_the_replicas_is_accepted(gpus, mirrored, replicas, batch_size):
    gpus(replicas)
    assert make_strategy("auto", batch_size=batch_size).num_replicas_in_sync == replicas


# === GPU count, training input, seeds, determinism, joining processes ===


@pytest.mark.parametrize("count", [0, 1, 3])
def test_gpu_count_is_what_tensorflow_lists(gpus, count):
    """On TensorFlow the count is the physical GPUs it lists (fakes here), whatever they are."""
    gpus(count)
    assert device.gpu_count() == count


class _Batches:
    """Three (image, target) batches; counts the streams started on it (its `__iter__` calls)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.items = [
            (rng.random((2, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, (2, 8, 8)).astype(np.int32))
            for _ in range(3)
        ]
        self.streams = 0

    def __iter__(self):
        self.streams += 1
        yield from self.items  # a generator, as the training batches are


def _assert_same_batches(got, expected) -> None:
    got = [tuple(np.asarray(array) for array in batch) for batch in got]
    assert len(got) == len(expected)
    for got_batch, expected_batch in zip(got, expected, strict=True):
        for a, b in zip(got_batch, expected_batch, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_fit_input_on_tensorflow_is_a_dataset_that_starts_the_batches_anew_each_time():
    """A tf.data.Dataset typed from the first batch; each iteration (as a strategy may do more than once)
    is a new stream over `batches` giving every batch, in order; the shape peek starts one stream only."""
    batches = _Batches()
    dataset = device.fit_input(batches)
    assert isinstance(dataset, tf.data.Dataset)
    assert batches.streams == 1  # the peek at the first batch
    spec = dataset.element_spec
    assert [(s.shape.as_list(), s.dtype) for s in spec] == [([2, 8, 8, 1], tf.float32), ([2, 8, 8], tf.int32)]
    _assert_same_batches(dataset, batches.items)
    _assert_same_batches(dataset, batches.items)
    assert batches.streams == 3


def test_fit_input_on_the_other_backends_is_a_generator_over_the_batches(monkeypatch):
    """JAX and PyTorch get a plain generator (Keras takes no other iterable), no TensorFlow dataset."""
    monkeypatch.setattr(device, "backend", lambda: "jax")
    batches = _Batches()
    stream = device.fit_input(batches)
    assert inspect.isgenerator(stream)
    _assert_same_batches(stream, batches.items)


def test_one_seed_gives_the_same_python_numpy_and_keras_draws():
    """`set_random_seed` seeds Python's, numpy's and Keras's generators; another seed draws otherwise."""

    def draws(seed: int) -> tuple:
        device.set_random_seed(seed)
        legacy = np.random.rand()  # noqa: NPY002  (the global generator is what it seeds)
        return random.random(), legacy, keras.ops.convert_to_numpy(keras.random.normal((3,)))

    first, again, other = draws(4), draws(4), draws(5)
    assert first[:2] == again[:2] and first[:2] != other[:2]
    np.testing.assert_array_equal(first[2], again[2])
    assert not np.array_equal(first[2], other[2])


def test_seeding_on_another_backend_does_not_load_tensorflow():
    """On JAX, `set_random_seed` seeds numpy without importing TensorFlow (a fresh process: here it is
    loaded already), and a later seeding does not load it either."""
    script = (
        "import sys, numpy as np\n"
        "from training.device import backend, set_random_seed\n"
        "set_random_seed(3); a = np.random.rand()\n"
        "set_random_seed(3); b = np.random.rand()\n"
        "assert backend() == 'jax' and a == b, (backend(), a, b)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr[-2000:]


@pytest.fixture
def op_determinism():
    """TensorFlow's op determinism, off during the test and as it was afterwards."""
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield tf_config.is_op_determinism_enabled
    (tf_config.enable_op_determinism if was else tf_config.disable_op_determinism)()


def test_make_deterministic_turns_on_tensorflow_op_determinism(op_determinism):
    """On TensorFlow: op determinism goes from off to on."""
    assert not op_determinism()
    device.make_deterministic()
    assert op_determinism()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "--xla_gpu_deterministic_ops=true"),
        (
            "--xla_force_host_platform_device_count=2",
            "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true",
        ),
        ("--xla_gpu_deterministic_ops=false", "--xla_gpu_deterministic_ops=false"),  # the user's choice
    ],
)
def test_make_deterministic_on_jax_asks_xla_for_deterministic_ops_keeping_other_flags(
    monkeypatch, op_determinism, before, after
):
    """On JAX: XLA_FLAGS gains --xla_gpu_deterministic_ops=true once, beside the flags already set;
    TensorFlow's switch is left alone."""
    monkeypatch.setattr(device, "backend", lambda: "jax")
    if before is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", before)
    device.make_deterministic()
    device.make_deterministic()
    assert os.environ["XLA_FLAGS"] == after
    assert not op_determinism()


@pytest.fixture
def initialize_calls(monkeypatch) -> list[int]:
    """Records the calls of `keras.distribution.initialize` (none really made); `_joined` starts False."""
    calls = []
    monkeypatch.setattr(keras.distribution, "initialize", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(device, "_joined", False)
    return calls


def test_joining_on_jax_multiworker_initializes_the_distribution_once(monkeypatch, initialize_calls):
    """JAX with multiworker: `keras.distribution.initialize` once, however often the core asks."""
    monkeypatch.setattr(device, "backend", lambda: "jax")
    device.join_processes("multiworker")
    device.join_processes("multiworker")
    assert initialize_calls == [1]


@pytest.mark.parametrize(
    ("backend", "distribute"),
    [("jax", "none"), ("jax", "mirrored"), ("jax", "auto"), ("tensorflow", "multiworker")],
)
def test_joining_is_nothing_elsewhere(monkeypatch, initialize_calls, backend, distribute):
    """Other distributions, or TensorFlow (which connects when its strategy is made): no initialize."""
    monkeypatch.setattr(device, "backend", lambda: backend)
    device.join_processes(distribute)
    assert initialize_calls == []
