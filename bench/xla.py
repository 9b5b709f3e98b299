"""Does XLA compilation of the train step help? The N2V step (depth 2, 32 filters, batch 64, 64 x 64
patches, masked loss) with and without `jit_compile`, on fixed data, median of 15 steps after 3.

    python bench/xla.py [float32|mixed_bfloat16]
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras
import numpy as np
import tensorflow as tf

import zoo
from training.masking import MaskedLoss
from training.tasks.denoise import DenoiseConfig, masking


def main(precision: str = "float32") -> None:
    keras.mixed_precision.set_global_policy(precision)
    patches = tf.constant(np.random.default_rng(0).normal(size=(64, 64, 64, 1)).astype(np.float32))
    x, y = masking(DenoiseConfig())(patches, tf.constant(0, tf.int64))
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = zoo.build_model("n2v", depth=2, base_filters=32)
        model.compile(optimizer=keras.optimizers.Adam(4e-4), loss=MaskedLoss("mse"), jit_compile=jit)
        for _ in range(3):
            model.train_on_batch(x, y)
        times = []
        for _ in range(15):
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - start)
        print(f"{precision}, jit_compile={jit}: {1000 * statistics.median(times):.0f} ms a step")


if __name__ == "__main__":
    main(*sys.argv[1:])
