"""Free adversarial training: the perturbation's update, the term in ATMCTrainer (delta from the step's own
backward pass, constraints after every replay), minibatch replay, and the record's round trip."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import atmc_tf
from atmc_tf.attacks import FreeATConfig, free_update
from atmc_tf.attacks.pgd import _xent
from atmc_tf.training import ATMCConfig
from atmc_tf.training.data_order import replay
from atmc_tf.training.terms import FreeAdversarialLoss


@settings(deadline=None, max_examples=50)
@given(eps=st.floats(0.0, 0.5), seed=st.integers(0, 10_000))
def test_free_update_stays_in_ball_and_box_and_follows_the_sign(eps, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((4, 3)).astype(np.float32)
    delta = np.clip(rng.uniform(-eps, eps, (4, 3)), -x, 1 - x).astype(np.float32)
    grad = rng.normal(size=(4, 3)).astype(np.float32)
    new = free_update(delta, grad, x, eps).numpy()
    assert np.all(np.abs(new) <= eps + 1e-6)
    assert np.all(x + new >= -1e-6) and np.all(x + new <= 1 + 1e-6)
    assert np.all((new - delta) * np.sign(grad) >= -1e-6)  # never against the gradient's sign


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    return atmc_tf.wrap_model(keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                                keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]))


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (0.2 + 0.6 * rng.random((n, 4, 4, 1))).astype(np.float32), rng.integers(0, 3, n)


def test_the_first_step_sets_delta_from_the_same_backward_pass():
    """From delta = 0 the step's input gradient is the adversarial loss's gradient at x with the weights before
    the step: delta becomes eps * its sign (x well inside the box), for the batch's rows only."""
    attack = FreeATConfig(eps=0.05, replays=2, batch_size=20)
    net = _net()
    x, y = _data()
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss = tf.reduce_sum(_xent(y, net(xt, training=False)))  # no BN or dropout: the same function
    expected = 0.05 * np.sign(tape.gradient(loss, xt).numpy())
    trainer = atmc_tf.ATMCTrainer(net, ATMCConfig(attack=attack, clean_weight=0.0, adv_weight=1.0))
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    term = trainer.terms[-1]
    assert isinstance(term, FreeAdversarialLoss)
    trainer.train_on_batch(x, y)
    delta = term.delta.numpy()
    np.testing.assert_allclose(delta[:16], expected, atol=1e-6)
    np.testing.assert_array_equal(delta[16:], 0.0)


def test_replays_keep_the_constraints_after_every_step():
    """AL0 with free training: after every replay's step the global nonzero budget holds."""
    k = 20
    net = _net(1)
    x, y = _data(40)
    config = atmc_tf.method_config("al0", attack=FreeATConfig(eps=0.05, replays=3, batch_size=8), nnz_budget=k)
    trainer = atmc_tf.ATMCTrainer(net, config)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    counts = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            counts.append(sum(int(np.count_nonzero(v.numpy())) for v in trainer._compressed))

    data = replay(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), 3)
    trainer.fit(data, epochs=1, steps_per_epoch=15, shuffle=False, verbose=0, callbacks=[Count()])
    assert len(counts) == 15 and max(counts) <= k
    assert np.abs(trainer.terms[-1].delta.numpy()).max() > 0  # the perturbation did move


def test_replay_repeats_each_batch_in_a_row():
    ds = replay(tf.data.Dataset.from_tensor_slices((np.arange(3), np.arange(3) * 10)).batch(1), 2)
    assert [(int(a[0]), int(b[0])) for a, b in ds] == [(0, 0), (0, 0), (1, 10), (1, 10), (2, 20), (2, 20)]
    with pytest.raises(ValueError):
        replay(ds, 0)


def test_record_round_trip_and_refusals():
    config = ATMCConfig(attack=FreeATConfig(eps=0.1, replays=4, batch_size=32))
    again = ATMCConfig.from_dict(config.to_dict())
    assert again == config and type(again.components()[0][-1]) is FreeAdversarialLoss
    for bad in (dict(eps=-1.0), dict(eps=0.1, replays=0), dict(eps=0.1, batch_size=0)):
        with pytest.raises(ValueError):
            FreeATConfig(**bad)
    with pytest.raises(ValueError):
        ATMCConfig(attack=FreeATConfig(eps=0.1), distill="ard")
