"""The L1 threat model: exact projections (ball; ball intersected with the pixel box), the sparse
step, the random start, and L1 PGD staying in its ball and box while it hurts a trained model."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from atmc_tf.attacks import PGDConfig, APGDConfig
from atmc_tf.attacks.l1 import l1_step, project_l1_ball, project_l1_box, random_l1
from conftest import trained_digits_mlp

batches = hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 12)),
                     elements=st.floats(-3, 3, allow_nan=False, width=32))


def _reference_ball(v, eps):
    """Projection onto the L1 ball by bisection on the soft threshold (independent of the sort)."""
    out = []
    for row in v.astype(np.float64):
        if np.abs(row).sum() <= eps:
            out.append(row)
            continue
        lo, hi = 0.0, np.abs(row).max()
        for _ in range(200):
            t = (lo + hi) / 2
            lo, hi = (t, hi) if np.maximum(np.abs(row) - t, 0).sum() > eps else (lo, t)
        out.append(np.sign(row) * np.maximum(np.abs(row) - hi, 0))
    return np.array(out)


@settings(deadline=None, max_examples=60)
@given(batches, st.floats(0.01, 5.0))
def test_ball_projection_is_exact_and_idempotent(v, eps):
    p = project_l1_ball(v, eps).numpy()
    np.testing.assert_allclose(p, _reference_ball(v, eps), atol=1e-4)
    slack = 1e-6 * np.abs(v).sum(axis=1) + 1e-6  # float32 round-off of the soft threshold
    assert np.all(np.abs(p).sum(axis=1) <= eps + slack)
    np.testing.assert_allclose(project_l1_ball(p, eps).numpy(), p, atol=1e-5)


@settings(deadline=None, max_examples=60)
@given(batches, st.floats(0.01, 5.0), st.integers(0, 10 ** 6))
def test_box_projection_is_feasible_and_no_farther_than_any_feasible_point(v, eps, seed):
    rng = np.random.default_rng(seed)
    x = rng.random(v.shape).astype(np.float32)  # the image; the box of d is [-x, 1 - x]
    lo, hi = -x, 1 - x
    p = project_l1_box(v, eps, lo, hi).numpy()
    assert np.all(np.abs(p).sum(axis=1) <= eps + 1e-6 * np.abs(v).sum(axis=1) + 1e-5)
    assert np.all(p >= lo - 1e-6) and np.all(p <= hi + 1e-6)
    # the projection is the closest feasible point: no random feasible point (or the ball-then-clip
    # point) is closer to v
    dist = np.linalg.norm(p - v, axis=1)
    ball_then_clip = np.clip(project_l1_ball(v, eps).numpy(), lo, hi)
    assert np.all(dist <= np.linalg.norm(ball_then_clip - v, axis=1) + 1e-4)
    for _ in range(20):
        q = project_l1_ball(rng.normal(size=v.shape).astype(np.float32) * eps, eps).numpy()
        q = np.clip(q, lo, hi)
        assert np.all(dist <= np.linalg.norm(q - v, axis=1) + 1e-4)


def test_box_projection_differs_from_ball_then_clip():
    """Where the box cuts, clipping after the ball projection wastes budget; the exact one spends it."""
    v = np.array([[2.0, 2.0]], np.float32)
    lo, hi = np.array([[-1.0, -1.0]], np.float32), np.array([[0.5, 2.0]], np.float32)
    exact = project_l1_box(v, 2.0, lo, hi).numpy()
    np.testing.assert_allclose(exact, [[0.5, 1.5]], atol=1e-5)
    np.testing.assert_allclose(np.clip(project_l1_ball(v, 2.0).numpy(), lo, hi), [[0.5, 1.0]], atol=1e-5)


def test_sparse_step_has_unit_l1_norm_on_the_largest_free_coordinates():
    g = tf.constant([[0.1, -5.0, 3.0, 0.2, -0.3, 4.0, 0.0, 0.0, 0.0, 0.0]])
    x = tf.constant([[0.5, 0.5, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])  # coordinate 2 at the top edge
    step = l1_step(g, x, 0.0, 1.0, sparsity=0.8).numpy()  # top 2 of 10
    np.testing.assert_allclose(step, [[0, -0.5, 0, 0, 0, 0.5, 0, 0, 0, 0]])


def test_random_start_fills_the_ball():
    x = tf.zeros([2000, 4])
    d = random_l1(x, 2.0, seed=tf.constant([1, 2])).numpy()
    norms = np.abs(d).sum(axis=1)
    assert norms.max() <= 2.0 + 1e-5 and norms.min() < 1.0  # uniform in volume: inside, not only on the sphere
    np.testing.assert_array_equal(d, random_l1(x, 2.0, seed=tf.constant([1, 2])).numpy())


def test_l1_pgd_stays_in_ball_and_box_and_hurts_a_trained_model(digits):
    x, y = digits[2][:100], digits[3][:100]
    model = trained_digits_mlp(digits)
    clean = np.mean(np.argmax(model(x), -1) == y)
    x_adv = PGDConfig(eps=4.0, steps=20, norm="1").attack(lambda z: model(z, training=False), x, y,
                                                           seed=tf.constant([0, 1])).numpy()
    assert np.all(np.abs(x_adv - x).reshape(len(x), -1).sum(axis=1) <= 4.0 + 1e-3)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    robust = np.mean(np.argmax(model(x_adv), -1) == y)
    noise = np.clip(x + random_l1(tf.constant(x), 4.0, seed=tf.constant([3, 4])).numpy(), 0, 1)
    assert robust < clean - 0.2 and robust < np.mean(np.argmax(model(noise), -1) == y) - 0.2, (clean, robust)
    assert np.mean(np.count_nonzero(np.abs(x_adv - x) > 1e-6, axis=(1, 2, 3))) < x[0].size  # sparse


def test_apgd_refuses_l1():
    with pytest.raises(ValueError, match="norm must be one of"):
        APGDConfig(eps=1.0, norm="1")
