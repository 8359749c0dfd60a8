"""Training against several threat models (terms.MultiThreatLoss): the exact simplex projection and the
APGDA step (properties), the minmax weights' direction on a synthetic setup, their kill-and-resume, MAX's
per-example choice, MSD staying in the union of its balls and the box, and the term's round trip."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from atmc_tf.attacks import MSDConfig, PGDConfig, apgda_step, project_simplex
from atmc_tf.layers import wrap_model
from atmc_tf.training import ATMCTrainer
from atmc_tf.training.checkpoint import ResumableCheckpoint
from atmc_tf.training.data_order import resumable_batches
from atmc_tf.training.terms import CleanLoss, MultiThreatLoss, StepContext, term_from_config, term_to_config
from conftest import Interrupt, interrupt_at

vectors = hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 8)),
                     elements=st.floats(-5, 5, allow_nan=False))


def _reference_simplex(v):
    """Projection onto the simplex by bisection on theta in sum max(v - theta, 0) = 1 (no sort)."""
    out = []
    for row in v:
        lo, hi = row.min() - 1.0, row.max()
        for _ in range(200):
            t = (lo + hi) / 2
            lo, hi = (t, hi) if np.maximum(row - t, 0).sum() > 1 else (lo, t)
        out.append(np.maximum(row - hi, 0))
    return np.array(out)


@settings(deadline=None, max_examples=80)
@given(vectors, st.integers(0, 10 ** 6))
def test_simplex_projection_is_on_the_simplex_idempotent_and_nearest(v, seed):
    p = project_simplex(v).numpy()
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(project_simplex(p).numpy(), p, atol=1e-9)
    np.testing.assert_allclose(p, _reference_simplex(v), atol=1e-9)
    dist = np.linalg.norm(p - v, axis=1)
    rng = np.random.default_rng(seed)
    for _ in range(20):  # no point of the simplex is closer to v
        q = rng.dirichlet(np.ones(v.shape[1]), size=v.shape[0])
        assert np.all(dist <= np.linalg.norm(q - v, axis=1) + 1e-9)


def test_simplex_projection_of_the_authors_example():
    np.testing.assert_allclose(project_simplex([0.5, 0.9, -1.0]).numpy(), [0.3, 0.7, 0.0], atol=1e-7)
    np.testing.assert_allclose(project_simplex([2.0, 2.0]).numpy(), [0.5, 0.5])  # ties: equal weights


@settings(deadline=None, max_examples=60)
@given(st.integers(2, 5), st.integers(0, 10 ** 6), st.floats(0.001, 1.0), st.floats(0.0, 10.0))
def test_the_apgda_step_moves_weight_to_the_domain_with_the_higher_loss(k, seed, step, gamma):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(k))
    losses = rng.uniform(0, 3, size=k)
    new = apgda_step(w, losses, step, gamma).numpy()
    assert np.all(new >= 0) and new.sum() == pytest.approx(1.0)
    g = losses - gamma * (w - 1 / k)  # the ascent direction: the domain where it is largest never loses weight
    assert new[np.argmax(g)] >= w[np.argmax(g)] - 1e-12
    assert new[np.argmin(g)] <= w[np.argmin(g)] + 1e-12
    np.testing.assert_allclose(apgda_step(np.full(k, 1 / k), np.ones(k), step, gamma).numpy(), 1 / k)  # equal: stay


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])


WEAK_STRONG = (PGDConfig(0.01, steps=2), PGDConfig(3.0, steps=2, norm="2"))


def test_minmax_weights_rise_for_the_harder_threat_and_are_logged(digits):
    """Learning rate 0 fixes the net: L_inf at eps 0.01 barely hurts it, L2 at eps 3 hurts it a lot. The
    L2 weight rises every step and its final value is what the metric logs."""
    x, y = digits[0][:256], digits[1][:256]
    term = MultiThreatLoss(WEAK_STRONG, "minmax", weight=1.0, gamma=0.5, step=0.05)
    trainer = ATMCTrainer(wrap_model(_mlp()), terms=[term])
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    history = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0).history
    w = term.domain_weights.numpy()
    assert w.sum() == pytest.approx(1.0) and w[1] > 0.6 > 0.4 > w[0]
    assert np.diff(history["w_l2"]).min() > 0 and history["w_l2"][-1] == pytest.approx(w[1])
    assert history["w_linf"][-1] == pytest.approx(w[0])
    assert history["adv_acc_linf"][-1] > history["adv_acc_l2"][-1]
    assert {"val_w_l2", "val_adv_acc_l1"}.isdisjoint(history)  # no validation data, no val_ metrics
    assert {"adv_loss", "adv_acc", "adv_acc_linf", "adv_acc_l2"} <= set(history)


def test_avg_keeps_equal_weights(digits):
    x, y = digits[0][:128], digits[1][:128]
    term = MultiThreatLoss(WEAK_STRONG, "avg")
    trainer = ATMCTrainer(wrap_model(_mlp()), terms=[CleanLoss(0.5), term])
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    history = trainer.fit(x, y, epochs=1, batch_size=64, verbose=0, validation_data=(x[:64], y[:64])).history
    np.testing.assert_allclose(term.domain_weights.numpy(), 0.5)
    assert history["w_l2"] == [0.5] and history["val_w_linf"] == [0.5]
    assert {"adv_accuracy", "val_adv_acc_l2", "val_adv_acc"} <= set(history)


def _compiled(term, seed=0):
    trainer = ATMCTrainer(wrap_model(_mlp(seed)), terms=[term], seed=1)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    return trainer


def _xent(net, x, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=net(x)).numpy()


def test_max_trains_on_the_worst_of_the_attacks_per_example(digits):
    """Per example, MAX's input is the attack example with the highest loss, and the two attacks both win
    somewhere (L_inf 0.1 and L2 0.6 on a random net), so the choice is really per example."""
    x, y = tf.constant(digits[0][:64]), tf.constant(digits[1][:64])
    term = MultiThreatLoss((PGDConfig(0.1, steps=3), PGDConfig(0.6, steps=3, norm="2")), "max")
    trainer = _compiled(term)
    ctx = StepContext(trainer, x, y)
    term.prepare(ctx)
    advs = term._craft(ctx, False, salt=10)  # the same seeds: the same examples
    losses = np.stack([_xent(trainer.net, a, y) for a in advs], axis=1)
    winner = losses.argmax(axis=1)
    assert 0 < winner.mean() < 1, winner
    expected = np.where(winner[:, None, None, None] == 1, advs[1].numpy(), advs[0].numpy())
    np.testing.assert_array_equal(ctx.inputs["adv"].numpy(), expected)
    np.testing.assert_allclose(_xent(trainer.net, ctx.inputs["adv"], y), losses.max(axis=1), rtol=1e-5)


@settings(deadline=None, max_examples=8)
@given(st.floats(0.02, 0.3), st.floats(0.2, 2.0), st.floats(0.5, 6.0), st.integers(0, 100))
def test_msd_stays_in_the_union_of_its_balls_and_the_box(eps_inf, eps_2, eps_1, seed):
    net = _mlp(seed)
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.random((16, 8, 8, 1)), tf.float32)
    y = tf.constant(rng.integers(0, 10, 16))
    x_adv = MSDConfig(eps_inf, eps_2, eps_1, steps=4).attack(net, x, y)
    d = (x_adv - x).numpy().reshape(16, -1)
    assert np.all(x_adv.numpy() >= 0) and np.all(x_adv.numpy() <= 1)
    tol = 1e-4
    inside = ((np.abs(d).max(axis=1) <= eps_inf + tol) | (np.linalg.norm(d, axis=1) <= eps_2 + tol)
              | (np.abs(d).sum(axis=1) <= eps_1 + tol))
    assert inside.all()
    assert np.all(_xent(net, x_adv, y) >= _xent(net, x, y) - 1e-5)  # never worse than x itself
    assert np.abs(d).max() > 0


def test_msd_is_at_least_as_strong_as_each_of_its_norms_alone(digits):
    """Each single-norm ball lies in MSD's union, so its accuracy must not exceed the lowest single-norm PGD
    accuracy (by more than a small slack: different paths). At these radii the three attacks are of similar
    strength (measured 2026-12-01: L_inf 45%, L2 47%, L1 59%, MSD 44% on 200 test digits)."""
    from atmc_tf.attacks import robust_accuracy
    from conftest import trained_digits_mlp
    net = trained_digits_mlp(digits, epochs=5)
    x, y = digits[2][:200], digits[3][:200]
    singles = [PGDConfig(eps, steps=10, norm=norm, rand_init=False) for eps, norm in ((0.1, "inf"), (0.5, "2"),
                                                                                    (1.0, "1"))]
    msd = MSDConfig(eps_inf=0.1, eps_2=0.5, eps_1=1.0, steps=10, step_inf=singles[0].alpha,
                    step_2=singles[1].alpha, step_1=singles[2].alpha)
    accs = [robust_accuracy(net, x, y, c) for c in (*singles, msd)]
    assert accs[3] <= min(accs[:3]) + 0.02, accs
    assert accs[3] < robust_accuracy(net, x, y, PGDConfig(0.0)) - 0.3, accs  # it hurts at all


def _resumable():
    trainer = ATMCTrainer(wrap_model(_mlp()), terms=[CleanLoss(0.5), MultiThreatLoss(WEAK_STRONG, "minmax",
                                                                                     gamma=0.5, step=0.1)], seed=3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return trainer


def _fit(trainer, data, directory, first_epoch=0, callbacks=()):
    checkpoint = ResumableCheckpoint(str(directory))
    batches, steps = resumable_batches(*data, 64, seed=5, first_epoch=first_epoch)
    trainer.fit(batches, steps_per_epoch=steps, epochs=3, shuffle=False, callbacks=[checkpoint, *callbacks],
                verbose=0)
    return checkpoint


def test_the_domain_weights_survive_a_kill_and_resume(tmp_path, digits):
    data = digits[0][:192], digits[1][:192]
    whole = _resumable()
    done = _fit(whole, data, tmp_path / "whole")
    cut = _resumable()
    with pytest.raises(Interrupt):
        _fit(cut, data, tmp_path / "cut", callbacks=[interrupt_at(2)])
    again = _resumable()  # a new process: the weights at 1/K
    np.testing.assert_allclose(again.terms[1].domain_weights.numpy(), 0.5)
    resumed = _fit(again, data, tmp_path / "cut", first_epoch=2)
    assert resumed.resumed_from == 2
    w = whole.terms[1].domain_weights.numpy()
    assert abs(w[1] - 0.5) > 0.05  # they moved: the check can fail
    np.testing.assert_array_equal(again.terms[1].domain_weights.numpy(), w)
    assert resumed.history["w_l2"] == done.history["w_l2"]


def test_the_term_round_trips_and_refuses_bad_settings():
    term = MultiThreatLoss((PGDConfig(0.3), PGDConfig(2.0, norm="2"), PGDConfig(10.0, norm="1")), "msd",
                           weight=0.7, gamma=2.0, step=0.2)
    again = term_from_config(term_to_config(term))
    assert again.get_config() == term.get_config() and again.names == ("linf", "l2", "l1")
    assert again.msd.radii == {"inf": 0.3, "2": 2.0, "1": 10.0} and again.msd.steps == 7
    assert MultiThreatLoss((PGDConfig(0.1), PGDConfig(0.2))).names == ("linf", "linf_2")
    for bad in (dict(weighting="mean"), dict(gamma=-1.0), dict(step=0.0), dict(gamma=math.inf)):
        with pytest.raises(ValueError):
            MultiThreatLoss((PGDConfig(0.1),), **bad)
    with pytest.raises(ValueError, match="distinct norms"):
        MultiThreatLoss((PGDConfig(0.1), PGDConfig(0.2)), "msd")
    with pytest.raises(ValueError):
        MSDConfig()


THREATS = (PGDConfig(0.1, steps=2), PGDConfig(0.5, steps=2, norm="2"), PGDConfig(1.0, steps=2, norm="1"))


def test_the_config_builds_the_term_and_round_trips():
    from atmc_tf.training import ATMCConfig, method_config
    config = method_config("atmc", threats=THREATS, nnz_budget=300, bits=4, domain_weighting="max",
                           minmax_gamma=2.0, minmax_step=0.1, adv_weight=0.6)
    terms, _ = config.components()
    assert isinstance(terms[1], MultiThreatLoss) and terms[1].weighting == "max" and terms[1].weight == 0.6
    assert terms[1].names == ("linf", "l2", "l1") and config.attack is None
    d = config.to_dict()
    assert d["threats"][2] == {"kind": "pgd", "eps": 1.0, "steps": 2, "step_size": None, "norm": "1",
                               "rand_init": True, "restarts": 1, "clip_min": 0.0, "clip_max": 1.0}
    assert ATMCConfig.from_dict(d) == config and ATMCConfig.from_dict(d).threats == THREATS
    old = {k: v for k, v in method_config("da", attack=PGDConfig(0.1)).to_dict().items()
           if k not in ("threats", "domain_weighting", "minmax_gamma", "minmax_step")}
    terms, _ = ATMCConfig.from_dict(old).components()  # a record from before the fields: one attack
    assert type(terms[1]).__name__ == "AdversarialLoss"
    assert method_config("nap", threats=THREATS, nnz_budget=10).threats is None
    for bad in (dict(domain_weighting="worst"), dict(minmax_gamma=-1.0), dict(minmax_step=0.0),
                dict(distill="ard"), dict(threats=())):
        with pytest.raises(ValueError):
            method_config("da", attack=PGDConfig(0.1), **{"threats": THREATS, **bad})
    with pytest.raises(ValueError, match="needs a PGDConfig attack"):
        method_config("da")


@pytest.mark.parametrize("weighting", ["minmax", "msd"])
def test_multi_threat_training_under_the_atmc_constraints(digits, weighting):
    """ATMC (global L0 + 4-bit codebook) with the three threats: the constraints hold after fit and the
    weights are logged; the term is independent of the constraints."""
    from atmc_tf.constraints import count_nonzero
    from atmc_tf.training import method_config
    x, y = digits[0][:192], digits[1][:192]
    config = method_config("atmc", threats=THREATS, nnz_budget=400, bits=2, domain_weighting=weighting)
    trainer = ATMCTrainer(wrap_model(_mlp()), config)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0, validation_data=(x[:64], y[:64])).history
    values = trainer._values()
    assert int(count_nonzero(values)) <= 400
    for v in values:  # codebook_int8: at most 2^b values per output channel (its own fp32 scale)
        flat = v.numpy().reshape(-1, v.shape[-1])
        assert max(len(np.unique(flat[:, c])) for c in range(flat.shape[1])) <= 4
    assert {"val_adv_acc_linf", "val_adv_acc_l2", "val_adv_acc_l1"} <= set(history)
    if weighting == "minmax":
        w = [history[f"w_{n}"][-1] for n in ("linf", "l2", "l1")]
        assert sum(w) == pytest.approx(1.0, abs=1e-5) and max(w) - min(w) > 1e-3  # moved, on the simplex


def test_union_accuracy_counts_an_example_only_if_every_attack_fails():
    """A predictor that reads the label off the image's first pixel: each 'threat' flips a known set of
    examples; the union is wrong wherever any threat (or the clean image) is."""
    from atmc_tf.attacks import union_accuracy
    y = np.arange(10) % 3
    x = y[:, None].astype(np.float32)

    def predict(images):
        return np.eye(3)[np.asarray(images)[:, 0].astype(int)]

    a, b = x.copy(), x.copy()
    a[[0, 1]] = (a[[0, 1]] + 1) % 3  # threat a fools examples 0, 1
    b[[1, 5, 7]] = (b[[1, 5, 7]] + 2) % 3  # threat b fools 1, 5, 7
    wrong_clean = x.copy()
    wrong_clean[9] = (wrong_clean[9] + 1) % 3
    res = union_accuracy(predict, wrong_clean, y, {"a": a, "b": b}, batch_size=4)
    assert res.per_attack == {"a": 0.8, "b": 0.7} and res.clean == 0.9
    assert res.worst_case == pytest.approx(0.5) and res.robust.tolist() == [i in (2, 3, 4, 6, 8) for i in range(10)]


TWO_REPLICAS = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, sys.argv[1])
from test_multi_threat import _mlp
from atmc_tf.attacks import PGDConfig
from atmc_tf.layers import wrap_model
from atmc_tf.training import ATMCTrainer, method_config
from sklearn.datasets import load_digits
d = load_digits()
x, y = (d.images / 16.0).astype("float32")[..., None][:256], d.target.astype("int64")[:256]
threats = (PGDConfig(0.02, steps=2, rand_init=False), PGDConfig(2.0, steps=2, norm="2", rand_init=False))

def run(strategy):
    with strategy.scope():
        config = method_config("da", threats=threats, domain_weighting="minmax", minmax_gamma=0.5, minmax_step=0.1)
        trainer = ATMCTrainer(wrap_model(_mlp()), config, seed=1)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    trainer.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
    w = trainer.terms[1].domain_weights
    return {"replicas": strategy.num_replicas_in_sync,
            "parts": [p.numpy().tolist() for p in getattr(w.value, "values", [w.value])]}

mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single = run(tf.distribute.get_strategy())
print("RESULT " + json.dumps({"mirrored": mirrored, "single": single}))
"""


@pytest.mark.slow
def test_the_domain_weights_are_the_same_on_two_replicas_and_those_of_the_global_batch():
    """MirroredStrategy on 2 logical CPUs, each replica with half of every batch: the per-threat losses are
    averaged over replicas before the update, so both replicas hold the same weights, a one-device run's."""
    from conftest import run_script_result
    result = run_script_result(TWO_REPLICAS)
    mirrored, single = result["mirrored"], result["single"]
    assert mirrored["replicas"] == 2 and len(mirrored["parts"]) == 2
    assert mirrored["parts"][0] == mirrored["parts"][1]
    np.testing.assert_allclose(mirrored["parts"][0], single["parts"][0], rtol=1e-4)
    assert abs(single["parts"][0][1] - 0.5) > 0.05  # moved
