"""`zoo.layers.FusedBatchNormalization`: the numbers of Keras's `BatchNormalization`, by a faster path."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo.layers import FusedBatchNormalization


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


def test_training_output_and_moving_statistics_match_keras_batch_norm():
    fused, plain = _pair()
    x = _batch()
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)
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
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_inference_uses_the_moving_statistics_like_keras_batch_norm():
    fused, plain = _pair()
    x = _batch()
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-5)


def test_bfloat16_activations_are_normalised_without_leaving_bfloat16():
    fused, _ = _pair()
    mixed = FusedBatchNormalization(momentum=0.9, dtype="mixed_bfloat16")
    mixed.build((None, None, None, 5))
    mixed.set_weights(fused.get_weights())
    x = _batch()
    out = mixed(tf.cast(x, "bfloat16"), training=True)
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(out, "float32"), fused(x, training=True), atol=0.1)


@pytest.mark.parametrize("training", [True, False])
def test_the_parent_code_handles_inputs_the_fused_kernel_does_not_take(training):
    # 2D inputs (a dense layer's output) fall back to Keras's own code.
    layer = FusedBatchNormalization()
    plain = keras.layers.BatchNormalization()
    x = _batch((6, 5))
    np.testing.assert_allclose(layer(x, training=training), plain(x, training=training), atol=1e-5)


def test_saved_model_keeps_the_layer_and_its_statistics(tmp_path):
    inputs = keras.Input((None, None, 5))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(inputs))
    model(_batch(), training=True)  # move the statistics away from their initial values
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    x = _batch(seed=3)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
