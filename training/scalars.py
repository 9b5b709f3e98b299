"""TensorBoard logs of a run's epoch scalars (losses, metrics, learning rate, step time) on every backend.

Keras's own `TensorBoard` callback writes through `tf.summary`, which needs TensorFlow. This callback
writes the same event files (`train/` and `validation/`, one point per epoch) with the `tensorboard`
package's writer alone. That writer would import TensorFlow where it is installed; registering the
`tensorboard.compat.notf` marker (the switch TensorBoard's own TensorFlow-free build uses) keeps it on its
built-in file layer, so the JAX and PyTorch paths never load TensorFlow.
"""

from __future__ import annotations

import numbers
import sys
import time
import types
from pathlib import Path

import keras

from base.errors import UserInputError


def _event_writer(folder: Path):
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    return EventFileWriter(str(folder))


class ScalarLog(keras.callbacks.Callback):
    """Write each epoch's numeric logs to `log_dir/train` (and `val_*` ones to `log_dir/validation`,
    without the prefix, so TensorBoard draws training and validation on one chart), with the learning
    rate. A full or read-only disk is a `UserInputError` naming the folder."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict = {}

    def _write(self, kind: str, epoch: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if kind not in self._writers:
            self._writers[kind] = _event_writer(self.log_dir / kind)
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=f"epoch_{k}", simple_value=v) for k, v in values.items()]
        )
        self._writers[kind].add_event(event_pb2.Event(step=epoch, wall_time=time.time(), summary=summary))
        self._writers[kind].flush()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, numbers.Real)}
        values["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        try:
            self._write("train", epoch, {k: v for k, v in values.items() if not k.startswith("val_")})
            validation = {k[4:]: v for k, v in values.items() if k.startswith("val_")}
            if validation:
                self._write("validation", epoch, validation)
        except OSError as error:
            reason = error.strerror or str(error)
            raise UserInputError(f"{self.log_dir}: cannot write the TensorBoard logs ({reason})") from None

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            try:
                writer.close()
            except OSError:
                pass  # reported at the epoch end that could not write
        self._writers = {}
