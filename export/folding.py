"""Prediction copies of a model: batch normalisation folded into the convolution before it.

At inference a batch normalisation is a fixed scale and shift per channel. After a linear convolution
that feeds nothing else, that scale and shift can go into the convolution's kernel and bias, and the
layer disappears: a U-Net's largest tensors are then read and written once per layer instead of three
times. Both prediction routes use this copy: the Keras engine (`training.engines.inference_model`, which
also chooses each layer's precision) and the TorchScript weights (`export.torchscript`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np


def folded_convolutions(model: keras.Model) -> dict[str, str]:
    """{batch-norm layer name: convolution layer name} for every batch normalisation (over the last axis)
    whose only input is a linear Conv2D that feeds nothing else: those pairs can be folded."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            continue
        parents = layer._inbound_nodes[0].parent_nodes
        conv = parents[0].operation if len(parents) == 1 else None
        if (
            type(conv) is keras.layers.Conv2D
            and len(conv._inbound_nodes) == 1
            and len(conv._outbound_nodes) == 1
            and conv.activation is keras.activations.linear
        ):
            pairs[layer.name] = conv.name
    return pairs


def fold(conv_weights: list[np.ndarray], norm: keras.layers.BatchNormalization) -> list[np.ndarray]:
    """Kernel and bias of a convolution followed by `norm` (in inference mode), as one convolution,
    in float64 (the caller rounds once, to the dtype it stores)."""
    kernel, bias = conv_weights[0], (conv_weights[1] if len(conv_weights) > 1 else 0.0)
    values = dict(zip([w.path.split("/")[-1] for w in norm.weights], norm.get_weights(), strict=True))
    channels = kernel.shape[-1]
    gamma = values.get("gamma", np.ones(channels))
    beta = values.get("beta", np.zeros(channels))
    scale = np.asarray(gamma, np.float64) / np.sqrt(
        np.asarray(values["moving_variance"], np.float64) + norm.epsilon
    )
    return [kernel * scale, (bias - np.asarray(values["moving_mean"], np.float64)) * scale + beta]


def folded_model(
    model: keras.Model, dtype_of: Callable[[keras.layers.Layer], str] = lambda layer: "float32"
) -> keras.Model:
    """A copy of the functional `model` (Keras's own layers: `export.portable.portable_model`) with each
    pair of `folded_convolutions` folded into the convolution, and each layer's dtype policy given by
    `dtype_of(layer)` (float32 by default). Weights are stored in float32; in float32 the outputs equal
    the model's up to rounding."""
    folded = folded_convolutions(model)
    norm_of = {conv: norm for norm, conv in folded.items()}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = dtype_of(layer)
        if layer.name in norm_of:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer: keras.layers.Layer, *args, **kwargs):
        return args[0] if layer.name in folded else layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name in folded:
            continue
        weights = [np.asarray(w, np.float64) for w in layer.get_weights()]
        if layer.name in norm_of:
            weights = fold(weights, model.get_layer(norm_of[layer.name]))
        copy.get_layer(layer.name).set_weights([w.astype(np.float32) for w in weights])
    return copy
