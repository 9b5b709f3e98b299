"""`training.engines.inference_model`: the prediction copy of a trained model, batch norm folded into the
convolutions, in float32 or bfloat16."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.conftest import build_tiny_model
from training.engines import inference_model, predictor
from zoo.layers import FusedBatchNormalization

MODELS = [
    ("unet", {"num_classes": 3, "final_activation": "softmax"}),
    ("unet", {"num_classes": 2, "upsampling": "transpose", "depth": 3}),
    ("n2v", {"residual": True}),
    ("n2v2", {"input_channels": 2, "independent_channels": True}),
]


def _batch(model: keras.Model, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, 48, 64, model.input.shape[-1])).astype(np.float32)


def _norm_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize(("name", "overrides"), MODELS)
def test_float32_copy_folds_every_batch_norm_and_predicts_the_same(name: str, overrides: dict) -> None:
    model = build_tiny_model(name, **overrides)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in model.layers)
    batch = _batch(model)

    copy = inference_model(model)

    assert _norm_layers(copy) == []
    assert len(copy.layers) == len(model.layers) - len(_norm_layers(model))
    expected = model.predict_on_batch(batch)
    got = copy.predict_on_batch(batch)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5 * float(np.abs(expected).max()))


def test_model_without_batch_norm_is_copied_unchanged() -> None:
    model = build_tiny_model("unet", batch_norm=False, num_classes=3)
    batch = _batch(model)

    copy = inference_model(model)

    assert [layer.name for layer in copy.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(copy.predict_on_batch(batch), model.predict_on_batch(batch))


def test_batch_norm_that_does_not_follow_a_lone_convolution_is_kept() -> None:
    inputs = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    left = keras.layers.BatchNormalization(name="after_shared_conv")(conv)
    right = keras.layers.Activation("relu")(conv)  # a second use of the convolution: no folding
    pooled = keras.layers.BatchNormalization(name="after_pooling")(keras.layers.MaxPooling2D()(left))
    model = keras.Model(inputs, [keras.layers.UpSampling2D()(pooled), right])
    for layer in _norm_layers(model):
        layer.set_weights([np.full(4, 1.5), np.full(4, 0.2), np.full(4, 0.3), np.full(4, 2.0)])
    batch = _batch(model)

    copy = inference_model(model)

    assert sorted(layer.name for layer in _norm_layers(copy)) == ["after_pooling", "after_shared_conv"]
    for got, expected in zip(copy.predict_on_batch(batch), model.predict_on_batch(batch), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bfloat16_copy_computes_in_bfloat16_with_float32_outputs_and_residual() -> None:
    model = build_tiny_model("n2v", residual=True)
    batch = _batch(model)

    copy = inference_model(model, "bfloat16")

    compute = {layer.name: layer.dtype_policy.compute_dtype for layer in copy.layers}
    assert compute["output"] == compute["residual_add"] == "float32"
    convolutions = [layer for layer in copy.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(layer.dtype_policy.compute_dtype == "bfloat16" for layer in convolutions)
    assert all(layer.variable_dtype == "float32" for layer in copy.layers)
    expected = model.predict_on_batch(batch)
    got = copy.predict_on_batch(batch)
    assert got.dtype == np.float32
    error = float(np.sqrt(np.mean((got - expected) ** 2)))
    # bfloat16 keeps 8 significant bits: about 0.4 % per rounding, far from exact yet far below the signal.
    assert 0 < error < 0.02 * float(np.std(expected))


def test_unknown_precision_and_bfloat16_onnx_are_refused() -> None:
    model = build_tiny_model("n2v")
    with pytest.raises(ValueError, match="float16"):
        inference_model(model, "float16")
    with pytest.raises(ValueError, match="float32 only"):
        predictor(model, "onnx", "bfloat16")
