"""`zoo.layers.FusedBatchNormalization`: the numbers of Keras's `BatchNormalization`, by a faster path."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tensorflow_only

from zoo.layers import FusedBatchNormalization

pytestmark = tensorflow_only


def _pair(channels: int = 5, momentum: float = 0.9):
    """A fused and a plain batch norm with the same random gamma, beta and moving statistics."""
    rng = np.random.default_rng(0)
    fused = FusedBatchNormalization(momentum=momentum)
    plain = keras.layers.BatchNormalization(momentum=momentum)
    shape = (None, None, None, channels)
    fused.build(shape)
    plain.build(shape)
    weights = [
        rng.normal(1.0, 0.3, channels),  # gamma
        rng.normal(0.0, 0.5, channels),  # beta
        rng.normal(0.0, 1.0, channels),  # moving mean
        rng.uniform(0.5, 2.0, channels),  # moving variance
    ]
    fused.set_weights([w.astype("float32") for w in weights])
    plain.set_weights([w.astype("float32") for w in weights])
    return fused, plain


def _batch(shape=(4, 12, 10, 5), seed=1) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(3.0, 2.0, shape).astype("float32"))


def _assert_close(got, expected, relative: float) -> None:
    """`got` equals `expected` within `relative` times the largest magnitude of `expected`."""
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=relative * float(np.abs(expected).max()))


# Measured float32 agreement with Keras's own layer (oneDNN, 2 CPU cores): outputs 4e-7 of their range,
# moving statistics 2e-7, gradients 9e-6 (the gamma gradient sums 480 products). The tolerances are a
# small factor above; dropping the epsilon (a 1e-4 relative change at a batch variance near 4) or the
# n / (n - 1) correction of the variance (2e-3 at n = 480) is far outside them.
OUTPUT_TOLERANCE = 1e-5
STATISTICS_TOLERANCE = 2e-6
GRADIENT_TOLERANCE = 5e-5


def test_training_output_and_moving_statistics_match_keras_batch_norm():
    fused, plain = _pair()
    x = _batch()
    _assert_close(fused(x, training=True), plain(x, training=True), OUTPUT_TOLERANCE)
    np.testing.assert_allclose(
        fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=STATISTICS_TOLERANCE
    )
    np.testing.assert_allclose(
        fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=STATISTICS_TOLERANCE
    )
    # The moving statistics did move (towards the batch's mean 3 and variance 4).
    assert not np.allclose(fused.moving_mean.numpy(), _pair()[0].moving_mean.numpy())


def test_gradients_match_keras_batch_norm():
    fused, plain = _pair()
    x = _batch()
    upstream = _batch(seed=2)
    grads = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * upstream)
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for got, expected in zip(*grads, strict=True):
        _assert_close(got, expected, GRADIENT_TOLERANCE)


def test_inference_uses_the_moving_statistics_like_keras_batch_norm():
    fused, plain = _pair()
    x = _batch()
    # Inference runs the parent's code: the very numbers of Keras's layer.
    np.testing.assert_array_equal(fused(x, training=False), plain(x, training=False))


def test_bfloat16_activations_are_normalised_without_leaving_bfloat16():
    _, plain = _pair()
    mixed = FusedBatchNormalization(momentum=0.9, dtype="mixed_bfloat16")
    mixed.build((None, None, None, 5))
    mixed.set_weights(plain.get_weights())
    x = tf.cast(_batch(), "bfloat16")
    out = mixed(x, training=True)
    assert out.dtype == tf.bfloat16
    # Against Keras's float32 layer on the same (bfloat16) numbers, the only difference is rounding the
    # output to bfloat16: at most half a unit in the last place, 2^-8 of the value (unit roundoff).
    expected = plain(tf.cast(x, "float32"), training=True).numpy()
    bound = 2.0**-8 * np.abs(expected) + OUTPUT_TOLERANCE * np.abs(expected).max()
    assert (np.abs(tf.cast(out, "float32").numpy() - expected) <= bound).all()
    # The statistics are computed in float32 from the same numbers.
    np.testing.assert_allclose(
        mixed.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=STATISTICS_TOLERANCE
    )
    np.testing.assert_allclose(
        mixed.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=STATISTICS_TOLERANCE
    )


@pytest.mark.parametrize("training", [True, False])
def test_the_parent_code_handles_inputs_the_fused_kernel_does_not_take(training):
    # 2D inputs (a dense layer's output) fall back to Keras's own code.
    layer = FusedBatchNormalization()
    plain = keras.layers.BatchNormalization()
    x = _batch((6, 5))
    np.testing.assert_array_equal(layer(x, training=training), plain(x, training=training))


def test_saved_model_keeps_the_layer_and_its_statistics(tmp_path):
    inputs = keras.Input((None, None, 5))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(inputs))
    model(_batch(), training=True)  # move the statistics away from their initial values
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    x = _batch(seed=3)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
