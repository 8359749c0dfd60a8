"""APGD-CE / APGD-DLR: stays in the ball and the box, the paper's checkpoints, a scale-free DLR loss,
at least as strong as PGD with as many steps, the worst case over attacks, and works traced."""
import fractions
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given, settings, strategies as st

from atmc_tf.attacks import (APGDConfig, PGDConfig, adversarial_examples, apgd, apgd_checkpoints,
                             attack_from_dict, attack_to_dict, correct_under_attack, dlr_loss, robust_accuracy,
                             worst_case_accuracy)
from conftest import trained_digits_mlp


def _tiny_model(features, classes=4):
    """A fixed random two-layer tanh network on `features` inputs, pure TF."""
    rng = np.random.default_rng(features)
    w1 = tf.constant(rng.normal(size=(features, 8)), tf.float32)
    w2 = tf.constant(rng.normal(size=(8, classes)), tf.float32)
    return lambda x: tf.tanh(tf.reshape(x, [-1, features]) @ w1) @ w2


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(0.0, 0.5), n=st.integers(1, 4), h=st.integers(2, 5), w=st.integers(2, 5),
       c=st.integers(1, 3), loss=st.sampled_from(["ce", "dlr"]), norm=st.sampled_from(["inf", "2"]),
       steps=st.integers(1, 5), restarts=st.integers(1, 2), seed=st.integers(0, 1000))
def test_stays_in_ball_and_box(eps, n, h, w, c, loss, norm, steps, restarts, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, h, w, c)).astype(np.float32)
    y = rng.integers(0, 4, n)
    xa = apgd(_tiny_model(h * w * c), x, y, eps=eps, steps=steps, loss=loss, norm=norm, restarts=restarts,
              seed=[seed, 0]).numpy()
    assert xa.shape == x.shape and xa.min() >= 0.0 and xa.max() <= 1.0
    d = (xa - x).reshape(n, -1)
    size = np.abs(d).max(axis=1) if norm == "inf" else np.linalg.norm(d, axis=1)
    assert np.all(size <= eps * (1 + 1e-5) + 1e-6)


def test_box_other_than_unit():
    x = np.full((3, 2, 2, 1), -0.5, np.float32)
    xa = APGDConfig(eps=0.8, steps=3, clip_min=-1.0, clip_max=-0.2).attack(_tiny_model(4), x, [0, 1, 2]).numpy()
    assert xa.min() >= -1.0 and xa.max() <= -0.2 and np.abs(xa - x).max() <= 0.8 + 1e-6


@settings(max_examples=40, deadline=None)
@given(logits=st.lists(st.lists(st.floats(-10, 10), min_size=5, max_size=5), min_size=1, max_size=4),
       classes=st.integers(3, 5), scale=st.floats(0.01, 100), shift=st.floats(-100, 100), data=st.data())
def test_dlr_is_invariant_to_scaling_and_shifting_the_logits(logits, classes, scale, shift, data):
    z = np.array(logits)[:, :classes]
    top = -np.sort(-z, axis=1)
    assume(np.all(top[:, 0] - top[:, 2] > 1e-3))  # away from the 1e-12 guard
    y = np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=len(z), max_size=len(z))))
    np.testing.assert_allclose(dlr_loss(y, scale * z + shift).numpy(), dlr_loss(y, z).numpy(), rtol=1e-7, atol=1e-9)


def test_dlr_values_and_class_count():
    z = np.array([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]])
    np.testing.assert_allclose(dlr_loss([0, 2], z).numpy(), [-2 / 3, 1.0])
    with pytest.raises(ValueError, match="3 classes"):
        dlr_loss([0], np.zeros((1, 2)))


def _paper_checkpoints(n):
    """ceil(p_j * n) from p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), exact."""
    f = fractions.Fraction
    prev, cur, out = f(0), f(22, 100), []
    while cur <= 1:
        out.append(math.ceil(cur * n))
        prev, cur = cur, cur + max(cur - prev - f(3, 100), f(6, 100))
    return sorted({w for w in out if w > 0})


def test_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for n in (1, 2, 5, 7, 10, 33, 50, 250, 1000):
        marks = apgd_checkpoints(n)
        assert marks == _paper_checkpoints(n), n
        assert all(0 < a < b <= n for a, b in zip(marks, marks[1:])) and marks[-1] <= n


@pytest.fixture(scope="module")
def model(digits):
    return trained_digits_mlp(digits)


def test_at_least_as_strong_as_pgd_with_as_many_steps(model, digits):
    _, _, x, y = digits
    x, y = x[:200], y[:200]
    pgd_acc = robust_accuracy(model, x, y, PGDConfig(eps=0.1, steps=10))
    apgd_acc = robust_accuracy(model, x, y, APGDConfig(eps=0.1, steps=10))
    dlr_acc = robust_accuracy(model, x, y, APGDConfig(eps=0.1, steps=10, loss="dlr"))
    clean = float(np.mean(np.argmax(model(x), axis=-1) == y))
    assert clean > 0.9 and pgd_acc < clean - 0.2, (clean, pgd_acc)
    assert apgd_acc <= pgd_acc + 0.02, (apgd_acc, pgd_acc)
    assert dlr_acc <= pgd_acc + 0.02, (dlr_acc, pgd_acc)


def test_worst_case_is_below_every_attack(model, digits):
    _, _, x, y = digits
    x, y = x[:150], y[:150]
    attacks = [PGDConfig(eps=0.08, steps=10), APGDConfig(eps=0.08, steps=10),
               APGDConfig(eps=0.08, steps=10, loss="dlr")]
    result = worst_case_accuracy(model, x, y, attacks, batch_size=64)
    assert list(result.per_attack) == ["pgd", "apgd", "apgd_2"]
    assert result.worst_case <= min(result.clean, *result.per_attack.values())
    assert result.worst_case == pytest.approx(result.robust.mean()) and 0 < result.worst_case < result.clean
    assert result.as_dict()["worst_case"] == result.worst_case
    named = worst_case_accuracy(model, x, y, {"apgd-ce": attacks[1]}, batch_size=64)
    assert list(named.per_attack) == ["apgd-ce"]


def test_misclassified_examples_stay_misclassified(model, digits):
    """APGD returns x where the model is already wrong: robust implies clean-correct, per example."""
    _, _, x, y = digits
    x, y = x[:100], y[:100].copy()
    y[:10] = (y[:10] + 1) % 10  # wrong labels: the model is "wrong" on these clean
    robust = correct_under_attack(model, x, y, APGDConfig(eps=0.05, steps=5), batch_size=64)
    clean = np.argmax(model(x), axis=-1) == y
    assert not np.any(robust & ~clean)


def test_works_in_tf_function_and_through_adversarial_examples(model, digits):
    _, _, x, y = digits
    x, y = x[:70], y[:70]
    cfg = APGDConfig(eps=0.1, steps=8, restarts=2)
    traced = tf.function(lambda xb, yb, s: cfg.attack(model, xb, yb, seed=s))
    a, b = traced(x, y, tf.constant([1, 2])).numpy(), traced(x, y, tf.constant([1, 2])).numpy()
    c = traced(x, y, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and np.abs(a - x).max() <= 0.1 + 1e-6
    xa = adversarial_examples(model, x, y, cfg, batch_size=32)  # the short last batch too
    assert xa.shape == x.shape and xa.min() >= 0.0 and xa.max() <= 1.0 and np.abs(xa - x).max() <= 0.1 + 1e-6
    clean = float(np.mean(np.argmax(model(x), axis=-1) == y))
    assert float(np.mean(np.argmax(model(xa), axis=-1) == y)) < clean - 0.2
    assert robust_accuracy(model, x, y, cfg, batch_size=32) < clean - 0.2


def test_registry_round_trip():
    cfg = APGDConfig(eps=0.03, steps=50, loss="dlr", norm="2", restarts=3, rho=0.7, clip_min=-1.0)
    assert attack_to_dict(cfg)["kind"] == "apgd"
    assert attack_from_dict(attack_to_dict(cfg)) == cfg


@pytest.mark.parametrize("kwargs", [dict(eps=-0.1), dict(eps=0.1, steps=0), dict(eps=0.1, norm="1"),
                                    dict(eps=0.1, loss="hinge"), dict(eps=0.1, restarts=0),
                                    dict(eps=0.1, rho=0.0), dict(eps=0.1, clip_min=1.0), dict(eps=float("nan"))])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        APGDConfig(**kwargs)
