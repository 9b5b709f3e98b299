"""Keras 3 models for bioimage analysis: pure builders that return functional `keras.Model`s."""

import os

from base.backend import set_default_backend

# Defaults only, before Keras is imported: a user's own KERAS_BACKEND wins; TensorFlow's C++ start-up
# chatter is quietened.
set_default_backend()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from zoo.receptive_field import Geometry, model_geometry  # noqa: E402 (after the backend default)
from zoo.registry import MODELS, build_model  # noqa: E402 (after the backend default)
from zoo.unet import anisotropic_pool_sizes  # noqa: E402 (after the backend default)

__all__ = ["MODELS", "Geometry", "anisotropic_pool_sizes", "build_model", "model_geometry"]
