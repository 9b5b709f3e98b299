"""Hardware set-up: numeric precision and the distribution strategy, chosen once before a model is built."""

from __future__ import annotations

import keras
import tensorflow as tf

from base.errors import UserInputError
from training.multiworker import cluster_task


def set_precision(precision: str) -> str:
    """Set Keras's global dtype policy; `auto` means mixed_float16 on a GPU and float32 elsewhere.

    Returns the policy name in force. Output layers are built with dtype float32, so predictions and
    losses stay full precision under a mixed policy.
    """
    if precision == "auto":
        precision = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return precision


def make_strategy(distribute: str, *, batch_size: int) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `distribute` (see `TrainingConfig.distribute`).

    `batch_size` is the global batch: each of N replicas gets batch_size / N, so the optimisation (and
    the learning rate that suits it) is the same as on one device. With `multiworker` the replicas are
    those of every machine of `TF_CONFIG` (see `training.multiworker`).
    """
    if distribute == "multiworker":
        cluster_task()  # a clear error for a missing or malformed TF_CONFIG, before TensorFlow reads it
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if distribute == "none" or (distribute == "auto" and len(gpus) < 2):
            return tf.distribute.get_strategy()
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    if batch_size % strategy.num_replicas_in_sync:
        raise UserInputError(
            f"batch_size {batch_size} is not divisible by the {strategy.num_replicas_in_sync} "
            "replicas of the distribution strategy"
        )
    return strategy
