"""QuantizedShadow (ATMCConfig(quant_method="ste"), the pipeline's --ste_epochs): after every step the kernels ARE
Q_b of a float shadow that has taken every step exactly, so small steps add up and cross levels (what ADMM at 2
bits never did: docs/admm_low_bits.md), zeros held by a fixed support stay zero, and the end moves nothing."""
import keras
import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from atmc_tf.constraints import (CONSTRAINTS, QuantizedShadow, constraint_from_config, constraint_to_config,
                                 nonzero_levels, num_levels, quantize)
from atmc_tf.constraints.base import TensorInfo


def _assign(var, value):
    var.assign(value)


def _make(shapes, bits, scheme):
    c = QuantizedShadow(bits, scheme)
    c.build([TensorInfo(f"k{i}", s) for i, s in enumerate(shapes)],
            lambda name, shape, dtype, init: keras.Variable(tf.zeros(shape, dtype), trainable=False))
    return c


kernels = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5),
                     elements=st.floats(-2, 2, allow_nan=False, width=32))


@settings(max_examples=30, deadline=None)
@given(kernels, st.sampled_from([("codebook_int8", 2), ("codebook_int8", 3), ("uniform_int8", 2),
                                 ("codebook", 2)]), st.integers(0, 10_000))
def test_every_step_ends_on_the_set_and_the_shadow_takes_every_step(w, scheme_bits, seed):
    scheme, bits = scheme_bits
    rng = np.random.default_rng(seed)
    w = np.where(rng.random(w.shape) < 0.3, 0.0, w).astype(np.float32)
    support = w != 0  # what a FixedSupport before this constraint holds
    c = _make([w.shape], bits, scheme)
    (kernel,) = c.initialize([tf.constant(w)], _assign)
    np.testing.assert_array_equal(kernel.numpy(), quantize(w, scheme, bits).numpy())
    shadow = w.astype(np.float64)
    for step in range(4):
        delta = (rng.normal(0, 0.2, w.shape) * support).astype(np.float32)  # the optimizer's step, masked
        (kernel,) = c.project([kernel + delta], tf.constant(step + 1), _assign)
        shadow += delta
        np.testing.assert_allclose(c.shadow[0].numpy(), shadow, atol=1e-5)
        np.testing.assert_array_equal(kernel.numpy(), quantize(c.shadow[0].value, scheme, bits).numpy())
        assert int(num_levels(kernel, scheme)) <= nonzero_levels(bits, True)
        assert np.all(kernel.numpy()[~support] == 0), "a pruned weight came back"
    (final,) = c.finalize([kernel], _assign)
    np.testing.assert_allclose(final.numpy(), kernel.numpy(), rtol=0, atol=1e-6 * (1 + np.abs(kernel.numpy()).max()))


def test_small_steps_add_up_until_a_weight_crosses_a_level():
    """One step of 0.02 is rounded away; 25 of them move the weight to another level. Under ADMM the kernel is
    float and the rounding happens once at the end, after training stopped adapting."""
    w = np.array([[1.0, -1.0], [0.1, 0.1], [-0.05, 0.3], [0.02, -0.2]], np.float32)  # two output channels
    c = _make([w.shape], 2, "uniform_int8")
    (kernel,) = c.initialize([tf.constant(w)], _assign)
    start = kernel.numpy().copy()
    push = np.zeros_like(w)
    push[1, 0] = 0.02
    (kernel,) = c.project([kernel + push], tf.constant(1), _assign)
    np.testing.assert_array_equal(kernel.numpy(), start)  # absorbed by the rounding, kept in the shadow
    for step in range(2, 26):
        (kernel,) = c.project([kernel + push], tf.constant(step), _assign)
    assert kernel.numpy()[1, 0] > start[1, 0], (start, kernel.numpy())
    np.testing.assert_allclose(c.shadow[0].numpy()[1, 0], 0.1 + 25 * 0.02, atol=1e-5)
    assert float(c.metrics([kernel])["shadow_dist"]) >= 0


def test_registry_round_trip_and_bad_settings():
    c = QuantizedShadow(3, "uniform_int8", kmeans_iters=5)
    assert CONSTRAINTS["quantize_ste"] is QuantizedShadow
    again = constraint_from_config(constraint_to_config(c))
    assert type(again) is QuantizedShadow and again.get_config() == c.get_config()
    for bad in (dict(bits=0), dict(bits=9), dict(bits=2, scheme="float"), dict(bits=1, scheme="uniform_int8"),
                dict(bits=2, kmeans_iters=0)):
        try:
            QuantizedShadow(**bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
