"""Training on several machines: `--distribute multiworker`, TensorFlow's MultiWorkerMirroredStrategy.

Every machine (a *task* of the cluster) runs the same command with its own `TF_CONFIG`, the JSON that
names all tasks and this one, for example on the first of two machines:

    TF_CONFIG='{"cluster": {"worker": ["node1:12345", "node2:12345"]},
                "task": {"type": "worker", "index": 0}}'

The chief (the task of type `chief`, else worker 0) keeps the run folder, evaluates and exports; the other
workers train in a temporary folder that is removed at the end. Each step trains on one global batch of
`batch_size` patches: every task draws the same stream of batches and keeps its share of each
(`AutoShardPolicy.DATA`), so a run follows the same loss curve as one device on the same batches.

Keras 3's `Model.fit` does not run under this strategy (keras-team/keras#20585: it reduces the first
batch and the step outputs with calls that fail across workers), so `fit_multiworker` is the epoch loop
of `Model.fit` written with the strategy's own API: `strategy.run(model.train_step)` for each step, the
metrics read back across all replicas at the end of each epoch, and the same Keras callbacks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
import numpy as np

from base.errors import UserInputError

TASK_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in the cluster of `TF_CONFIG`."""

    type: str
    index: int
    tasks: int
    cluster_has_chief: bool

    @property
    def chief(self) -> bool:
        """The task that keeps the run folder: the chief, or worker 0 in a cluster without one."""
        return self.type == "chief" or (self.index == 0 and not self.cluster_has_chief)


def cluster_task(environ: dict[str, str] | None = None) -> ClusterTask:
    """This task, read from `TF_CONFIG`; a `UserInputError` where it is missing or malformed."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not raw:
        raise UserInputError(
            "--distribute multiworker needs TF_CONFIG: the JSON naming the cluster's tasks and this one "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}})'
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        addresses = {name: list(cluster[name]) for name in cluster}
    except (ValueError, TypeError, KeyError) as error:
        raise UserInputError(f"TF_CONFIG: not a cluster and task description ({error!r})") from None
    if set(addresses) - set(TASK_TYPES) or kind not in TASK_TYPES:
        raise UserInputError(f"TF_CONFIG: only tasks of type {' and '.join(TASK_TYPES)} are supported")
    if len(addresses.get("chief", [])) > 1:
        raise UserInputError("TF_CONFIG: a cluster has at most one chief")
    if not 0 <= index < len(addresses.get(kind, [])):
        raise UserInputError(f"TF_CONFIG: task {kind} {index} is not in the cluster {addresses}")
    return ClusterTask(kind, index, sum(map(len, addresses.values())), "chief" in addresses)


def is_chief(distribute: str) -> bool:
    """Whether this process keeps the run folder: always, unless it is a multi-worker task other than
    the chief (on JAX: a process other than number 0)."""
    if distribute != "multiworker":
        return True
    if keras.backend.backend() == "jax":
        return os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0") == "0"
    return cluster_task().chief


def _sharded(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def fit_multiworker(
    model: keras.Model,
    train_data,
    val_data: tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int,
    epochs: int,
    initial_epoch: int,
    steps_per_epoch: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: int,
) -> keras.callbacks.History:
    """`model.fit(train_data, validation_data=val_data, ...)` for a model built in a
    MultiWorkerMirroredStrategy's scope; `train_data` yields global batches, `val_data` is batched by
    `batch_size`. Returns the History, like `fit`. Every worker draws the same stream of global batches
    (`training.device.as_dataset`) and keeps its share (`AutoShardPolicy.DATA`)."""
    import tensorflow as tf

    strategy = model.distribute_strategy
    train = strategy.experimental_distribute_dataset(_sharded(train_data))
    val = strategy.experimental_distribute_dataset(
        _sharded(tf.data.Dataset.from_tensor_slices(val_data).batch(batch_size))
    )
    with strategy.scope():
        # What Model.fit builds before its first step (optimizer and metric variables), from the shapes
        # alone: variables may not be created inside the distributed step.
        model._symbolic_build(data_batch=train_data.element_spec)

    @tf.function
    def train_step(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    @tf.function
    def test_step(batch):
        strategy.run(model.test_step, args=(batch,))

    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
        model=model,
    )
    model.stop_training = False
    iterator = iter(train)
    callback_list.on_train_begin()
    logs = None
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            train_step(iterator)
            callback_list.on_train_batch_end(step)
        # Read outside the replicas, each metric's totals and counts are summed over all of them.
        logs = {name: float(value) for name, value in model.get_metrics_result().items()}
        model.reset_metrics()
        callback_list.on_test_begin()
        for step, batch in enumerate(val):
            callback_list.on_test_batch_begin(step)
            test_step(batch)
            callback_list.on_test_batch_end(step)
        val_logs = {f"val_{name}": float(value) for name, value in model.get_metrics_result().items()}
        callback_list.on_test_end(val_logs)
        logs |= val_logs
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs)
    return model.history
