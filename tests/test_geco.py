"""The clean target held by a multiplier (terms.CleanTarget, GECO): the update rule on a synthetic
constraint, a tiny adversarial run that first misses and then meets its target, a kill-and-resume,
two replicas, and the config's round trip and refusals."""
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from atmc_tf.attacks import PGDConfig
from atmc_tf.layers import wrap_model
from atmc_tf.training import ATMCConfig, ATMCTrainer, CleanLoss, method_config
from atmc_tf.training.checkpoint import ResumableCheckpoint
from atmc_tf.training.data_order import resumable_batches
from atmc_tf.training.terms import CleanTarget, TERMS
from conftest import Interrupt, interrupt_at, run_script_result


def _mlp(seed=0):
    """No BatchNorm, no Dropout: training mode computes what inference mode does."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])


class PerStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lam, self.constraint = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.lam.append(float(logs["geco_lambda"]))
        self.constraint.append(float(logs["geco_constraint"]))


def _batch_xent(net, x, y, batch):
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return np.array([float(xent(y[i:i + batch], net(x[i:i + batch]))) for i in range(0, len(y), batch)])


@pytest.mark.parametrize("side", ["violated", "slack"])
def test_the_multiplier_follows_the_moving_average_of_the_violation(digits, side):
    """A synthetic constraint: learning rate 0 fixes the weights, so every batch's clean cross-entropy is
    known beforehand. lambda follows log lambda += rate * EMA(C - kappa) exactly (the EMA starting at the
    first step's violation): it rises while C > kappa, falls while C < kappa, and stops at its bounds."""
    x, y = digits[0][:320], digits[1][:320]
    net = _mlp()
    c = _batch_xent(net, x, y, 64)  # ~2.3 nats for an untrained net, different per batch
    kappa = c.mean() - 0.2 if side == "violated" else c.mean() + 0.2
    rate, decay, lam0, bounds = 0.5, 0.6, 0.5, (0.3, 1.2)
    term = CleanTarget(kappa, "xent", rate=rate, decay=decay, lambda_init=lam0, lambda_min=bounds[0],
                       lambda_max=bounds[1])
    trainer = ATMCTrainer(wrap_model(net), terms=[term])
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    steps = PerStep()
    trainer.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0, callbacks=[steps])
    ema, log_lam, expected_lam, expected_c = None, math.log(lam0), [], []
    for value in np.concatenate([c, c]):
        ema = value - kappa if ema is None else decay * ema + (1 - decay) * (value - kappa)
        log_lam = min(max(log_lam + rate * ema, math.log(bounds[0])), math.log(bounds[1]))
        expected_lam.append(math.exp(log_lam))
        expected_c.append(ema + kappa)
    np.testing.assert_allclose(steps.lam, expected_lam, rtol=1e-4)
    np.testing.assert_allclose(steps.constraint, expected_c, rtol=1e-4)
    lam = np.array(steps.lam)
    if side == "violated":
        assert lam[0] > lam0 and np.all(np.diff(lam) >= 0) and lam[-1] == pytest.approx(bounds[1])
    else:
        assert lam[0] < lam0 and np.all(np.diff(lam) <= 0) and lam[-1] == pytest.approx(bounds[0])
    assert int(term.steps.numpy()) == 10


def test_a_tiny_adversarial_run_raises_lambda_while_missing_the_target_then_lowers_it(digits):
    """An untrained MLP misses a 15% clean-error target: lambda rises; once training brings the error
    under it, lambda falls again. The clean loss is what it holds: it ends below the target's side."""
    x, y = digits[0][:640], digits[1][:640]
    config = method_config("da", attack=PGDConfig(0.05, steps=2), clean_target=0.15, clean_target_form="error",
                           geco_rate=0.5)
    trainer = ATMCTrainer(wrap_model(_mlp()), config)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    steps = PerStep()
    history = trainer.fit(x, y, epochs=8, batch_size=64, verbose=0, callbacks=[steps]).history
    lam, constraint = np.array(steps.lam), np.array(steps.constraint)
    peak = int(np.argmax(lam))
    assert lam[peak] > 4 * 0.5, lam  # rose from clean_weight while the error was above 15%
    assert np.all(constraint[:peak] > 0.15 - 0.05)
    assert lam[-1] < 0.5 * lam[peak], lam  # fell back once the target was met
    assert constraint[-1] < 0.15
    assert history["geco_lambda"][-1] == pytest.approx(lam[-1])
    assert {"clean_loss", "clean_acc", "adv_loss", "adv_acc", "geco_constraint"} <= set(history)


def test_a_saturated_multiplier_moves_the_clean_share_not_the_step_size(digits):
    """An unreachable target (1% clean error in 4 epochs) drives lambda to its bound (100) within the first
    epoch. The terms' sum is normalised by (a + lambda_init) / (a + lambda), so with SGD + momentum the run
    trains on (mostly) the clean loss at the first step's total weight and learns. Unnormalised, lambda = 100
    multiplied the step by 200 and the weights blew up (an ATMC-8 Fashion-MNIST run went to chance)."""
    x, y = digits[0][:640], digits[1][:640]
    config = method_config("da", attack=PGDConfig(0.05, steps=2), clean_target=0.01, clean_target_form="error",
                           geco_rate=5.0)
    trainer = ATMCTrainer(wrap_model(_mlp()), config)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    steps = PerStep()
    history = trainer.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[steps]).history
    assert max(steps.lam) == pytest.approx(100.0) and steps.lam[-1] > 50, steps.lam  # saturated, and stayed
    assert all(np.isfinite(w.numpy()).all() for w in trainer.net.trainable_weights)
    assert history["clean_acc"][-1] > 0.85, history["clean_acc"]  # it learned the clean task
    assert history["loss"][-1] < 2 * history["loss"][0]  # the logged loss is the normalised one
    [term] = [t for t in trainer.terms if isinstance(t, CleanTarget)]
    assert float(term.scale()) * (0.5 + float(term.multiplier)) == pytest.approx(0.5 + 0.5)


def _resumable_trainer():
    net = wrap_model(_mlp())
    config = method_config("al0", attack=PGDConfig(0.1, steps=2), nnz_budget=600, clean_target=0.6,
                           clean_target_form="xent", geco_rate=0.3)
    trainer = ATMCTrainer(net, config, seed=3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return trainer


def _fit(trainer, data, directory, epochs, first_epoch=0, callbacks=()):
    x, y = data
    checkpoint = ResumableCheckpoint(str(directory))
    batches, steps = resumable_batches(x, y, 64, seed=5, first_epoch=first_epoch)
    trainer.fit(batches, steps_per_epoch=steps, epochs=epochs, shuffle=False, callbacks=[checkpoint, *callbacks],
                verbose=0)
    return checkpoint


def _state(trainer):
    [term] = [t for t in trainer.terms if isinstance(t, CleanTarget)]
    return float(term.log_lambda.numpy()), float(term.ema.numpy()), int(term.steps.numpy())


def test_the_multiplier_survives_a_kill_and_resume(tmp_path, digits):
    data = digits[0][:192], digits[1][:192]
    whole = _resumable_trainer()
    done = _fit(whole, data, tmp_path / "whole", epochs=3)
    cut = _resumable_trainer()
    with pytest.raises(Interrupt):
        _fit(cut, data, tmp_path / "cut", epochs=3, callbacks=[interrupt_at(2)])
    again = _resumable_trainer()  # a new process: built from scratch, lambda at its initial value
    assert _state(again) == (pytest.approx(math.log(0.5)), 0.0, 0)
    resumed = _fit(again, data, tmp_path / "cut", epochs=3, first_epoch=2)
    assert resumed.resumed_from == 2
    assert _state(again) == _state(whole) and _state(whole)[2] == 9
    assert abs(_state(whole)[0] - math.log(0.5)) > 0.05  # the multiplier moved: the check can fail
    assert resumed.history["geco_lambda"] == done.history["geco_lambda"]
    assert resumed.history["geco_constraint"] == done.history["geco_constraint"]


TWO_REPLICAS = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, sys.argv[1])
from test_geco import _mlp
from atmc_tf.attacks import PGDConfig
from atmc_tf.layers import wrap_model
from atmc_tf.training import ATMCTrainer, method_config
from sklearn.datasets import load_digits
d = load_digits()
x, y = (d.images / 16.0).astype("float32")[..., None][:256], d.target.astype("int64")[:256]

def run(strategy):
    with strategy.scope():
        config = method_config("da", attack=PGDConfig(0.1, steps=2, rand_init=False), clean_target=0.5,
                               clean_target_form="xent", geco_rate=0.5)
        trainer = ATMCTrainer(wrap_model(_mlp()), config, seed=1)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    lam = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: lam.append(float(logs["geco_lambda"])))
    trainer.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0, callbacks=[cb])
    term = trainer.terms[0]
    parts = {n: [float(p.numpy()) for p in getattr(v.value, "values", [v.value])]
             for n, v in (("log_lambda", term.log_lambda), ("ema", term.ema), ("steps", term.steps))}
    weights = [float(abs(v.numpy()).sum()) for v in trainer.net.trainable_weights]
    return {"replicas": strategy.num_replicas_in_sync, "parts": parts, "lam": lam, "weights": weights}

mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single = run(tf.distribute.get_strategy())
print("RESULT " + json.dumps({"mirrored": mirrored, "single": single}))
"""


@pytest.mark.slow
def test_the_multiplier_is_the_same_on_two_replicas_and_that_of_the_global_batch():
    """MirroredStrategy on 2 logical CPUs: each replica sees half of every batch; the violation is
    averaged over replicas, so both hold the same lambda, equal to a one-device run's on the whole batch
    (no random PGD start, no BatchNorm: the two runs compute the same steps up to float round-off).
    Replica 0's shard alone, or a loss divided by the replicas twice, gives another trajectory."""
    result = run_script_result(TWO_REPLICAS)
    mirrored, single = result["mirrored"], result["single"]
    assert mirrored["replicas"] == 2
    for name, parts in mirrored["parts"].items():
        assert len(parts) == 2 and parts[0] == parts[1], (name, parts)
    assert mirrored["parts"]["steps"][0] == 8
    np.testing.assert_allclose(mirrored["lam"], single["lam"], rtol=1e-4)
    # The steps themselves are a one-device run's (each replica's loss is its own shard's mean, not
    # divided by the replicas twice: ATMCTrainer's _per_replica).
    np.testing.assert_allclose(mirrored["weights"], single["weights"], rtol=1e-4)
    assert abs(math.log(single["lam"][-1] / 0.5)) > 0.1  # it moved


def test_config_round_trip_legacy_records_and_refusals():
    attack = PGDConfig(0.1, steps=2)
    config = method_config("atmc", attack=attack, nnz_budget=100, bits=4, clean_target=0.05, clean_target_form="error",
                           geco_rate=0.2, geco_decay=0.5, geco_lambda_min=0.1, geco_lambda_max=10.0, clean_weight=0.3)
    terms, _ = config.components()
    assert [type(t).__name__ for t in terms] == ["CleanTarget", "AdversarialLoss"]
    assert terms[0].get_config() == {"target": 0.05, "form": "error", "rate": 0.2, "decay": 0.5, "lambda_init": 0.3,
                                     "lambda_min": 0.1, "lambda_max": 10.0, "adv_weight": 0.5}
    assert terms[1].weight == 0.5  # the adversarial weight stays; lambda starts at clean_weight
    assert ATMCConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    ard = method_config("al0", attack=attack, nnz_budget=100, distill="ard", clean_target=0.5, clean_target_form="xent")
    assert [type(t).__name__ for t in ard.components()[0]] == ["CleanTarget", "RobustDistillation"]
    # A record from before the fields: today's fixed mix.
    old = {k: v for k, v in method_config("al0", attack=attack, nnz_budget=100).to_dict().items()
           if not (k.startswith("geco_") or k.startswith("clean_target"))}
    legacy = ATMCConfig.from_dict(old)
    assert legacy.clean_target is None
    assert [type(t) for t in legacy.components()[0]][0] is CleanLoss
    assert TERMS["clean_target"] is CleanTarget
    trainer = ATMCTrainer(wrap_model(_mlp()), terms=config.components()[0])
    again = ATMCTrainer.from_config(trainer.get_config())
    assert [repr(t) for t in again.terms] == [repr(t) for t in trainer.terms]

    bad = [
        (dict(clean_target=0.05), "needs an adversarial objective"),  # no attack
        (dict(attack=attack, clean_target=0.05, adv_weight=0.0), "needs an adversarial objective"),
        (dict(attack=attack, clean_target=1.5), "in \\(0, 1\\)"),
        (dict(attack=attack, clean_target=0.0), "in \\(0, 1\\)"),
        (dict(attack=attack, clean_target=0.0, clean_target_form="xent"), "> 0"),
        (dict(attack=attack, clean_target=float("nan"), clean_target_form="xent"), "> 0"),
        (dict(attack=attack, clean_target=0.1, clean_target_form="mse"), "form must be one of"),
        (dict(clean_target_form="mse"), "clean_target_form must be one of"),
        (dict(attack=attack, clean_target=0.1, geco_rate=0.0), "geco_rate"),
        (dict(attack=attack, clean_target=0.1, geco_decay=1.0), "geco_decay"),
        (dict(attack=attack, clean_target=0.1, geco_lambda_min=2.0, geco_lambda_max=1.0), "lambda bounds"),
        (dict(attack=attack, clean_target=0.1, geco_lambda_min=0.0), "lambda bounds"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            ATMCConfig(**kwargs)


def test_lambda_init_is_clipped_into_its_bounds_and_a_zero_clean_weight_starts_at_the_lower_one():
    term = CleanTarget(0.1, lambda_init=0.0, lambda_min=0.05, lambda_max=2.0)
    assert term.lambda_init == 0.05
    assert CleanTarget(0.1, lambda_init=5.0, lambda_max=2.0).lambda_init == 2.0
    trainer = ATMCTrainer(wrap_model(_mlp()), terms=[term])
    assert float(term.multiplier) == pytest.approx(0.05)
    assert float(tf.exp(term.log_lambda)) == pytest.approx(0.05)
    assert trainer.terms[0] is term
