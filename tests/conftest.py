"""Shared test setup: quiet TF, small hypothesis budgets, digits data, a small CNN."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Under pytest-xdist (the README's `-n 2`), each worker's TensorFlow (in process, and in the pipeline runs it
# starts, which inherit this environment) gets its share of the cores for its op threads instead of all of
# them: two workers each with two intra-op threads on 2 cores ran two tiny pipeline runs side by side in
# 54 s, with one thread each in 49 s (2026-12-02). Inter-op threads are left to TensorFlow.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _share)
    os.environ.setdefault("OMP_NUM_THREADS", _share)

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker hook, which reads xdist_group into the node ids
def pytest_collection_modifyitems(config, items):
    """For `pytest -n 2 --dist loadgroup` (the README's test command, pytest-xdist): a test that uses a
    module-scoped fixture (a tiny pipeline run, a trained model) runs on the worker that runs that
    module's other such tests, so the fixture is built once; every other test goes to whichever worker
    is free, so that one long file (tests/test_pipeline.py) does not hold one worker while the other idles."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope == "module" for ds in defs for d in ds):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


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


def mobilenet_v2_style(seed=0, num_classes=10, input_shape=(8, 8, 1)):
    """A model the project never shipped: a MobileNetV2-style stem and two inverted-residual blocks
    (1x1 expand, 3x3 DepthwiseConv2D, 1x1 project, BatchNorm, an Add skip), global average pooling,
    Dropout, Dense (5,552 compressible weights on 8x8x1 inputs)."""
    import keras
    keras.utils.set_random_seed(seed)

    def block(x, expand, out, name):
        h = keras.layers.Conv2D(expand, 1, use_bias=False, name=f"{name}_expand")(x)
        h = keras.layers.BatchNormalization(name=f"{name}_bn1")(h)
        h = keras.layers.ReLU(6.0)(h)
        h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(h)
        h = keras.layers.BatchNormalization(name=f"{name}_bn2")(h)
        h = keras.layers.ReLU(6.0)(h)
        h = keras.layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(h)
        h = keras.layers.BatchNormalization(name=f"{name}_bn3")(h)
        return keras.layers.Add(name=f"{name}_add")([x, h]) if x.shape[-1] == out else h

    i = keras.Input(input_shape)
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(i)
    h = keras.layers.BatchNormalization(name="stem_bn")(h)
    h = keras.layers.ReLU(6.0)(h)
    h = block(h, 64, 16, "b1")
    h = block(h, 64, 16, "b2")
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.2)(h)
    return keras.Model(i, keras.layers.Dense(num_classes, name="logits")(h), name="mobilenet_v2_style")


def subclassed_model():
    """A built subclassed Keras model (one Dense layer): what ATMC refuses to wrap."""
    import keras

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    model = Sub()
    model(np.ones((1, 3), np.float32))
    return model


def count_steps_term():
    """A loss term with state (a stand-in for a multiplier or domain weights): counts its steps in a
    trainer variable, updated after every step through ctx.assign."""
    from atmc_tf.training import LossTerm

    class CountSteps(LossTerm):
        kind = "count_steps"

        def build(self, trainer):
            self.count = trainer.add_weight(name="count_steps", shape=(), dtype="float32", initializer="zeros",
                                            trainable=False)

        def after_step(self, ctx):
            ctx.assign(self.count, self.count.value + 1.0)

    return CountSteps()


def trained_digits_mlp(digits, epochs=15, seed=0):
    """Flatten, Dense(64, relu), Dense(10) fitted on the digits training split: ~97% clean test
    accuracy in ~2 s, a target that attacks hurt measurably at eps 0.1 (tests/test_apgd.py,
    tests/test_square.py)."""
    import keras
    x_tr, y_tr, _, _ = digits
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0)
    return model


class Interrupt(Exception):
    """What a kill does to fit(): it stops at the start of an epoch (tests/test_checkpoint.py, test_geco.py)."""


def interrupt_at(epoch):
    """A Keras callback raising Interrupt when epoch `epoch` begins."""
    import keras

    class InterruptAt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise Interrupt()
    return InterruptAt()


def run_script_result(source, timeout=300):
    """Run `source` in a child Python (argv[1]: the tests folder, the project on PYTHONPATH), require exit 0,
    and return the JSON it printed on its "RESULT " line (tests of several replicas on logical CPUs, which
    must be configured before TensorFlow starts, hence a process of their own)."""
    import json
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(here), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", source, here], capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
