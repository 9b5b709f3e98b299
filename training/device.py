"""The backend seam of training: what differs between TensorFlow, JAX and PyTorch for the devices a run
uses (GPUs, numeric precision, determinism, data parallelism), chosen once before a model is built.
Everything else in training is backend-neutral Keras and numpy.

Data parallelism by backend:
- TensorFlow: `tf.distribute` (MirroredStrategy on one machine, MultiWorkerMirroredStrategy over
  several, see `training.multiworker`).
- JAX: `keras.distribution.DataParallel` over every device, on one machine or, after
  `keras.distribution.initialize()`, on several (each process then feeds its share of every batch).
- PyTorch: one device. Keras's PyTorch backend has no data-parallel `fit`; a multi-device request is
  refused in one line that names the backends that have one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import keras

from base.errors import UserInputError


def backend() -> str:
    return keras.backend.backend()


def gpu_count() -> int:
    """GPUs this process can use, as the running backend sees them."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend() == "jax":
        import jax

        return sum(device.platform == "gpu" for device in jax.devices())
    if backend() == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def fit_input(batches: Iterable):
    """The training batches as `fit` takes them on this backend: a generator over the iterable
    `batches`, or on TensorFlow a `tf.data.Dataset` over it, which starts `batches` anew each time
    TensorFlow iterates it (as it may more than once under a `tf.distribute` strategy; `batches` gives the
    same stream each time)."""
    if backend() != "tensorflow":
        return (batch for batch in batches)  # Keras takes a generator, not any iterable
    import tensorflow as tf

    peek = iter(batches)  # a stream of its own, for the first batch's shapes only, then stopped
    first = next(peek)
    peek.close()
    signature = tuple(tf.TensorSpec(array.shape, tf.as_dtype(array.dtype)) for array in first)
    return tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=signature).prefetch(
        tf.data.AUTOTUNE
    )


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed` (Python, numpy, Keras and the backend), without loading TensorFlow
    on the other backends: Keras would import it, where installed, only to seed it. TensorFlow is hidden
    from that one look, which Keras remembers, so later ones do not load it either."""
    if backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    sys.modules["tensorflow"] = None  # an import of it now fails, and Keras records it as absent
    try:
        keras.utils.set_random_seed(seed)
    finally:
        del sys.modules["tensorflow"]


def set_precision(precision: str) -> str:
    """Set Keras's global dtype policy; `auto` means mixed_float16 on a GPU and float32 elsewhere.

    Returns the policy name in force. Output layers are built with dtype float32, so predictions and
    losses stay full precision under a mixed policy; under mixed_float16, `compile` scales the loss.
    """
    if precision == "auto":
        precision = "mixed_float16" if gpu_count() else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return precision


def make_deterministic() -> None:
    """Make the running backend's ops deterministic, so one seed gives one run.

    TensorFlow: op determinism. PyTorch: deterministic algorithms, warning (not failing) on the few GPU
    kernels that have none, and no cuDNN autotuning. JAX is deterministic on CPUs; on GPUs XLA's
    deterministic ops are asked for, which takes effect where JAX has not started its GPU backend yet
    (set `XLA_FLAGS=--xla_gpu_deterministic_ops=true` to be sure).
    """
    if backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend() == "torch":
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif backend() == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


_joined = False


def join_processes(distribute: str) -> None:
    """On JAX with `multiworker`, connect this process to the others (`keras.distribution.initialize`,
    which reads KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and _PROCESS_ID; see docs/reference.md).
    JAX allows it only before its first computation, so the core calls this first. Elsewhere nothing to do:
    TensorFlow connects when its strategy is made."""
    global _joined
    if distribute == "multiworker" and backend() == "jax" and not _joined:
        keras.distribution.initialize()
        _joined = True


@dataclass
class Devices:
    """The devices a run trains on: how many replicas share each global batch, the scope to build the
    model in, the scope to train in, and this process's share of each batch (index, count) where several
    processes feed one global batch (JAX on several machines)."""

    replicas: int
    model_scope: Callable[[], AbstractContextManager]
    training_scope: Callable[[], AbstractContextManager]
    process_share: tuple[int, int] = (0, 1)
    strategy: object = None  # TensorFlow's tf.distribute strategy, for the multi-worker loop


def make_devices(distribute: str, *, batch_size: int) -> Devices:
    """The `Devices` for `distribute` (see `TrainingConfig.distribute`) on the running backend.

    `batch_size` is the global batch: each of N replicas gets batch_size / N, so the optimisation (and
    the learning rate that suits it) is the same as on one device.
    """
    if backend() == "tensorflow":
        devices = _tensorflow_devices(distribute)
    elif backend() == "jax":
        devices = _jax_devices(distribute)
    else:
        if distribute in ("mirrored", "multiworker"):
            raise UserInputError(
                f"--distribute {distribute} is not supported on the {backend()} backend (Keras has no "
                "data-parallel fit there); use --backend jax or --backend tensorflow"
            )
        devices = Devices(1, nullcontext, nullcontext)
    if batch_size % devices.replicas:
        raise UserInputError(
            f"batch_size {batch_size} is not divisible by the {devices.replicas} replicas of the "
            "distribution strategy"
        )
    return devices


def _tensorflow_devices(distribute: str) -> Devices:
    import tensorflow as tf

    from training.multiworker import cluster_task

    if distribute == "multiworker":
        cluster_task()  # a clear error for a missing or malformed TF_CONFIG, before TensorFlow reads it
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if distribute == "none" or (distribute == "auto" and len(gpus) < 2):
            strategy = tf.distribute.get_strategy()
        else:
            devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices=devices)
    return Devices(strategy.num_replicas_in_sync, strategy.scope, nullcontext, strategy=strategy)


def _jax_devices(distribute: str) -> Devices:
    import jax

    devices = keras.distribution.list_devices()
    gpus = [d for d in devices if d.lower().startswith(("gpu", "cuda"))]
    if distribute == "none" or (distribute == "auto" and len(gpus) < 2):
        return Devices(1, nullcontext, nullcontext)
    # Each process feeds its own share of every batch (`training.core.process_share`), so Keras must not
    # shard the data again.
    parallel = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    return Devices(
        len(devices),
        parallel.scope,
        parallel.scope,
        process_share=(jax.process_index(), jax.process_count()),
    )
