"""Shared test setup: quiet TF, small hypothesis budgets, digits data, a small CNN."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits in [0, 1], NHWC, a fixed train/test split."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    y = d.target.astype("int64")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    x, y = x[idx], y[idx]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def small_cnn(seed=0, num_classes=10, synchronized_bn=False):
    """Conv2D + BatchNorm + DepthwiseConv2D + Dense, as the acceptance test asks.

    synchronized_bn: batch statistics shared across replicas, so that BN moving
    statistics too are identical on every worker (Keras' default keeps them local).
    """
    import keras
    keras.utils.set_random_seed(seed)
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same")(i)
    h = keras.layers.BatchNormalization(synchronized=synchronized_bn)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    o = keras.layers.Dense(num_classes)(h)
    return keras.Model(i, o)
