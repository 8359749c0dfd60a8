"""Square Attack on logits-only models, L_inf and L2: stays in the ball and the box (at every query), never
raises accuracy, counts its queries, hurts both the float Keras model and its int8 .tflite on LiteRT
within 300 queries (L_inf), beats random noise of the same L2 norm and budget, and repeats with a seed."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from atmc_tf.export import LiteRTModel, to_int8_tflite
from atmc_tf.export.blackbox import margins, meta_pseudo_gaussian, p_schedule, square_attack
from conftest import trained_digits_mlp


def _numpy_model(features, classes=4):
    rng = np.random.default_rng(features)
    w1, w2 = rng.normal(size=(features, 8)), rng.normal(size=(8, classes))
    return lambda x: np.tanh(np.asarray(x).reshape(len(x), -1) @ w1) @ w2


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.0, 0.5), n=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 3),
       n_queries=st.integers(1, 40), p_init=st.sampled_from([0.05, 0.3, 0.8, 1.0]), seed=st.integers(0, 1000))
def test_stays_in_ball_and_box_and_never_raises_accuracy(eps, n, h, w, c, n_queries, p_init, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, h, w, c)).astype(np.float32)
    y = rng.integers(0, 4, n)
    model = _numpy_model(h * w * c)
    calls = []
    xa, queries = square_attack(lambda z: calls.append(len(z)) or model(z), x, y, eps, n_queries=n_queries,
                                p_init=p_init, seed=seed)
    assert xa.shape == x.shape and xa.dtype == x.dtype and xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.all(np.abs(xa - x) <= eps + 1e-6)
    clean_ok, adv_ok = model(x).argmax(1) == y, model(xa).argmax(1) == y
    assert not np.any(adv_ok & ~clean_ok)  # per example, so accuracy never rises
    np.testing.assert_array_equal(xa[~clean_ok], x[~clean_ok])
    assert np.all(queries >= 1) and np.all(queries <= n_queries) and np.all(queries[~clean_ok] == 1)
    assert sum(calls) == queries.sum() and len(calls) <= n_queries  # one batched call per iteration


def test_p_schedule_halves_at_the_papers_iterations():
    assert [p_schedule(i, 10000, 0.8) for i in (0, 10, 11, 50, 51, 201, 8000, 8001, 9999)] == \
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    short = [p_schedule(i, 300, 0.8) for i in range(300)]  # rescaled: the whole schedule in 300
    assert short[0] == 0.8 and short[-1] == 0.8 / 512 and all(a >= b for a, b in zip(short, short[1:]))


def test_margins():
    np.testing.assert_allclose(margins(np.array([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]]), np.array([0, 2])), [2.0, -3.0])


@pytest.mark.parametrize("kwargs", [dict(eps=-0.1), dict(eps=float("inf")), dict(eps=0.1, n_queries=0),
                                    dict(eps=0.1, p_init=0.0), dict(eps=0.1, clip_min=1.0),
                                    dict(eps=0.1, norm="1"), dict(eps=0.1, norm="linf")])
def test_rejects_bad_values(kwargs):
    x = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(ValueError):
        square_attack(_numpy_model(16), x, [0, 1], **kwargs)
    with pytest.raises(ValueError, match="n, h, w, c"):
        square_attack(_numpy_model(16), x.reshape(2, 16), [0, 1], 0.1)


@pytest.fixture(scope="module")
def model(digits):
    return trained_digits_mlp(digits)


def _check_it_hurts(predict, x, y, eps=0.15, n_queries=300):
    clean = float(np.mean(predict(x).argmax(1) == y))
    xa, queries = square_attack(predict, x, y, eps, n_queries=n_queries, seed=0)
    robust = float(np.mean(predict(xa).argmax(1) == y))
    assert np.abs(xa - x).max() <= eps + 1e-6 and xa.min() >= 0.0 and xa.max() <= 1.0
    assert clean > 0.9 and robust < clean - 0.4, (clean, robust)
    fooled = predict(xa).argmax(1) != y
    assert np.all(queries <= n_queries) and queries[fooled].mean() < n_queries / 2, queries[fooled].mean()
    return clean, robust, queries


def test_hurts_the_keras_model_within_300_queries(model, digits):
    _, _, x, y = digits
    # predict_on_batch: Keras' predict without the per-call iterator set-up (model.predict takes ~90 ms
    # a call here, 30 s for the attack's few hundred shrinking batches).
    _check_it_hurts(model.predict_on_batch, x[:100], y[:100])


def test_hurts_the_int8_tflite_within_300_queries(model, digits):
    x_tr, _, x, y = digits
    lite = LiteRTModel(to_int8_tflite(model, x_tr[:300]))
    _check_it_hurts(lite.predict, x[:100], y[:100])


def _l2(a):
    return np.sqrt((np.asarray(a, np.float64) ** 2).reshape(len(a), -1).sum(1))


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.0, 3.0), n=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3),
       n_queries=st.integers(1, 40), p_init=st.sampled_from([0.05, 0.3, 0.8, 1.0]), seed=st.integers(0, 1000))
def test_l2_stays_in_ball_and_box_at_every_query_and_never_raises_accuracy(eps, n, h, w, c, n_queries, p_init,
                                                                           seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, h, w, c)).astype(np.float32)
    y = rng.integers(0, 4, n)
    model = _numpy_model(h * w * c)
    calls = []

    def predict(z):  # every queried image: in the box and within eps (L2) of one of the originals
        assert z.dtype == x.dtype and z.min() >= 0.0 and z.max() <= 1.0
        d = np.sqrt(((z[:, None].astype(np.float64) - x[None]) ** 2).sum(axis=(2, 3, 4))).min(axis=1)
        assert np.all(d <= eps * (1 + 1e-6) + 1e-7), (d, eps)
        calls.append(len(z))
        return model(z)

    xa, queries = square_attack(predict, x, y, eps, n_queries=n_queries, p_init=p_init, seed=seed, norm="2")
    assert xa.shape == x.shape and xa.dtype == x.dtype and xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.all(_l2(xa - x) <= eps * (1 + 1e-6) + 1e-7)
    clean_ok, adv_ok = model(x).argmax(1) == y, model(xa).argmax(1) == y
    assert not np.any(adv_ok & ~clean_ok)
    np.testing.assert_array_equal(xa[~clean_ok], x[~clean_ok])
    assert np.all(queries >= 1) and np.all(queries <= n_queries) and np.all(queries[~clean_ok] == 1)
    assert sum(calls) == queries.sum() and len(calls) <= n_queries


def test_meta_pseudo_gaussian_matches_auto_attack():
    """auto-attack's eta(5) for L2: rings 1, 1/4, 1/9 around (1, 2) in the upper 2 x 5 half, the same
    negated around (3, 2) in the lower 3 x 5 half, each half and the whole of unit norm."""
    up = np.full((2, 5), 1 / 9)
    up[0:2, 1:4] += 1 / 4
    up[1, 2] += 1
    low = np.full((3, 5), 1 / 9)
    low[0:3, 1:4] += 1 / 4
    low[1, 2] += 1
    want = np.concatenate([up / np.linalg.norm(up), -low / np.linalg.norm(low)])
    np.testing.assert_allclose(meta_pseudo_gaussian(5), want / np.linalg.norm(want))
    assert meta_pseudo_gaussian(1).shape == (1, 1) and abs(np.linalg.norm(meta_pseudo_gaussian(3)) - 1) < 1e-12


def _random_l2_noise(predict, x, y, eps, n_draws, seed=0):
    """The baseline: n_draws uniformly random directions on the eps sphere (clipped to the box) per
    example, fooled if any draw misclassifies; returns per-example correctness."""
    rng = np.random.default_rng(seed)
    correct = predict(x).argmax(1) == y
    for _ in range(n_draws - 1):
        d = rng.normal(size=x.shape)
        xn = np.clip(x + d / _l2(d)[:, None, None, None] * eps, 0, 1).astype(x.dtype)
        correct &= predict(xn).argmax(1) == y
    return correct


def test_l2_beats_random_noise_of_the_same_norm_and_budget(model, digits):
    _, _, x, y = digits
    x, y, eps, budget = x[:100], y[:100], 1.0, 100
    predict = model.predict_on_batch
    clean = float(np.mean(predict(x).argmax(1) == y))
    xa, queries = square_attack(predict, x, y, eps, n_queries=budget, seed=0, norm="2")
    assert np.all(_l2(xa - x) <= eps * (1 + 1e-6)) and xa.min() >= 0.0 and xa.max() <= 1.0
    square = float(np.mean(predict(xa).argmax(1) == y))
    noise = float(np.mean(_random_l2_noise(predict, x, y, eps, budget)))
    assert clean > 0.9 and square < noise - 0.2 and noise > clean - 0.2, (clean, noise, square)
    assert np.all(queries <= budget)


def test_l2_is_deterministic_with_a_seed(model, digits):
    _, _, x, y = digits
    x, y = x[:40], y[:40]
    a = square_attack(model.predict_on_batch, x, y, 0.8, n_queries=30, seed=5, norm="2")
    b = square_attack(model.predict_on_batch, x, y, 0.8, n_queries=30, seed=5, norm="2")
    c = square_attack(model.predict_on_batch, x, y, 0.8, n_queries=30, seed=6, norm="2")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
