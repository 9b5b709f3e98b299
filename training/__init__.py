"""Training, prediction and evaluation: everything that calls `fit` or runs a trained model."""

import os

from base.backend import set_default_backend

# Defaults only, before Keras is imported: a user's own KERAS_BACKEND wins.
set_default_backend()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
