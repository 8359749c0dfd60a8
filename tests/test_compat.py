"""Each shim in atmc_tf/compat.py exists because of an upstream limitation; each test here checks that
the limitation is still there, so it fails (and the shim can go) once upstream changes."""
import inspect

import keras
import tensorflow as tf

from atmc_tf import compat
from conftest import subclassed_model


def test_keras_still_has_no_public_functional_class():
    """Shim 1: is_graph_model uses the private Functional class; Keras exports none."""
    assert not hasattr(keras, "Functional") and not hasattr(keras.models, "Functional")
    assert compat._Functional is not None, "keras.src.models.functional.Functional moved: update compat.py"
    i = keras.Input((3,))
    functional = keras.Model(i, keras.layers.Dense(2)(i))
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    sub = subclassed_model()
    assert compat.is_graph_model(functional) and compat.is_graph_model(sequential)
    assert not compat.is_graph_model(sub)


def test_keras_multi_worker_reduce_of_step_outputs_still_needs_an_axis():
    """Shim 2 (tensorflow/tensorflow#72388): in multi-worker mode Keras reduces every step output
    with axis=0, which a scalar does not have."""
    from keras.src.backend.tensorflow import trainer as tf_trainer
    assert 'strategy.reduce("MEAN", v, axis=0)' in inspect.getsource(tf_trainer.reduce_per_replica)
    outputs = {"loss": tf.constant(1.0)}
    assert compat.step_outputs(outputs, tf.distribute.get_strategy()) is outputs  # single worker: untouched


def test_keras_symbolic_build_still_reduces_a_distributed_batch():
    """Shim 3: Keras' TF trainer MEAN-reduces one distributed batch to build the model symbolically."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    source = inspect.getsource(TensorFlowTrainer._maybe_symbolic_build)
    assert "distribute_strategy.reduce(" in source and '"MEAN"' in source
    i = keras.Input((3,))
    model = keras.Model(i, keras.layers.Dense(2)(i))
    assert not compat.needs_symbolic_build(model)  # built, no compiled loss or metrics of Keras' own
    model.compile(loss="mse")
    assert compat.needs_symbolic_build(model)


_REPLICA_PROBE = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from atmc_tf import compat
y, logits = tf.constant([0, 1]), tf.constant([[2.0, 0.0], [0.0, 1.0]])
xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
raw = strategy.experimental_local_results(strategy.run(lambda: xent(y, logits)))[0]
fixed = strategy.experimental_local_results(strategy.run(lambda: compat.per_replica_loss(xent)(y, logits)))[0]
print(float(xent(y, logits)), float(compat.per_replica_loss(xent)(y, logits)), float(raw), float(fixed))
"""


def test_keras_still_scales_mean_losses_by_the_replicas():
    """Shim 4: under a 2-replica MirroredStrategy Keras' mean-reduced Loss returns the replica's
    mean / 2; per_replica_loss gives the plain mean back, and leaves one device alone."""
    import os
    import subprocess
    import sys

    from keras.src.losses import loss as keras_loss
    assert "scale_loss_for_distribution" in inspect.getsource(keras_loss.reduce_values)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _REPLICA_PROBE], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-2000:]
    mean, one_device, raw, fixed = map(float, out.stdout.split()[-4:])
    assert one_device == mean
    assert abs(raw - mean / 2) < 1e-6, "Keras no longer scales a mean loss by 1/replicas: drop shim 4"
    assert abs(fixed - mean) < 1e-6


def test_atmc_tf_uses_no_private_api_outside_compat():
    """Private Keras / TF names appear only in compat.py (where each is documented)."""
    import pathlib
    root = pathlib.Path(compat.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text()
        for needle in ("keras.src", "tf.__internal__", "._flatten_layers", "_in_multi_worker_mode",
                       "maybe_merge_call"):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert not offenders, offenders
