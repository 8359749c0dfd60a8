"""CatastrophicOverfittingGuard: the collapse rule, stop and restore on a scripted accuracy sequence, and on a
real collapse of PGD accuracy during fit."""
import logging

import keras
import numpy as np
import pytest
from hypothesis import given, strategies as st

import atmc_tf
from atmc_tf.attacks import PGDConfig
from atmc_tf.data import load_dataset
from atmc_tf.training.overfitting import CatastrophicOverfittingGuard, collapsed


@given(best=st.floats(0, 1), acc=st.floats(0, 1), fraction=st.floats(0.05, 1), min_best=st.floats(0, 1))
def test_collapse_rule(best, acc, fraction, min_best):
    assert collapsed(acc, best, fraction, min_best) == (best >= min_best and acc < fraction * best)
    if acc >= best:  # a value at or above the best is never a collapse
        assert not collapsed(acc, best, fraction, min_best)


class Scripted(CatastrophicOverfittingGuard):
    """The guard, with PGD accuracy read from a script instead of measured."""

    def __init__(self, script, **kwargs):
        super().__init__(np.zeros((1, 2), np.float32), [0], attack=None, **kwargs)
        self.script = list(script)

    def robust_accuracy(self):
        return self.script.pop(0)


class MarkWeights(keras.callbacks.Callback):
    """Sets every weight to the epoch's number at its end, before the guard looks (a recognisable state);
    not after a stop (Keras still ends the epoch then, and this would overwrite what the guard restored)."""

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            return
        self.model.set_weights([np.full(w.shape, float(epoch + 1), np.float32) for w in self.model.get_weights()])


def _fit(guard, epochs=6):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((4, 2), np.float32)
    history = model.fit(x, np.zeros(4), epochs=epochs, verbose=0, callbacks=[MarkWeights(), guard])
    return model, len(history.epoch)


@pytest.mark.parametrize("every_steps", [0, 1])
def test_stops_and_restores_the_best_weights_on_a_collapse(every_steps, caplog):
    guard = Scripted([0.3, 0.6, 0.7, 0.65, 0.2, 0.7], every_steps=every_steps)
    with caplog.at_level(logging.WARNING):
        model, epochs_run = _fit(guard)
    assert epochs_run == 5
    if not every_steps:  # checked after the marks of epoch e: the best (0.7) saw epoch 3's
        np.testing.assert_array_equal(model.get_weights()[0], 3.0)
        assert guard.event["best_at"] == "epoch 3" and guard.event["at"] == "epoch 5"
    else:  # one batch per epoch, checked before that epoch's marks: the best saw epoch 2's
        np.testing.assert_array_equal(model.get_weights()[0], 2.0)
        assert guard.event["best_at"] == "epoch 3, batch 1" and guard.event["at"] == "epoch 5, batch 1"
    assert guard.event["accuracy"] == 0.2 and guard.event["best"] == 0.7
    lines = [r.getMessage() for r in caplog.records if "catastrophic overfitting" in r.getMessage()]
    assert lines == [guard.line()] and "restored" in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize("script", [[0.7, 0.5, 0.4, 0.36, 0.36, 0.36],   # a decline, never below half the best
                                    [0.1, 0.04, 0.0, 0.1, 0.02, 0.0]])  # at chance: nothing to collapse from
def test_no_stop_without_a_collapse(script):
    guard = Scripted(script)
    _, epochs_run = _fit(guard)
    assert epochs_run == 6 and guard.event is None and guard.line() is None


def test_refuses_bad_settings():
    with pytest.raises(ValueError):
        CatastrophicOverfittingGuard(np.zeros((1, 2)), [0], None, every_steps=-1)
    with pytest.raises(ValueError):
        CatastrophicOverfittingGuard(np.zeros((1, 2)), [0], None, fraction=0.0)


class LearningRateJump(keras.callbacks.Callback):
    """From epoch `at` on, a learning rate far too large: the model's robustness collapses within a few steps."""

    def __init__(self, at, lr):
        super().__init__()
        self.at, self.lr = at, lr

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            self.model.optimizer.learning_rate.assign(self.lr)


def test_a_real_collapse_is_detected_and_the_best_weights_restored():
    """Adversarial training on digits whose PGD accuracy collapses (a learning-rate jump after 2 epochs); the
    guard measures real PGD accuracy, stops, restores the best epoch's weights, and those weights measure
    as the best did."""
    data = load_dataset("digits")
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    attack = PGDConfig(eps=0.1, steps=3)
    trainer = atmc_tf.ATMCTrainer(atmc_tf.wrap_model(plain), atmc_tf.method_config("da", attack=attack))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    guard = CatastrophicOverfittingGuard(data.x_val[:128], data.y_val[:128], PGDConfig(eps=0.1, steps=5))
    history = trainer.fit(data.x_train, data.y_train, epochs=6, batch_size=64, verbose=0,
                          callbacks=[LearningRateJump(2, 50.0), guard])
    assert guard.event is not None, guard.history
    assert len(history.epoch) < 6
    assert guard.event["accuracy"] < 0.5 * guard.event["best"]
    assert guard.robust_accuracy() == pytest.approx(guard.best)  # the restored weights are the best ones
