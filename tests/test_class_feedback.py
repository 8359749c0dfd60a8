"""Class-balanced adversarial generation (terms.ClassBalancedAdversarialLoss + training.ClassFeedback): the
update rule, the weights following a synthetic per-class error through fit, reweight = the plain
adversarial loss at uniform weights, resample's expected share, a kill-and-resume, and the config."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from atmc_tf.attacks import PGDConfig, per_class_accuracy
from atmc_tf.layers import constraint_scope, wrap_model
from atmc_tf.training import ATMCConfig, ATMCTrainer, method_config
from atmc_tf.training.checkpoint import ResumableCheckpoint
from atmc_tf.training.class_feedback import ClassFeedback
from atmc_tf.training.data_order import resumable_batches
from atmc_tf.training.terms import TERMS, AdversarialLoss, ClassBalancedAdversarialLoss, StepContext
from atmc_tf.training.terms.class_feedback import feedback_update
from conftest import Interrupt, interrupt_at

ATTACK = PGDConfig(0.1, steps=2, rand_init=False)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])


def _trainer(term, net=None):
    trainer = ATMCTrainer(wrap_model(net or _mlp()), terms=[term], seed=0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    return trainer


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12), st.floats(0.1, 10.0), st.floats(1.05, 20.0))
def test_the_update_keeps_mean_one_and_orders_the_weights_as_the_errors(errors, rate, bound):
    """From uniform weights the new weights have mean 1, are ordered as the errors (more error, more
    weight), equal where the errors are equal, and lie within [1/bound, bound] up to the normalisation."""
    err = np.array(errors)
    w = feedback_update(np.ones(len(err)), err, rate, bound)
    assert w.mean() == pytest.approx(1.0)
    order = np.argsort(err, kind="stable")
    assert np.all(np.diff(w[order]) >= -1e-12)
    if np.ptp(err) == 0:
        np.testing.assert_allclose(w, 1.0)
    elif np.ptp(err) > 1e-3:
        assert w[np.argmax(err)] > w[np.argmin(err)]
    scale = np.clip(np.exp(rate * (err - err.mean())) / np.exp(rate * (err - err.mean())).mean(), 1 / bound,
                    bound).mean()
    assert np.all(w >= 1 / bound / scale - 1e-9) and np.all(w <= bound / scale + 1e-9)


def test_a_class_absent_from_validation_moves_only_with_the_normalisation():
    w = feedback_update([1.0, 1.0, 1.0], [0.5, np.nan, 0.1], 1.0, 5.0)
    assert w[0] > w[1] > w[2]
    acc = per_class_accuracy([True, False, True], [0, 0, 2], 3)
    assert acc[0] == 0.5 and np.isnan(acc[1]) and acc[2] == 1.0


class Synthetic(ClassFeedback):
    """Per-class robust accuracy fixed beforehand: class 3 is the weak one."""

    ACC = np.array([0.9, 0.8, 0.85, 0.2, 0.9, 0.7, 0.9, 0.8, 0.75, 0.6])

    def measure(self, epoch):
        return self.ACC.copy()


def test_class_weights_follow_a_synthetic_per_class_error_through_fit(digits):
    """One update when the fresh run starts and one per epoch end: three updates of the rule over two
    epochs, logged per epoch; the class with the most error gains the most weight."""
    x, y = digits[0][:128], digits[1][:128]
    term = ClassBalancedAdversarialLoss(ATTACK, mode="reweight", rate=1.5, bound=4.0)
    trainer = _trainer(term)
    history = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[Synthetic(x, y)]).history
    expected, logged = np.ones(10), []
    for _ in range(3):
        expected = feedback_update(expected, 1 - Synthetic.ACC, 1.5, 4.0)
        logged.append(expected)
    np.testing.assert_allclose(term.class_weights.numpy(), expected, rtol=1e-5)
    assert int(term.updates.numpy()) == 3
    assert int(np.argmax(expected)) == 3 and expected[3] > 2 and expected.mean() == pytest.approx(1.0)
    np.testing.assert_allclose([history[f"class_weight_{c}"] for c in range(10)], np.array(logged[1:]).T, rtol=1e-5)
    assert history["feedback_worst_class"] == [3.0, 3.0] and history["feedback_worst_robust_acc"] == [0.2, 0.2]


def test_the_measured_feedback_is_the_per_class_robust_accuracy(digits):
    """Without the synthetic stand-in: the callback's measurement is the per-class accuracy on the PGD
    examples of the validation split, and the weights move from it."""
    x, y, xv, yv = digits[0][:384], digits[1][:384], digits[2][:200], digits[3][:200]
    term = ClassBalancedAdversarialLoss(ATTACK, mode="reweight")
    trainer = ATMCTrainer(wrap_model(_mlp()), terms=[term], seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0, validation_data=(xv, yv)).history
    net = trainer.net
    x_adv = ATTACK.attack(lambda z: net(z, training=False), tf.constant(xv), tf.constant(yv))
    correct = np.argmax(net(x_adv, training=False).numpy(), -1) == yv
    acc = per_class_accuracy(correct, yv, 10)
    np.testing.assert_allclose([history[f"feedback_robust_acc_{c}"][-1] for c in range(10)], acc, atol=1e-6)
    assert np.ptp(acc) > 0.2 and np.ptp(term.class_weights.numpy()) > 0.1
    assert history["feedback_worst_class"][-1] == float(np.argmin(acc))


def _step_loss(term, net, x, y, weights=None):
    trainer = _trainer(term, net)
    if weights is not None:
        term.class_weights.assign(np.asarray(weights, np.float32))
    ctx = StepContext(trainer, tf.constant(x), tf.constant(y))
    with constraint_scope():
        term.prepare(ctx)
        return float(term.loss(ctx)), ctx


def test_reweight_is_the_plain_adversarial_loss_at_uniform_weights_and_a_weighted_mean_otherwise(digits):
    x, y = digits[0][:64], digits[1][:64]
    net = _mlp()
    plain, ctx = _step_loss(AdversarialLoss(ATTACK, weight=0.7), net, x, y)
    balanced, _ = _step_loss(ClassBalancedAdversarialLoss(ATTACK, weight=0.7, mode="reweight"), net, x, y)
    assert balanced == pytest.approx(plain, rel=1e-6)
    w = np.linspace(0.3, 2.0, 10)
    weighted, _ = _step_loss(ClassBalancedAdversarialLoss(ATTACK, weight=0.7, mode="reweight"), net, x, y, w)
    per_example = keras.losses.sparse_categorical_crossentropy(y, net(ctx.inputs["adv"]), from_logits=True).numpy()
    expected = 0.7 * np.sum(w[y] * per_example) / np.sum(w[y])
    assert weighted == pytest.approx(expected, rel=1e-5) and abs(weighted - plain) > 1e-3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.8, 1.2), min_size=10, max_size=10), st.lists(st.integers(0, 9), min_size=4, max_size=64),
       st.floats(0.05, 0.5))
def test_resample_keeps_the_expected_share_of_every_batch(weights, labels, share):
    """p_i = share * w[y_i] / mean_batch(w[y]): its batch mean is `share` whatever the class mix (no clip at
    1 here: w[y] / mean <= 1.2 / 0.8 and share <= 0.5; with weights 0.5 and 1.75 it would clip, as
    hypothesis found in CI), and a heavier class is attacked more often."""
    term = ClassBalancedAdversarialLoss(ATTACK, mode="resample", share=share)
    term.class_weights = tf.constant(weights, tf.float32)
    y = np.array(labels)
    p = term.attack_probabilities(type("Ctx", (), {"y": tf.constant(y)})).numpy()
    assert p.mean() == pytest.approx(share, rel=1e-5)
    w = np.array(weights)[y]
    assert np.all((np.diff(p[np.argsort(w)]) >= -1e-7))


def test_resample_attacks_each_class_as_often_as_its_weight_says(digits):
    """On a real step: attacked examples carry the PGD example, the others their clean input; the
    attacked share is `share` overall and follows the weights per class."""
    x, y = digits[0], digits[1]
    w = np.where(np.arange(10) == 3, 1.9, 0.9)
    w = w / w.mean()
    _, ctx = _step_loss(ClassBalancedAdversarialLoss(PGDConfig(0.1, steps=1), mode="resample", share=0.4), _mlp(),
                        x, y, w)
    adv, clean = ctx.inputs["adv"].numpy(), x
    attacked = np.any(adv != clean, axis=(1, 2, 3))
    assert attacked.mean() == pytest.approx(0.4, abs=0.04)
    assert float(ctx.inputs["adv_share"]) == pytest.approx(attacked.mean(), abs=0.01)  # PGD moves nearly every example
    p = 0.4 * w[y] / w[y].mean()
    assert attacked[y == 3].mean() == pytest.approx(p[y == 3][0], abs=0.12)
    assert attacked[y != 3].mean() == pytest.approx(p[y != 3][0], abs=0.05)


def _resumable_trainer():
    config = method_config("al0", attack=PGDConfig(0.1, steps=2), nnz_budget=600, class_feedback="resample",
                           class_feedback_rate=3.0)
    trainer = ATMCTrainer(wrap_model(_mlp()), config, seed=3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return trainer


def _fit(trainer, data, directory, epochs, first_epoch=0, callbacks=()):
    x, y, xv, yv = data
    checkpoint = ResumableCheckpoint(str(directory))
    batches, steps = resumable_batches(x, y, 64, seed=5, first_epoch=first_epoch)
    trainer.fit(batches, steps_per_epoch=steps, epochs=epochs, shuffle=False, validation_data=(xv, yv),
                callbacks=[checkpoint, *callbacks], verbose=0)
    return checkpoint


def _state(trainer):
    [term] = [t for t in trainer.terms if isinstance(t, ClassBalancedAdversarialLoss)]
    return term.class_weights.numpy().tolist(), int(term.updates.numpy())


def test_the_class_weights_survive_a_kill_and_resume(tmp_path, digits):
    """The feedback callback is put before the checkpoint (it is listed after it here), so every
    epoch's checkpoint holds the weights the next epoch trains with; the resumed run does not measure
    again at its start and ends where an uninterrupted one does (GlobalL0 holds throughout)."""
    data = digits[0][:192], digits[1][:192], digits[2][:120], digits[3][:120]
    whole = _resumable_trainer()
    done = _fit(whole, data, tmp_path / "whole", epochs=3)
    cut = _resumable_trainer()
    with pytest.raises(Interrupt):
        _fit(cut, data, tmp_path / "cut", epochs=3, callbacks=[interrupt_at(2)])
    again = _resumable_trainer()
    assert _state(again) == ([1.0] * 10, 0)
    resumed = _fit(again, data, tmp_path / "cut", epochs=3, first_epoch=2)
    assert resumed.resumed_from == 2
    assert _state(again)[1] == _state(whole)[1] == 4
    np.testing.assert_allclose(_state(again)[0], _state(whole)[0], rtol=1e-6)
    assert np.ptp(_state(whole)[0]) > 0.1  # the weights moved: the check can fail
    for c in range(10):
        assert resumed.history[f"class_weight_{c}"] == pytest.approx(done.history[f"class_weight_{c}"], rel=1e-6)
    assert int(np.count_nonzero(np.concatenate([v.numpy().ravel() for v in again._compressed]))) <= 600


def test_config_round_trip_legacy_records_refusals_and_quantization(digits):
    config = method_config("atmc", attack=ATTACK, nnz_budget=800, bits=3, class_feedback="reweight",
                           class_feedback_rate=0.5, class_feedback_bound=3.0, class_feedback_share=0.25)
    terms, constraints = config.components()
    assert [type(t).__name__ for t in terms] == ["CleanLoss", "ClassBalancedAdversarialLoss"]
    assert {k: v for k, v in terms[1].get_config().items() if k != "attack"} == {
        "weight": 0.5, "bn_training": False, "mode": "reweight", "rate": 0.5, "bound": 3.0, "share": 0.25}
    assert [type(c).__name__ for c in constraints] == ["GlobalL0", "Quantization"]
    assert ATMCConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in config.to_dict().items() if not k.startswith("class_feedback")}
    legacy = ATMCConfig.from_dict(old)
    assert legacy.class_feedback == "off" and type(legacy.components()[0][1]) is AdversarialLoss
    assert TERMS["class_feedback"] is ClassBalancedAdversarialLoss
    # Composes with the ATMC constraints: a tiny run ends with at most 800 nonzeros and at most 2^3 values
    # per output channel of every kernel (codebook_int8: the int8 lattice, per-channel scales).
    x, y, xv, yv = digits[0][:128], digits[1][:128], digits[2][:100], digits[3][:100]
    trainer = ATMCTrainer(wrap_model(_mlp()), config)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    trainer.fit(x, y, epochs=1, batch_size=64, verbose=0, validation_data=(xv, yv))
    values = [v.numpy() for v in trainer._compressed]
    assert sum(int(np.count_nonzero(v)) for v in values) <= 800
    assert all(len(np.unique(v[..., c])) <= 8 for v in values for c in range(v.shape[-1]))
    assert max(len(np.unique(v)) for v in values) > 8  # per channel, not per tensor: the check can fail
    assert int(trainer.terms[1].updates.numpy()) == 2
    again = ATMCTrainer.from_config(trainer.get_config())
    assert [repr(t) for t in again.terms] == [repr(t) for t in trainer.terms]
    with pytest.raises(ValueError, match="validation split"):
        ATMCTrainer(wrap_model(_mlp()), config).fit(x, y, epochs=1, verbose=0)

    bad = [
        (dict(class_feedback="fair"), "class_feedback must be one of"),
        (dict(class_feedback="reweight"), "needs the one-attack adversarial cross-entropy"),  # no attack
        (dict(attack=ATTACK, class_feedback="reweight", adv_weight=0.0), "needs the one-attack adversarial"),
        (dict(attack=ATTACK, class_feedback="resample", distill="ard"), "needs the one-attack adversarial"),
        (dict(attack=ATTACK, class_feedback="reweight", threats=(ATTACK, ATTACK)), "no threats"),
        (dict(attack=ATTACK, class_feedback="reweight", class_feedback_rate=0.0), "rate must be > 0"),
        (dict(attack=ATTACK, class_feedback="reweight", class_feedback_bound=0.5), "bound must be >= 1"),
        (dict(attack=ATTACK, class_feedback="resample", class_feedback_share=0.0), "share"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            ATMCConfig(**kwargs)


TWO_REPLICAS = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, sys.argv[1])
from test_class_feedback import _mlp
from atmc_tf.attacks import PGDConfig
from atmc_tf.layers import wrap_model
from atmc_tf.training import ATMCTrainer, method_config
from sklearn.datasets import load_digits
d = load_digits()
x, y = (d.images / 16.0).astype("float32")[..., None], d.target.astype("int64")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    config = method_config("da", attack=PGDConfig(0.1, steps=2), class_feedback="resample", class_feedback_rate=2.0)
    trainer = ATMCTrainer(wrap_model(_mlp()), config, seed=1)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
history = trainer.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0, validation_data=(x[1500:], y[1500:])).history
term = trainer.terms[1]
parts = [p.numpy().tolist() for p in getattr(term.class_weights.value, "values", [term.class_weights.value])]
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "parts": parts,
                               "logged": [history[f"class_weight_{c}"][-1] for c in range(10)],
                               "share": history["adv_share"]}))
"""


@pytest.mark.slow
def test_the_class_weights_are_the_same_on_two_replicas():
    """MirroredStrategy on 2 logical CPUs: the callback's update (outside the step, in the strategy's
    scope) writes both replicas' copies of the weights, and the resample mask runs per replica."""
    from conftest import run_script_result
    result = run_script_result(TWO_REPLICAS)
    assert result["replicas"] == 2 and len(result["parts"]) == 2
    assert result["parts"][0] == result["parts"][1]
    np.testing.assert_allclose(result["parts"][0], result["logged"], rtol=1e-6)
    assert np.ptp(result["parts"][0]) > 0.1
    assert all(0.3 < s < 0.7 for s in result["share"])
