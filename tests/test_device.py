"""`training.device` on TensorFlow: the precision policy (`set_precision`) and the distribution strategy
(`make_devices`). JAX and PyTorch: tests/test_backends.py.

The GPU branches run on any machine: the devices TensorFlow lists are replaced by fakes, and so is
`tf.distribute.MirroredStrategy` where fake devices would reach it (it records the devices it was given).
The CPU branches run for real. Multi-replica training itself: tests/test_distribute.py.
"""

from __future__ import annotations

import keras
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip(
        "TensorFlow's devices and strategies (this run is on another backend)", allow_module_level=True
    )

import tensorflow as tf

from base.errors import UserInputError
from training.device import make_devices, set_precision


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
