"""The one list of models this project builds, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from zoo.n2v import build_n2v, build_n2v2
from zoo.unet import build_unet

MODELS: dict[str, Callable[..., keras.Model]] = {
    "unet": build_unet,
    "n2v": build_n2v,
    "n2v2": build_n2v2,
}


def build_model(name: str, /, **kwargs: Any) -> keras.Model:
    """Build the registered model `name` with the builder's keyword arguments."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return builder(**kwargs)
