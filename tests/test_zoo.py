"""Tests for the model zoo: every registered model, then the U-Net's options and argument checks.

The tests at the top loop over `zoo.MODELS`, so a newly registered model gets them for free.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import zoo

MODEL_NAMES = sorted(zoo.MODELS)


def keras_default_name(layer: keras.layers.Layer) -> str:
    """The name Keras gives a layer of this class by default (`Conv2DTranspose` -> `conv2d_transpose`)."""
    name = type(layer).__name__
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def random_images(model: keras.Model, height: int, width: int, batch: int = 2) -> np.ndarray:
    channels = model.inputs[0].shape[-1]
    return np.random.default_rng(1).normal(size=(batch, height, width, channels)).astype(np.float32)


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    # An eager call: for a tiny model it is faster than tracing `predict`.
    return keras.ops.convert_to_numpy(model(images, training=False))


def layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


# === Every registered model ===


@pytest.fixture(scope="module", params=MODEL_NAMES)
def registered_model(request, tiny_model) -> keras.Model:
    """Each registered model, tiny, built once per module."""
    return tiny_model(request.param)


def test_model_is_functional_with_one_input_and_one_output(registered_model):
    # `keras.Model(inputs, outputs)` returns the Functional subclass; a subclassed model would not be one.
    assert type(registered_model).__name__ == "Functional"
    assert len(registered_model.inputs) == 1
    assert len(registered_model.outputs) == 1


def test_every_layer_has_an_explicit_name(registered_model):
    auto_named = [
        layer.name
        for layer in registered_model.layers
        if re.fullmatch(rf"{keras_default_name(layer)}(_\d+)?", layer.name)
    ]
    assert auto_named == []


@pytest.mark.parametrize("steps", [(8, 12), (16, 16)])
def test_dynamic_input_size_gives_output_of_the_same_size(registered_model, steps):
    step = zoo.model_geometry(registered_model).step
    height, width = steps[0] * step, steps[1] * step  # 32x48 and 64x64 for the tiny U-Net
    output = predict(registered_model, random_images(registered_model, height, width))
    assert output.shape[:3] == (2, height, width)


def test_keras_file_round_trip_gives_identical_predictions(registered_model, tmp_path: Path):
    path = tmp_path / "model.keras"
    registered_model.save(path)
    loaded = keras.saving.load_model(path)
    images = random_images(registered_model, 32, 32)
    np.testing.assert_array_equal(predict(loaded, images), predict(registered_model, images))


def test_from_config_rebuilds_the_same_architecture(registered_model):
    rebuilt = keras.Model.from_config(registered_model.get_config())
    assert [(type(layer), layer.name) for layer in rebuilt.layers] == [
        (type(layer), layer.name) for layer in registered_model.layers
    ]
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in registered_model.weights]
    rebuilt.set_weights(registered_model.get_weights())
    images = random_images(registered_model, 32, 32)
    np.testing.assert_allclose(predict(rebuilt, images), predict(registered_model, images), atol=1e-6)


def test_unknown_model_name_error_lists_the_known_names():
    with pytest.raises(ValueError, match="no_such_model") as error:
        zoo.build_model("no_such_model")
    assert all(name in str(error.value) for name in MODEL_NAMES)


def test_build_model_passes_keyword_arguments_to_the_builder():
    model = zoo.build_model("unet", depth=1, base_filters=4, num_classes=5)
    assert model.outputs[0].shape[-1] == 5
    assert len(layers_of(model, keras.layers.MaxPooling2D)) == 1


def test_build_model_passes_the_model_name_to_the_builder():
    # Every builder takes a `name` keyword (the model's name); build_model must not swallow it.
    model = zoo.build_model("unet", depth=1, base_filters=4, name="small_unet")
    assert model.name == "small_unet"


def _without_dtypes(config):
    """`config` less every dtype: the shipped model was saved under mixed precision."""
    if isinstance(config, dict):
        return {key: _without_dtypes(value) for key, value in config.items() if key != "dtype"}
    if isinstance(config, list):
        return [_without_dtypes(value) for value in config]
    return config


def test_2d_unet_is_built_as_the_shipped_model_was():
    # The shipped checkpoint records the U-Net as it was built before 3D existed: the builder's 3D
    # options must leave every 2D layer, name, setting and weight shape as they were.
    folder = Path(zoo.__file__).parent / "models" / "nuclei"
    options = json.loads((folder / "config.json").read_text())
    built_with = ("depth", "base_filters", "kernel_size", "batch_norm", "dropout", "upsampling")
    model = zoo.build_model("unet", **{key: options[key] for key in built_with})
    with zipfile.ZipFile(folder / "best.keras") as archive:
        shipped = json.loads(archive.read("config.json"))["config"]
    ours = json.loads(json.dumps(model.get_config(), default=str))
    assert _without_dtypes(ours["layers"]) == _without_dtypes(shipped["layers"])
    loaded = keras.saving.load_model(folder / "best.keras", compile=False)
    assert [w.shape for w in model.weights] == [w.shape for w in loaded.weights]


# === U-Net options ===


@pytest.mark.parametrize("depth", [1, 2])
def test_unet_has_batch_norm_after_every_convolution_of_every_block(depth, tiny_model):
    model = tiny_model(depth=depth)
    blocks = 2 * depth + 1  # encoder levels, bottleneck, decoder levels
    assert len(layers_of(model, keras.layers.BatchNormalization)) == 2 * blocks


def test_unet_without_batch_norm_has_no_batch_norm_and_biased_convolutions(tiny_model):
    model = tiny_model(batch_norm=False)
    assert layers_of(model, keras.layers.BatchNormalization) == []
    assert all(layer.use_bias for layer in layers_of(model, keras.layers.Conv2D))


def test_unet_dropout_is_added_per_block_and_inactive_at_inference(tiny_model):
    model = tiny_model(dropout=0.5)
    dropouts = layers_of(model, keras.layers.Dropout)
    assert len(dropouts) == 5  # depth 2: two encoder blocks, the bottleneck, two decoder blocks
    assert {layer.rate for layer in dropouts} == {0.5}
    images = random_images(model, 32, 32)
    inference = predict(model, images)
    np.testing.assert_array_equal(predict(model, images), inference)
    assert not np.allclose(keras.ops.convert_to_numpy(model(images, training=True)), inference)


def test_unet_nearest_upsampling_replaces_transposed_convolutions(tiny_model):
    model = tiny_model(upsampling="nearest")
    upsampling = layers_of(model, keras.layers.UpSampling2D)
    assert layers_of(model, keras.layers.Conv2DTranspose) == []
    assert [layer.name for layer in upsampling] == ["dec1_up", "dec0_up"]
    assert {layer.interpolation for layer in upsampling} == {"nearest"}


def test_unet_transpose_upsampling_uses_transposed_convolutions(tiny_model):
    model = tiny_model(upsampling="transpose")
    assert len(layers_of(model, keras.layers.Conv2DTranspose)) == 2
    assert layers_of(model, keras.layers.UpSampling2D) == []


def test_unet_input_channels_and_num_classes_set_the_shapes(tiny_model):
    model = tiny_model(input_channels=2, num_classes=5)
    assert tuple(model.inputs[0].shape) == (None, None, None, 2)
    output = predict(model, random_images(model, 16, 24))
    assert output.shape == (2, 16, 24, 5)


def test_unet_softmax_output_sums_to_one(tiny_model):
    model = tiny_model(final_activation="softmax")
    output = predict(model, random_images(model, 16, 16))
    np.testing.assert_allclose(output.sum(axis=-1), 1.0, atol=1e-5)


def test_unet_without_final_activation_is_linear(tiny_model):
    model = tiny_model(final_activation=None)
    output = predict(model, random_images(model, 16, 16))
    assert output.min() < 0  # a softmax or sigmoid output could never be negative
    assert not np.allclose(output.sum(axis=-1), 1.0, atol=1e-2)


def test_unet_sigmoid_output_lies_in_the_unit_interval_without_summing_to_one(tiny_model):
    model = tiny_model(final_activation="sigmoid")
    output = predict(model, random_images(model, 16, 16))
    assert 0.0 < output.min() and output.max() < 1.0
    assert not np.allclose(output.sum(axis=-1), 1.0, atol=1e-2)


def test_unet_output_is_float32_under_mixed_precision(tiny_model):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_model()
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("head_conv").compute_dtype == "float16"
    assert model.outputs[0].dtype == "float32"


@pytest.mark.parametrize(
    "arguments",
    [
        {"kernel_size": 4},
        {"kernel_size": 0},
        {"depth": 0},
        {"depth": 7},
        {"base_filters": 0},
        {"num_classes": 0},
        {"input_channels": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"upsampling": "bilinear"},
        {"downsampling": "average"},
        {"ndim": 1},
        {"ndim": 4},
        {"pool_sizes": [2, 2]},  # depth 3 needs three
        {"pool_sizes": [(1, 2, 2), 2, 2]},  # three axes for a 2D model
        {"pool_sizes": [0, 2, 2]},
        {"kernel_size": (3, 4)},
        {"kernel_size": (3, 3, 3)},
        {"pool_sizes": [(1, 2), 2, 2], "downsampling": "blur"},  # MaxBlurPool2D pools both axes
    ],
    ids=lambda arguments: "-".join(f"{k}={v}" for k, v in arguments.items()),
)
def test_invalid_unet_arguments_raise_value_error(arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        zoo.build_model("unet", **arguments)
