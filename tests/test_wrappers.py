"""Wrappers: every option round-trips through get_config and .keras; bad layers are named."""
import itertools
import json

import keras
import numpy as np
import pytest

from atmc_tf.layers import (ATMCWrapper, UnconstrainedModelError, UnconstrainedTrainingError, UnsupportedLayerError,
                            atmc_wrappers, strip_model, wrap_model)
from conftest import small_cnn, subclassed_model

OPTIONS = [dict(factorization=f, sparse_correction=s, ranks=3)
           for f, s in itertools.product(["none", "abc", "lowrank"], [True, False])
           if not (f != "lowrank" and not s)]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_keras_round_trip_identical_outputs(tmp_path, opts):
    plain = small_cnn()
    net = wrap_model(plain, **opts)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    # move every variable (kernel or factors, bias, the constrained flag) off its initial value
    for w in atmc_wrappers(net):
        for v in w.weights:
            step = 1 if v.dtype == "int32" else np.random.default_rng(1).normal(size=v.shape).astype(np.float32) * 0.01
            v.assign(v.value + step)
    path = tmp_path / "m.keras"
    net.save(path)
    loaded = keras.models.load_model(path)  # safe_mode stays on
    np.testing.assert_array_equal(loaded(x).numpy(), net(x).numpy())
    for a, b in zip(atmc_wrappers(net), atmc_wrappers(loaded)):
        assert json.loads(json.dumps(a.get_config())) == json.loads(json.dumps(b.get_config()))
        for va, vb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(va.numpy(), vb.numpy())
    np.testing.assert_allclose(strip_model(loaded)(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    assert all(int(w.constrained.numpy()) == 1 for w in atmc_wrappers(loaded))


@pytest.mark.parametrize("layer", [keras.layers.Dense(4), keras.layers.Conv2D(4, 3),
                                   keras.layers.DepthwiseConv2D(3, depth_multiplier=2)])
@pytest.mark.parametrize("fac", ["none", "abc", "lowrank"])
def test_config_round_trip_every_argument(layer, fac):
    w = ATMCWrapper(layer, factorization=fac, rank=2, sparse_correction=False)
    again = ATMCWrapper.from_config(w.get_config())
    for key in ("factorization", "rank", "sparse_correction", "name"):
        assert getattr(again, key) == getattr(w, key)
    assert type(again.layer) is type(layer)


def test_wrapping_keeps_outputs_and_leaves_bn_untouched():
    plain = small_cnn()
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    for fac in ("none", "abc"):
        net = wrap_model(plain, factorization=fac)
        np.testing.assert_allclose(net(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-6)
        kinds = [type(l).__name__ for l in net.layers]
        assert "BatchNormalization" in kinds and kinds.count("ATMCWrapper") == 4


def test_sequential_models_work():
    seq = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    net = wrap_model(seq)
    assert len(atmc_wrappers(net)) == 2
    np.testing.assert_allclose(net(np.ones((1, 5))).numpy(), seq(np.ones((1, 5))).numpy(), rtol=1e-6)


@pytest.mark.parametrize("bad", [keras.layers.Conv1D(3, 2), keras.layers.LSTM(3),
                                 keras.layers.Conv2DTranspose(3, 2) ])
def test_unsupported_layer_is_named(bad):
    shape = (6, 6, 2) if isinstance(bad, keras.layers.Conv2DTranspose) else (5, 4)
    model = keras.Sequential([keras.Input(shape), bad])
    with pytest.raises(UnsupportedLayerError, match=bad.name) as err:
        wrap_model(model)
    assert "Dense, Conv2D, DepthwiseConv2D" in str(err.value)
    assert type(bad).__name__ in str(err.value)


def test_double_wrap_and_subclassed_models_are_refused():
    net = wrap_model(small_cnn())
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_model(net)
    with pytest.raises(UnsupportedLayerError, match="subclassed"):
        wrap_model(subclassed_model())


def test_saved_model_keeps_weights_and_one_flag_only(tmp_path):
    """A .keras file holds each kernel once (no mask, no ADMM copies) and the constrained flag."""
    net = wrap_model(small_cnn())
    for w in atmc_wrappers(net):
        assert [v.name for v in w.weights if v.name not in ("kernel", "bias")] == ["constrained"], w.weights
        assert sum(v.name == "kernel" for v in w.weights) == 1


def test_training_outside_the_trainer_fails_loudly():
    """Plain Keras fit, or a custom loop's training call, on a wrapped model: nobody would enforce the
    constraints, so the wrapper refuses, naming itself and the way out."""
    net = wrap_model(small_cnn())
    x = np.random.default_rng(0).random((8, 8, 8, 1)).astype(np.float32)
    y = np.arange(8) % 10
    with pytest.raises(UnconstrainedTrainingError, match="outside ATMCTrainer.*custom_step"):
        net(x, training=True)
    net.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(UnconstrainedTrainingError, match="atmc_"):
        net.fit(x, y, epochs=1, verbose=0)
    net(x, training=False)  # inference is fine


def test_strip_refuses_a_never_constrained_model():
    net = wrap_model(small_cnn())
    with pytest.raises(UnconstrainedModelError, match="never enforced.*allow_unconstrained"):
        strip_model(net)
    assert len(strip_model(net, allow_unconstrained=True).layers) == len(net.layers)


def test_admm_argument_is_deprecated_and_ignored():
    with pytest.warns(DeprecationWarning, match="admm"):
        net = wrap_model(small_cnn(), admm=True)
    assert not [v for w in atmc_wrappers(net) for v in w.weights if "admm" in v.name]
    with pytest.raises(TypeError, match="unexpected keyword"):
        wrap_model(small_cnn(), admn=True)


def test_export_of_a_never_constrained_wrapped_model_is_refused():
    from atmc_tf.export import to_int8_tflite
    net = wrap_model(small_cnn())
    x = np.random.default_rng(0).random((8, 8, 8, 1)).astype(np.float32)
    with pytest.raises(UnconstrainedModelError, match="never enforced"):
        to_int8_tflite(net, x)


# --- custom (registered) layers are named with their class and registered name (issue 15) ---------

@keras.saving.register_keras_serializable(package="atmc_tests")
class _MyDense(keras.layers.Layer):
    """A custom layer with a kernel: ATMC cannot compress it."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, x):
        return x @ self.w

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="atmc_tests")
class _Scale(keras.layers.Layer):
    """Weight-free, but its get_config() forgets `factor`: it cannot be copied."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return super().get_config()


@keras.saving.register_keras_serializable(package="atmc_tests")
class _GainDense(keras.layers.Dense):
    """A Dense with its own call(): a factorized wrapper would compute a plain Dense instead."""

    def call(self, x):
        return super().call(x) * 2.0


@pytest.mark.parametrize("layer,factorization,words", [
    (_MyDense(4, name="my_dense"), "none", ["cannot wrap", "'my_dense'", "_MyDense", "'atmc_tests>_MyDense'"]),
    (_Scale(0.5, name="my_scale"), "none", ["cannot copy", "'my_scale'", "_Scale", "'atmc_tests>_Scale'",
                                             "factor", "get_config"]),
    (_GainDense(4, name="gain"), "lowrank", ["cannot factorize", "'gain'", "_GainDense",
                                             "'atmc_tests>_GainDense'", "call()", "factorization='none'"]),
], ids=["weights", "no_config", "own_call_factorized"])
def test_custom_registered_layer_is_named_with_its_class(layer, factorization, words):
    model = keras.Sequential([keras.Input((6,)), layer, keras.layers.Dense(3)])
    with pytest.raises(UnsupportedLayerError) as err:
        wrap_model(model, factorization=factorization, ranks=2)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert "\n" not in str(err.value)


def test_custom_dense_subclass_wraps_unfactorized():
    """factorization='none' runs the layer's own call(): nothing is bypassed, so it is accepted."""
    model = keras.Sequential([keras.Input((6,)), _GainDense(4), keras.layers.Dense(3)])
    x = np.ones((2, 6), np.float32)
    np.testing.assert_allclose(wrap_model(model)(x).numpy(), model(x).numpy(), rtol=1e-6)
