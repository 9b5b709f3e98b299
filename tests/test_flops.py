"""The FLOP count of `zoo.flops` against hand counts and TensorFlow's own graph profiler."""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf
from conftest import tensorflow_only

import zoo
from zoo.flops import conv_flops


def _sequential(*layers, channels=1):
    inputs = keras.Input((None, None, channels))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def test_hand_counted_layers():
    # 3x3 conv 2->4 on 8x8: 2 * 64 px * 9 * 2 * 4; then 2x2 pool; 1x1 conv 4->3 on 4x4: 2 * 16 * 4 * 3;
    # then a 2x2 stride-2 transposed conv 3->5 on its 4x4 input: 2 * 16 * 4 * 3 * 5.
    model = _sequential(
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(3, 1),
        keras.layers.Conv2DTranspose(5, 2, strides=2, padding="same"),
        channels=2,
    )
    assert conv_flops(model, 8, 8) == 2 * 64 * 9 * 2 * 4 + 2 * 16 * 4 * 3 + 2 * 16 * 4 * 3 * 5


@tensorflow_only
@pytest.mark.parametrize(
    ("name", "options", "side"),
    [("n2v", {"depth": 2, "base_filters": 32}, 64), ("unet", {"depth": 4, "base_filters": 32}, 256)],
)
def test_standard_models_agree_with_tensorflows_profiler(name, options, side):
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    model = zoo.build_model(name, **options)
    spec = tf.TensorSpec((1, side, side, 1), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    profiler_options = ProfileOptionBuilder.float_operation()
    profiler_options["output"] = "none"
    total = profile(graph, options=profiler_options).total_float_ops
    ours = conv_flops(model, side, side)
    # The profiler also counts bias adds and batch norm, which the convolution count leaves out.
    assert 0.99 * total <= ours <= total
