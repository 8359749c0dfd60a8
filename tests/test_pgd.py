"""PGD: stays in the eps-ball and the data range, really starts at random, and hurts."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st

from atmc_tf.attacks import PGDConfig, adversarial_examples, fgsm, pgd, robust_accuracy


def _linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])


MODEL = None


def _model():
    global MODEL
    if MODEL is None:
        MODEL = _linear_model()
    return MODEL


@given(eps=st.floats(0.0, 1.0), steps=st.integers(1, 5), norm=st.sampled_from(["inf", "2"]),
       restarts=st.integers(1, 2), seed=st.integers(0, 1000), rand=st.booleans())
def test_stays_in_ball_and_range(eps, steps, norm, restarts, seed, rand):
    rng = np.random.default_rng(seed)
    x = rng.random((5, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    xa = pgd(_model(), x, y, eps=eps, step_size=max(eps, 1e-3) / 2, steps=steps, norm=norm,
             rand_init=rand, restarts=restarts).numpy()
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    d = (xa - x).reshape(5, -1)
    size = np.abs(d).max(axis=1) if norm == "inf" else np.linalg.norm(d, axis=1)
    assert np.all(size <= eps * (1 + 1e-5) + 1e-6)


def test_random_start_really_happens():
    """With a constant model the gradient is 0: only the random start can move x."""
    const = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, kernel_initializer="zeros")])
    x = np.full((8, 4, 4, 1), 0.5, np.float32)
    y = np.zeros(8, np.int64)
    a = pgd(const, x, y, eps=0.1, steps=3, rand_init=True).numpy()
    b = pgd(const, x, y, eps=0.1, steps=3, rand_init=True).numpy()
    assert np.abs(a - x).max() > 0.01 and not np.allclose(a, b)
    c = pgd(const, x, y, eps=0.1, steps=3, rand_init=False).numpy()
    np.testing.assert_array_equal(c, x)


def test_fgsm_is_one_signed_step():
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    y = np.array([0, 1])
    xa = fgsm(_model(), x, y, eps=0.1).numpy()
    np.testing.assert_allclose(np.abs(xa - x), 0.1, atol=1e-6)


def test_increases_loss_and_works_in_tf_function():
    m = _model()
    rng = np.random.default_rng(3)
    x = rng.random((64, 4, 4, 1)).astype(np.float32)
    y = np.argmax(m(x), axis=-1)
    f = tf.function(lambda xb, yb: pgd(m, xb, yb, eps=0.3, steps=10))
    xa = f(x, y)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(ce(y, m(xa))) > float(ce(y, m(x)))


def test_adversarial_examples_batches_the_whole_array():
    """Every batch (the last one short) is attacked: same shape, in the ball and the pixel range,
    and the model's accuracy on them is what robust_accuracy measures (both deterministic: no
    random start, one restart)."""
    m = _model()
    rng = np.random.default_rng(4)
    x = rng.random((70, 4, 4, 1)).astype(np.float32)
    y = np.argmax(m(x), axis=-1)
    cfg = PGDConfig(eps=0.2, steps=5, rand_init=False)
    xa = adversarial_examples(m, x, y, cfg, batch_size=32)
    assert isinstance(xa, np.ndarray) and xa.shape == x.shape and xa.dtype == x.dtype
    assert xa.min() >= 0.0 and xa.max() <= 1.0 and np.abs(xa - x).max() <= 0.2 + 1e-6
    assert np.all(np.abs(xa[64:] - x[64:]).max(axis=(1, 2, 3)) > 0)  # the short last batch too
    acc = float(np.mean(np.argmax(m(xa), axis=-1) == y))
    assert acc < 1.0 and acc == pytest.approx(robust_accuracy(m, x, y, cfg, batch_size=32))


def test_robust_accuracy_falls_with_eps_to_zero(digits):
    x_tr, y_tr, x_te, y_te = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_tr, y_tr, epochs=15, batch_size=64, verbose=0)
    accs = [robust_accuracy(model, x_te[:200], y_te[:200], PGDConfig(eps=e, steps=10))
            for e in (0.0, 0.05, 0.1, 0.3, 1.0)]
    assert accs[0] > 0.85
    assert all(a >= b - 0.02 for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] <= 0.02, accs


@pytest.mark.parametrize("kwargs", [dict(eps=-0.1), dict(eps=0.1, steps=0), dict(eps=0.1, norm="3"),
                                    dict(eps=0.1, restarts=0), dict(eps=float("nan"))])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PGDConfig(**kwargs)
