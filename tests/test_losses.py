"""Tests for training.losses: the weighted cross-entropy against a numpy reference, and its serialization."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from training.losses import WeightedSparseCategoricalCrossentropy


def tiny_batch() -> tuple[np.ndarray, np.ndarray]:
    """Targets (2, 3, 4) holding every class, and softmax probabilities (2, 3, 4, 3) away from 0 and 1."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, size=(2, 3, 4))
    y_true[0, 0, :3] = [0, 1, 2]
    logits = rng.normal(size=(2, 3, 4, 3))
    y_pred = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return y_true, y_pred.astype(np.float32)


def reference_loss(y_true: np.ndarray, y_pred: np.ndarray, class_weights) -> float:
    """Mean over all pixels of -log p[true class] * weight[true class]."""
    p_true = np.take_along_axis(y_pred.astype(np.float64), y_true[..., None], axis=-1)[..., 0]
    return float(np.mean(-np.log(p_true) * np.asarray(class_weights)[y_true]))


@pytest.mark.parametrize("class_weights", [(1.0, 1.0, 10.0), (0.5, 2.0, 3.0)])
def test_loss_equals_the_numpy_reference(class_weights):
    y_true, y_pred = tiny_batch()
    loss = WeightedSparseCategoricalCrossentropy(class_weights=class_weights)
    expected = reference_loss(y_true, y_pred, class_weights)
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


def test_default_weights_make_the_boundary_class_count_ten_times():
    y_true, y_pred = tiny_batch()
    expected = reference_loss(y_true, y_pred, (1.0, 1.0, 10.0))
    assert float(WeightedSparseCategoricalCrossentropy()(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


def test_unit_weights_equal_the_keras_cross_entropy():
    y_true, y_pred = tiny_batch()
    weighted = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 1.0, 1.0))(y_true, y_pred)
    plain = keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred)
    assert float(weighted) == pytest.approx(float(plain), rel=1e-6)


def test_scaling_all_weights_scales_the_loss():
    y_true, y_pred = tiny_batch()
    once = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 2.0, 3.0))(y_true, y_pred)
    twice = WeightedSparseCategoricalCrossentropy(class_weights=(2.0, 4.0, 6.0))(y_true, y_pred)
    assert float(twice) == pytest.approx(2 * float(once), rel=1e-6)


def test_weight_of_an_absent_class_does_not_change_the_loss():
    y_true, y_pred = tiny_batch()
    y_true = np.where(y_true == 2, 1, y_true)
    low = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 1.0, 1.0))(y_true, y_pred)
    high = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 1.0, 100.0))(y_true, y_pred)
    assert float(high) == pytest.approx(float(low), rel=1e-6)


def test_weight_of_a_present_class_raises_the_loss():
    y_true, y_pred = tiny_batch()
    low = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 1.0, 1.0))(y_true, y_pred)
    high = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 1.0, 10.0))(y_true, y_pred)
    assert float(high) > 1.5 * float(low)


def test_targets_with_a_trailing_channel_axis_give_the_same_loss():
    y_true, y_pred = tiny_batch()
    loss = WeightedSparseCategoricalCrossentropy()
    with_axis = loss(y_true[..., np.newaxis].astype(np.uint8), y_pred)
    assert float(with_axis) == pytest.approx(float(loss(y_true, y_pred)), rel=1e-6)


def test_serialization_round_trip_keeps_class_weights():
    loss = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 2.0, 5.0), name="my_loss")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, WeightedSparseCategoricalCrossentropy)
    assert restored.class_weights == [1.0, 2.0, 5.0]
    assert restored.name == "my_loss"


def test_model_compiled_with_the_loss_loads_without_custom_objects(tiny_model, tmp_path: Path):
    model = tiny_model(depth=1)
    loss = WeightedSparseCategoricalCrossentropy(class_weights=(1.0, 2.0, 5.0))
    model.compile(optimizer="adam", loss=loss)
    model.optimizer.build(model.trainable_variables)  # as after training, so its state is saved too
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.loss, WeightedSparseCategoricalCrossentropy)
    assert loaded.loss.class_weights == [1.0, 2.0, 5.0]
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    targets = np.random.default_rng(1).integers(0, 3, size=(2, 16, 16, 1))
    expected = float(loss(targets, model(images, training=False)))
    assert float(loaded.loss(targets, loaded(images, training=False))) == pytest.approx(expected, rel=1e-6)
