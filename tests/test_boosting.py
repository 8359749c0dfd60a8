"""The boosting loop's pieces: the cost-sensitive term, the one-graph ensemble, resume between rounds."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import atmc_tf  # noqa: F401  (registers the Keras classes)
from atmc_tf.attacks import PGDConfig
from atmc_tf.boosting.ensemble import WeightedSum, build_ensemble, named_learner
from atmc_tf.boosting.loop import STATE_FILE, BoostConfig, boost
from atmc_tf.models import build_model
from atmc_tf.training.terms import TERMS, CostSensitiveAdversarialLoss, term_from_config, term_to_config
from atmc_tf.training.terms.cost_sensitive import pack_costs, pairwise_cost_loss


def test_pairwise_cost_loss_weighs_each_wrong_class_by_its_cost():
    logits = tf.constant([[2.0, 0.0, 1.0]])
    labels = tf.constant([0])
    costs = tf.constant([[5.0, 1.0, 0.0]])          # the label's own entry is ignored
    expected = 1.0 * np.log1p(np.exp(0.0 - 2.0))
    np.testing.assert_allclose(pairwise_cost_loss(labels, costs, logits).numpy(), [expected], rtol=1e-6)
    # The costlier class pulls harder: raising class 2's cost raises the loss by its softplus.
    more = pairwise_cost_loss(labels, tf.constant([[5.0, 1.0, 3.0]]), logits).numpy()
    np.testing.assert_allclose(more - expected, [3.0 * np.log1p(np.exp(1.0 - 2.0))], rtol=1e-6)


def test_pack_costs_scales_to_one_per_example_and_keeps_labels():
    y = np.array([2, 0])
    c = np.array([[0.1, 0.3, -0.4], [-0.6, 0.2, 0.4]])
    packed = pack_costs(y, c)
    assert packed[:, 0].tolist() == [2.0, 0.0]
    assert np.isclose(packed[:, 1:].sum(), 2.0) and packed[:, 1:].min() >= 0


def test_cost_sensitive_term_is_registered_and_round_trips():
    term = CostSensitiveAdversarialLoss(PGDConfig(eps=0.1, steps=2), weight=0.7)
    assert TERMS["cost_sensitive"] is CostSensitiveAdversarialLoss
    back = term_from_config(term_to_config(term))
    assert back.get_config() == term.get_config()


def test_learner_trains_against_the_costs_under_its_budget(digits):
    """Costs on class 1 only: the trained learner's budget holds and it learns class 1 from the rest."""
    from atmc_tf.boosting.loop import train_learner
    x, y = digits[0][:600], digits[1][:600]
    keep = y < 3
    x, y = x[keep], y[keep]
    costs = np.zeros((len(y), 10))
    costs[np.arange(len(y)), np.where(y == 1, 0, 1)] = 1.0   # errs cost only when class 1 beats the label...
    costs[y == 1] = 0.0
    costs[y == 1, 0] = costs[y == 1, 2] = 1.0                # ... or class 0 / 2 beats a true 1
    config = BoostConfig(rounds=1, epochs=3, size_ratio=0.3, attack=PGDConfig(eps=0.05, steps=1), lr=1e-2)
    learner = train_learner(lambda s: build_model("mlp", x.shape[1:], 10, seed=s), x, y, costs, config, 0)
    kernels = [l.kernel.numpy() for l in learner.layers if hasattr(l, "kernel")]
    total = sum(k.size for k in kernels)
    assert sum(int(np.count_nonzero(k)) for k in kernels) <= round(0.3 * total)
    pred = learner.predict(x, verbose=0).argmax(-1)
    assert np.mean(pred[y == 1] == 1) > 0.8 and np.mean(pred[y != 1] != 1) > 0.8


def test_a_heavily_pruned_learner_from_random_init_keeps_every_layer_and_gets_an_edge(digits):
    """Issue 24's collapse: an MLP learner at size ratio 0.01 (189 of 18,944 weights), uniform first-round
    costs. The paper's magnitude top-k gives fc1 (the smaller Glorot init) no weight: every path is cut, the
    learner is at chance and its edge is ~0. The default layer-adaptive scoring keeps a path and learns."""
    from atmc_tf.boosting import costs as boosting_costs
    from atmc_tf.boosting.loop import _adversarial, _softmax, cut_layers, train_learner
    x, y = digits[0], digits[1]
    costs = boosting_costs.cost_matrix(np.zeros((len(y), 10)), y)
    found = {}
    for scoring in (BoostConfig.l0_scoring, "magnitude"):
        config = BoostConfig(rounds=1, epochs=6, size_ratio=0.01, attack=PGDConfig(eps=0.05, steps=1), lr=3e-2,
                             l0_scoring=scoring)
        learner = train_learner(lambda s: build_model("mlp", x.shape[1:], 10, seed=s), x, y, costs, config, 0)
        edge = boosting_costs.edge(costs, _softmax(learner, _adversarial(learner, x, y, config.attack, 0)), y)
        found[scoring] = (cut_layers(learner), float(np.mean(learner.predict(x, verbose=0).argmax(-1) == y)), edge)
    assert BoostConfig.l0_scoring == "lamp"
    cut, acc, edge = found["lamp"]
    assert cut == [] and acc > 0.25 and edge > 0.05, found
    cut, acc, edge = found["magnitude"]
    assert cut == ["fc1"] and acc < 0.15 and edge < 0.01, found


def test_boost_collapse_is_reported_when_no_learner_votes_or_the_ensemble_is_at_chance():
    from pipelines.boost import collapse_problem
    fine = [{"round": 1, "alpha": 0.3, "cut": []}, {"round": 2, "alpha": 0.0, "cut": ["fc1"]}]
    assert collapse_problem(fine, 0.8, 10) is None
    line = collapse_problem([{"round": 1, "alpha": 0.0, "cut": ["fc1"]}, {"round": 2, "alpha": 0.0, "cut": []}], 0.1, 10)
    assert line.startswith("the boosted ensemble collapsed: no learner has a robust edge")
    assert "at chance (10%)" in line and "learner 1: fc1" in line
    assert "at chance" in collapse_problem(fine, 0.15, 10)


def test_boost_config_refuses_an_unknown_scoring_or_ramp():
    with pytest.raises(ValueError, match="scoring"):
        BoostConfig(l0_scoring="random")
    with pytest.raises(ValueError, match="l0_ramp"):
        BoostConfig(l0_ramp=1.5)


def test_ensemble_is_one_serializable_graph_of_weighted_softmaxes(tmp_path):
    learners = [named_learner(build_model("mlp", (8, 8, 1), 10, seed=s), s) for s in range(2)]
    ensemble = build_ensemble(learners, [0.25, 1.5])
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    want = sum(a / 1.75 * keras.ops.softmax(m(x)).numpy() for a, m in zip([0.25, 1.5], learners))
    np.testing.assert_allclose(ensemble(x).numpy(), want, rtol=1e-5, atol=1e-6)
    ensemble.save(tmp_path / "e.keras")
    back = keras.saving.load_model(tmp_path / "e.keras")
    np.testing.assert_allclose(back(x).numpy(), want, rtol=1e-5, atol=1e-6)
    uniform = build_ensemble(learners, [0.0, 0.0])          # no positive weight yet: the learners' average
    np.testing.assert_allclose(uniform(x).numpy(), sum(0.5 * keras.ops.softmax(m(x)).numpy() for m in learners),
                               rtol=1e-5, atol=1e-6)
    layer = WeightedSum.from_config(WeightedSum([0.5, 2.0], name="w").get_config())
    assert layer.coefficients == [0.5, 2.0]


class _Killed(Exception):
    pass


def _run(workdir, data, rounds, kill_round=None):
    x, y, xt, yt = data

    def make_learner(seed):
        if kill_round is not None and seed == kill_round:        # round kill_round's learner: die mid-round
            raise _Killed()
        return build_model("mlp", x.shape[1:], 10, seed=seed)

    config = BoostConfig(rounds=rounds, epochs=2, size_ratio=0.5, attack=PGDConfig(eps=0.1, steps=2), lr=1e-2)
    return boost(make_learner, x, y, xt, yt, config, str(workdir), log=lambda line: None)


def test_a_run_killed_in_round_two_resumes_there_and_gives_the_same_result(tmp_path, digits):
    x, y = digits[0], digits[1]
    data = (x[:160], y[:160], x[160:220], y[160:220])
    tf.config.experimental.enable_op_determinism()
    whole = _run(tmp_path / "whole", data, rounds=2)
    with pytest.raises(_Killed):
        _run(tmp_path / "killed", data, rounds=2, kill_round=1)
    state = json.loads((tmp_path / "killed" / STATE_FILE).read_text())
    assert [r["round"] for r in state["rounds"]] == [1]
    assert not os.path.exists(tmp_path / "killed" / "learner_1.keras")
    resumed = _run(tmp_path / "killed", data, rounds=2)
    untimed = lambda rounds: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rounds]  # noqa: E731
    assert untimed(resumed.rounds) == untimed(whole.rounds)
    assert all(r["alpha"] > 0 for r in whole.rounds)
    np.testing.assert_array_equal(resumed.ensemble.predict(data[2], verbose=0),
                                  whole.ensemble.predict(data[2], verbose=0))
    with pytest.raises(ValueError, match="another boosting config"):
        boost(lambda s: None, *data, BoostConfig(rounds=2, epochs=3), str(tmp_path / "killed"))


def test_the_ensemble_ships_as_one_int8_file_that_litert_and_tflite_micro_run(digits):
    """Two trained learners as one .tflite: LiteRT within 1 point of Keras, TFLite Micro within one int8
    step of LiteRT, the compressed microcontroller file bit-identical, device bytes counted."""
    from atmc_tf.boosting.export import check_ensemble, export_ensemble
    x, y, xt, yt = digits
    learners = []
    for s in range(2):
        keras.utils.set_random_seed(s)
        m = build_model("mlp", x.shape[1:], 10, seed=s)
        m.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x[s * 300:(s + 1) * 300], y[s * 300:(s + 1) * 300], epochs=5, batch_size=64, verbose=0)
        learners.append(named_learner(m, s))
    ensemble = build_ensemble(learners, [0.4, 0.9])
    files = export_ensemble(ensemble, x[:200])
    check = check_ensemble(ensemble, files, xt, yt, micro_samples=4)
    assert check["keras_clean_acc"] > 0.8
    assert abs(check["tflite_clean_acc"] - check["keras_clean_acc"]) <= 0.01
    assert check["ops"].count("SOFTMAX") == 2 and "ADD" in check["ops"]     # both branches in one graph
    assert check["micro"]["ok"], check["micro"]["error"]
    assert check["micro"]["max_abs_diff_vs_litert"] <= check["micro"]["max_step_diff"]
    assert check["micro_compressed"]["ok"], check["micro_compressed"]["error"]
    assert check["device_bytes"]["litert"] == len(files["tflite"])
    assert check["device_bytes"]["tflm"] == len(files["tflite_mcu"])


def test_micro_tolerance_is_one_softmax_step_in_output_steps_plus_one():
    """TFLM may move each learner's Softmax by one 1/256 step; the weights sum to 1, so the scores move by at
    most 1/256 plus the output's rounding: in steps of an output quantized finely (a narrow calibrated
    range), that is several steps; at the softmax's own scale, two."""
    from atmc_tf.boosting.export import micro_step_tolerance
    assert micro_step_tolerance(1 / 256) == 2
    assert micro_step_tolerance(0.000954014714807272) == 6        # a pipeline ensemble's output scale
    assert micro_step_tolerance(1 / 128) == 2
