"""Keras 3 models for bioimage analysis: pure builders that return functional `keras.Model`s."""

import os

# The models are written for the TensorFlow backend; quieten TensorFlow's C++ start-up chatter.
# Both are defaults only: a user's own setting wins.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from zoo.receptive_field import Geometry, model_geometry
from zoo.registry import MODELS, build_model

__all__ = ["MODELS", "Geometry", "build_model", "model_geometry"]
