"""Training, prediction and evaluation: everything that calls `fit` or runs a trained model."""

import os

# Set before TensorFlow is first imported; defaults only, a user's own setting wins.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
