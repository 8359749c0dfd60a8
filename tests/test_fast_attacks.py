"""FGSM with random start and N-FGSM: where their examples lie, determinism given the seed, and that the step hurts."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from atmc_tf.attacks import FGSMRSConfig, NFGSMConfig, PGDConfig, attack_from_dict, attack_to_dict
from atmc_tf.attacks.pgd import _xent

MODEL = None


def _model():
    """A tiny linear model: its cross-entropy is convex in x, so a step along the gradient's sign raises it."""
    global MODEL
    if MODEL is None:
        keras.utils.set_random_seed(0)
        MODEL = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    return MODEL


def _batch(seed, lo=0.0, hi=1.0, n=6):
    rng = np.random.default_rng(seed)
    return (lo + (hi - lo) * rng.random((n, 4, 4, 1))).astype(np.float32), rng.integers(0, 3, n)


@settings(deadline=None, max_examples=40)
@given(eps=st.floats(0.0, 0.5), ratio=st.floats(0.1, 3.0), seed=st.integers(0, 10_000))
def test_fgsm_rs_stays_in_ball_and_box(eps, ratio, seed):
    x, y = _batch(seed)
    xa = FGSMRSConfig(eps=eps, step_size=max(ratio * eps, 1e-6)).attack(_model(), x, y, seed=[seed, 1]).numpy()
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.abs(xa - x).max() <= eps * (1 + 1e-5) + 1e-6


@settings(deadline=None, max_examples=40)
@given(eps=st.floats(0.0, 0.3), k=st.floats(0.0, 3.0), seed=st.integers(0, 10_000))
def test_n_fgsm_stays_in_box_and_within_k_plus_one_eps(eps, k, seed):
    x, y = _batch(seed)
    xa = NFGSMConfig(eps=eps, noise_scale=k).attack(_model(), x, y, seed=[seed, 1]).numpy()
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    assert np.abs(xa - x).max() <= (k + 1) * eps * (1 + 1e-5) + 1e-6


def test_n_fgsm_goes_beyond_the_eps_ball_and_fgsm_rs_does_not():
    """Away from the box's edges N-FGSM's noise (2 eps) plus its step (eps) leaves the eps-ball: no projection."""
    x, y = _batch(0, 0.4, 0.6, n=32)
    eps = 0.05
    far = np.abs(NFGSMConfig(eps=eps).attack(_model(), x, y, seed=[3, 4]).numpy() - x).max()
    near = np.abs(FGSMRSConfig(eps=eps).attack(_model(), x, y, seed=[3, 4]).numpy() - x).max()
    assert 2 * eps < far <= 3 * eps + 1e-6
    assert near <= eps + 1e-6


@pytest.mark.parametrize("config", [FGSMRSConfig(eps=0.1), NFGSMConfig(eps=0.1)])
def test_deterministic_given_the_seed(config):
    x, y = _batch(1)
    a = config.attack(_model(), x, y, seed=tf.constant([7, 8], tf.int64)).numpy()
    b = config.attack(_model(), x, y, seed=tf.constant([7, 8], tf.int64)).numpy()
    c = config.attack(_model(), x, y, seed=tf.constant([7, 9], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    traced = tf.function(lambda xb, yb: config.attack(_model(), xb, yb, seed=tf.constant([7, 8], tf.int64)))
    np.testing.assert_allclose(traced(tf.constant(x), tf.constant(y)).numpy(), a, atol=1e-6)


@pytest.mark.parametrize("config", [FGSMRSConfig(eps=0.1), NFGSMConfig(eps=0.1), FGSMRSConfig(eps=0.1, step_size=0.02)])
def test_the_step_raises_the_loss_over_its_random_start(config):
    """Inside the box, every coordinate moves along the gradient's sign (the ball's clip only shortens a move),
    so by convexity of a linear model's cross-entropy no example's loss falls and the batch's rises."""
    x, y = _batch(2, 0.35, 0.65, n=16)
    seed = tf.constant([5, 6], tf.int64)
    radius = config.eps * getattr(config, "noise_scale", 1.0)
    start = x + tf.random.stateless_uniform(x.shape, seed, -radius, radius).numpy()
    xa = config.attack(_model(), x, y, seed=seed).numpy()
    before, after = _xent(y, _model()(start)).numpy(), _xent(y, _model()(xa)).numpy()
    assert np.all(after >= before - 1e-5)
    assert after.mean() > before.mean() + 1e-3


@pytest.mark.parametrize("config", [FGSMRSConfig(eps=0.1, step_size=0.2), NFGSMConfig(eps=0.1, noise_scale=1.5)])
def test_registry_round_trip(config):
    assert attack_from_dict(attack_to_dict(config)) == config


@pytest.mark.parametrize("bad", [dict(eps=-0.1), dict(eps=float("nan")), dict(eps=0.1, step_size=0.0),
                                 dict(eps=0.1, clip_min=1.0, clip_max=0.0)])
def test_refuses_bad_settings(bad):
    for cls in (FGSMRSConfig, NFGSMConfig):
        with pytest.raises(ValueError):
            cls(**bad)
    with pytest.raises(ValueError):
        NFGSMConfig(eps=0.1, noise_scale=-1.0)


class _Identity:
    """An 'attack' that returns the clean batch."""

    eps = 0.0

    def attack(self, model_fn, x, y, seed=None):
        return x


@dataclasses.dataclass(frozen=True)
class _ValidatedClean(FGSMRSConfig):
    @property
    def validation_attack(self):
        return _Identity()


def test_validation_metrics_attack_with_the_named_validation_attack():
    """The trainer's validation adv metrics use validation_attack (PGD-7 for the fast attacks), never the fast
    attack itself: with a validation attack that returns the clean batch, adv equals clean."""
    from atmc_tf.layers import wrap_model
    from atmc_tf.training import ATMCTrainer, AdversarialLoss, CleanLoss
    assert FGSMRSConfig(eps=0.1).validation_attack == PGDConfig(eps=0.1, steps=7)
    assert NFGSMConfig(eps=0.2).validation_attack == PGDConfig(eps=0.2, steps=7)
    x, y = _batch(4, n=32)
    trainer = ATMCTrainer(wrap_model(_model()), terms=[CleanLoss(0.5), AdversarialLoss(_ValidatedClean(eps=0.3))])
    trainer.compile(optimizer="sgd")
    logs = trainer.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["adv_loss"] == pytest.approx(logs["clean_loss"]) and logs["adv_acc"] == logs["clean_acc"]
