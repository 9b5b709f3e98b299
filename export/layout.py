"""A channels-first copy of a channels-last model, for PyTorch.

The package's tensors are channels-last, (b, y, x, c), as Keras computes by default; PyTorch's
convolutions take channels-first (b, c, y, x). Under Keras's PyTorch backend a channels-last convolution
therefore permutes its input to channels-first, copies it twice (to a contiguous tensor, then to PyTorch's
`channels_last` memory format) and permutes its output back, and a trace keeps every one of those
operations. The copy made here computes channels-first from its first spatial layer to its last, with
one permute after the input and one before the output, so it takes and returns the same (b, y, x, c)
tensors. Seen channels-first, a contiguous (b, y, x, c) tensor already is in PyTorch's `channels_last`
memory format, which its convolutions prefer, so no layer copies its input any more.

Keras's TensorFlow backend has no channels-first convolution on CPUs: this copy is for PyTorch only
(`export.torchscript`). Layers it does not know to convert get their inputs back channels-last, so the
copy computes what the model computes whatever its layers, only less fast around unknown ones.
"""

from __future__ import annotations

import keras

from zoo.receptive_field import ELEMENTWISE_MERGE

# Layers with a `data_format` that computes the same in either layout.
_SPATIAL = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.UpSampling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
)
# Layers that act on each element, or on several tensors element by element: any layout.
_ELEMENTWISE = (*ELEMENTWISE_MERGE, keras.layers.Dropout, keras.layers.ReLU)
# Activations applied to each element alone (softmax, for one, reads the last axis).
_ELEMENTWISE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "elu", "selu", "gelu", "silu", "swish")
_CHANNEL_AXES = (-1, 3)


def _elementwise_activation(layer: keras.layers.Layer) -> bool:
    activation = layer.get_config().get("activation", "linear")
    return activation is None or activation in _ELEMENTWISE_ACTIVATIONS


def _convertible(layer: keras.layers.Layer) -> bool:
    """Whether `layer` has a channels-first twin (its clone by `_channels_first`) on 4D inputs."""
    if isinstance(layer, keras.Sequential):
        return all(_convertible(inner) for inner in layer.layers)
    if isinstance(layer, _SPATIAL):
        return layer.data_format == "channels_last" and _elementwise_activation(layer)
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.axis in _CHANNEL_AXES
    if isinstance(layer, keras.layers.Concatenate):
        return layer.axis in _CHANNEL_AXES
    return False


def _layout_free(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return _elementwise_activation(layer)
    return isinstance(layer, _ELEMENTWISE)


def _channels_first(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The channels-first twin of a `_convertible` layer."""
    if isinstance(layer, keras.Sequential):
        return keras.Sequential([_channels_first(inner) for inner in layer.layers], name=layer.name)
    config = layer.get_config()
    if "data_format" in config:
        config["data_format"] = "channels_first"
    else:  # batch normalisation or concatenation over the channels
        config["axis"] = 1
    return layer.__class__.from_config(config)


def _image_inputs(layer: keras.layers.Layer) -> bool:
    return all(len(t.shape) == 4 for node in layer._inbound_nodes for t in node.input_tensors)


def channels_first_model(model: keras.Model) -> keras.Model:
    """A copy of the functional channels-last `model` (4D image inputs and outputs) that computes
    channels-first inside and takes and returns what `model` does (see the module doc)."""
    # By name: the copy's layers, which `call` receives, are already converted.
    converted = {layer.name for layer in model.layers if _convertible(layer) and _image_inputs(layer)}
    layout_free = {layer.name for layer in model.layers if _layout_free(layer)}
    outputs = {tensor._keras_history.operation.name for tensor in model.outputs}
    first: set[int] = set()  # ids of the copy's channels-first tensors

    def relayout(tensor, channels_first: bool):
        if channels_first == (id(tensor) in first):
            return tensor
        if not channels_first:
            return keras.layers.Permute((2, 3, 1))(tensor)
        tensor = keras.layers.Permute((3, 1, 2))(tensor)
        first.add(id(tensor))
        return tensor

    def call(layer: keras.layers.Layer, *args, **kwargs):
        inputs = args[0]
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        # A layout-free layer follows its inputs, to spare a permute.
        channels_first = layer.name in converted or (
            layer.name in layout_free and any(id(t) in first for t in tensors)
        )
        tensors = [relayout(t, channels_first) for t in tensors]
        result = layer(tensors if isinstance(inputs, (list, tuple)) else tensors[0], *args[1:], **kwargs)
        if channels_first:
            first.add(id(result))
            if layer.name in outputs:
                result = relayout(result, False)
        return result

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in converted:
            return _channels_first(layer)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            copy.get_layer(layer.name).set_weights(layer.get_weights())  # kernels are (y, x, in, out) in both
    return copy
