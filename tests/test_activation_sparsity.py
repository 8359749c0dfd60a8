"""WinnersTakeAll / ActivationThreshold: exactly k per sample, channel rule, gradients, round trips."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import atmc_tf
from atmc_tf.layers import (ActivationThreshold, WinnersTakeAll, insert_activation_sparsity, sparsity_layers,
                            straight_through_copy, winners_count)

# integer-valued entries make ties common, which is where "exactly k" is hard. No subnormals: TensorFlow's
# CPU kernels flush them to zero (hypothesis found [-1e-45, 0]: a tie for TF, not for NumPy)
entries = st.one_of(st.floats(-4, 4, allow_nan=False, allow_subnormal=False, width=32),
                    st.integers(-2, 2).map(float))
shapes = st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                   hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=4))
densities = st.floats(0.01, 1.0)


def _scores(x):
    return x.max(axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x


@settings(deadline=None, max_examples=60)
@given(hnp.arrays(np.float32, shapes, elements=entries), densities)
def test_keeps_exactly_k_winners_per_sample(x, density):
    layer = WinnersTakeAll(density)
    out = keras.ops.convert_to_numpy(layer(x))
    n = x.shape[-1]
    k = winners_count(density, n)
    assert int(keras.ops.convert_to_numpy(layer.winners())) == k
    kept = (out == x).all(axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else out == x
    # a unit that is kept passes unchanged, a dropped one is exactly zero
    dropped_zero = (out == 0).all(axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else out == 0
    scores = _scores(x)
    for b in range(x.shape[0]):
        # rank order: larger score first, lower index first among equals
        order = sorted(range(n), key=lambda i: (-scores[b, i], i))
        want = np.zeros(n, bool)
        want[order[:k]] = True
        assert (kept[b] | ~want).all() and (dropped_zero[b] | want).all()
        # exactly k: a winner whose values are all 0 still counts as kept (out == x) and as zero
        assert want.sum() == k


@settings(deadline=None, max_examples=60)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40), elements=entries),
       densities)
def test_topk_form_equals_the_pairwise_ranks(s, density):
    """Keras computes the mask with top_k + a count of the ties (O(n log k)); the export's pairwise ranks give
    the same mask, ties included, with k as a tensor (the scheduled density)."""
    from atmc_tf.layers.activation_sparsity import topk_winners_mask, winners_mask
    k = tf.constant(float(winners_count(density, s.shape[-1])))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(topk_winners_mask(s, k)),
                                  keras.ops.convert_to_numpy(winners_mask(s, k)))


def test_k_rule_counts_float_rounding_as_the_integer():
    assert winners_count(0.3, 10) == 3 and winners_count(0.31, 10) == 4
    assert winners_count(0.01, 5) == 1 and winners_count(1.0, 7) == 7
    layer = WinnersTakeAll(0.3)
    layer.build((None, 10))
    assert int(keras.ops.convert_to_numpy(layer.winners())) == 3


def test_conv_maps_keep_whole_channels_by_their_peak():
    rng = np.random.default_rng(0)
    x = rng.random((3, 5, 5, 8)).astype(np.float32)
    x[:, :, :, 6] += 10.0            # channel 6 always wins
    x[0, 0, 0, 2] = 100.0            # one large pixel: channel 2's peak wins in sample 0
    out = keras.ops.convert_to_numpy(WinnersTakeAll(0.25)(x))    # k = 2 of 8 channels
    for b in range(3):
        kept = [c for c in range(8) if np.array_equal(out[b, :, :, c], x[b, :, :, c])]
        zero = [c for c in range(8) if not out[b, :, :, c].any()]
        assert len(kept) == 2 and len(zero) == 6 and 6 in kept
        assert kept == sorted(np.argsort(-x[b].max(axis=(0, 1)))[:2].tolist())
    assert 2 in [c for c in range(8) if out[0, :, :, c].any()]


def test_gradient_flows_through_winners_only_and_straight_through_is_identity():
    x = tf.constant(np.random.default_rng(1).random((4, 10)).astype(np.float32))
    for straight_through in (False, True):
        layer = WinnersTakeAll(0.3, straight_through=straight_through)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = tf.reduce_sum(out * 3.0)
        grad = tape.gradient(loss, x).numpy()
        mask = out.numpy() != 0
        assert mask.sum() == 4 * 3
        if straight_through:
            np.testing.assert_array_equal(grad, np.full_like(grad, 3.0))
        else:
            np.testing.assert_array_equal(grad, 3.0 * mask)
    assert not layer.trainable_weights


def test_threshold_zeroes_small_magnitudes_and_its_variable_can_be_scheduled():
    layer = ActivationThreshold(0.5)
    x = np.array([[0.2, 0.5, 0.7, -0.9]], np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), np.array([[0, 0, 0.7, -0.9]], np.float32))
    layer.threshold.assign(0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    with pytest.raises(ValueError):
        ActivationThreshold(-1.0)
    with pytest.raises(ValueError):
        WinnersTakeAll(0.0)


def _cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="conv2d"),
                             keras.layers.Flatten(name="flatten"), keras.layers.Dense(12, name="dense"),
                             keras.layers.ReLU(name="re_lu"), keras.layers.Dense(10, activation="relu", name="dense_1")])   # a fused activation on the logits


def test_insert_after_every_activation_never_after_the_logits(tmp_path):
    plain = _cnn()
    net = insert_activation_sparsity(plain, "wta", 0.5)
    assert [layer.name for layer in net.layers] == ["conv2d", "conv2d_wta", "flatten", "dense", "re_lu",
                                                   "re_lu_wta", "dense_1"]
    inp = keras.Input((8, 8, 1))
    functional = keras.Model(inp, plain.layers[-1](plain.layers[-2](plain.layers[-3](plain.layers[-4](
        plain.layers[-5](inp))))))
    fnet = insert_activation_sparsity(functional, "threshold", threshold=0.1)
    assert [type(layer).__name__ for layer in sparsity_layers(fnet)] == ["ActivationThreshold"] * 2
    x = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(insert_activation_sparsity(plain, "wta", 1.0)(x)),
                               keras.ops.convert_to_numpy(plain(x)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        insert_activation_sparsity(net, "wta", 0.5)
    with pytest.raises(ValueError):
        insert_activation_sparsity(plain, "dropout", 0.5)
    wrapped = atmc_tf.wrap_model(net)   # the layers pass through wrap_model
    assert len(sparsity_layers(wrapped)) == 2


@pytest.mark.parametrize("mode", ["wta", "threshold"])
def test_save_and_load_with_safe_mode_keeps_config_and_scheduled_value(tmp_path, mode):
    net = insert_activation_sparsity(_cnn(), mode, density=0.25, threshold=0.3)
    net = straight_through_copy(net)
    for layer in sparsity_layers(net):
        (layer.density if mode == "wta" else layer.threshold).assign(0.625)
        assert layer.__class__.from_config(layer.get_config()).get_config() == layer.get_config()
    path = str(tmp_path / "m.keras")
    net.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x)), keras.ops.convert_to_numpy(net(x)))
    for old, new in zip(sparsity_layers(net), sparsity_layers(back)):
        assert new.get_config() == old.get_config() and new.straight_through
        assert new.get_weights()[0] == pytest.approx(0.625)


class _Densities(keras.callbacks.Callback):
    def __init__(self, layer):
        super().__init__()
        self.layer, self.seen = layer, []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(float(keras.ops.convert_to_numpy(self.layer.density)))


def test_density_ramps_cubically_to_the_target_under_global_l0_and_quantization(digits):
    """WTA inside PGD training with GlobalL0 + Quantization: the density follows the cubic ramp from
    1 to the target, the weights meet the budget, and each sample keeps exactly k neurons."""
    x, y = digits[0][:256], digits[1][:256]
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    net = atmc_tf.wrap_model(insert_activation_sparsity(plain, "wta", 0.25))
    budget = atmc_tf.dense_weight_count(plain) // 4
    config = atmc_tf.method_config("atmc", attack=atmc_tf.PGDConfig(eps=0.1, steps=2), nnz_budget=budget, bits=4,
                                   activation_ramp_steps=4)
    trainer = atmc_tf.ATMCTrainer(net, config)
    (wta,) = sparsity_layers(net)
    assert float(keras.ops.convert_to_numpy(wta.density)) == 1.0    # dense at step 0
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    seen = _Densities(wta)
    trainer.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[seen])
    want = [0.25 + 0.75 * (1 - min(t / 4, 1)) ** 3 for t in range(1, 9)]
    np.testing.assert_allclose(seen.seen, want, rtol=1e-6)
    kernels = [w.effective_kernel() for w in atmc_tf.layers.atmc_wrappers(net)]
    assert sum(int(np.count_nonzero(keras.ops.convert_to_numpy(k))) for k in kernels) <= budget
    hidden = keras.Model(net.inputs, net.get_layer(wta.name).output)(x)
    assert (np.count_nonzero(keras.ops.convert_to_numpy(hidden), axis=1) <= winners_count(0.25, 32)).all()
    with pytest.raises(ValueError, match="no WinnersTakeAll"):
        atmc_tf.ATMCTrainer(atmc_tf.wrap_model(plain), config)


def _masked_toy():
    """h = relu(sum(x) - 1.5) gated by a threshold 0.85, logits [1, 10 h]: at x = 0.5 h = 0.5 is
    zeroed, so the gradient is 0 in a neighbourhood, yet eps = 0.1 reaches h = 0.9 > 0.85."""
    inp = keras.Input((4,))
    hidden = keras.layers.Dense(1, activation="relu")
    gate = ActivationThreshold(0.85)
    head = keras.layers.Dense(2)
    net = keras.Model(inp, head(gate(hidden(inp))))
    hidden.set_weights([np.ones((4, 1), np.float32), np.array([-1.5], np.float32)])
    head.set_weights([np.array([[0.0, 10.0]], np.float32), np.array([1.0, 0.0], np.float32)])
    return net


def test_bpda_pgd_sees_through_a_threshold_that_masks_plain_pgd():
    from atmc_tf.export import masking_aware_robustness
    x = np.full((16, 4), 0.5, np.float32)
    y = np.zeros(16, np.int64)
    result = masking_aware_robustness(_masked_toy(), x, y, atmc_tf.PGDConfig(eps=0.1, steps=10))
    assert result["plain"] == 1.0                   # plain PGD's gradient is zero: masked
    assert result["bpda"] == 0.0 and result["robust"] == 0.0 and result["worst_case"] == 0.0


def test_densities_and_effective_macs_follow_the_winners():
    from atmc_tf.export import activation_densities, count_macs, effective_macs
    net = insert_activation_sparsity(_cnn(), "wta", 0.5)
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    dens = activation_densities(net, x)
    assert set(dens) == {"conv2d_wta", "re_lu_wta"}
    for d in dens.values():
        assert d["target"] == 0.5 and d["unit_density"] <= 0.5 + 1e-9 and d["density"] <= d["unit_density"]
    total, per_layer = effective_macs(net, x)
    # conv2d reads the raw image (density 1); dense reads the 2-of-4-channel map; dense_1 the 6-of-12 ReLU
    assert per_layer["conv2d"]["input_density"] == pytest.approx(float(np.count_nonzero(x)) / x.size)
    assert per_layer["dense"]["input_density"] == pytest.approx(dens["conv2d_wta"]["density"])
    assert per_layer["dense_1"]["input_density"] == pytest.approx(dens["re_lu_wta"]["density"])
    assert total < count_macs(net) and sum(v["macs"] for v in per_layer.values()) == count_macs(net)


@pytest.mark.parametrize("mode", ["wta", "threshold"])
def test_int8_tflite_keeps_the_sparsification_and_runs_on_litert_and_tflite_micro(digits, mode):
    """The exported masks are builtins TFLM runs (the winners counted in float32 -> QUANTIZE -> int8 SUM,
    since TFLM's SUM has no int32); int8_problem accepts the BOOL masks; .tflite within 1 point of Keras."""
    from atmc_tf.export import LiteRTModel, check_micro, int8_problem, op_names, to_int8_tflite
    x, y, xt, yt = digits
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    net = insert_activation_sparsity(plain, mode, density=0.5, threshold=0.05)
    net.compile(optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for layer in sparsity_layers(net):   # dense first, then at the target (what the schedule does)
        (layer.density if mode == "wta" else layer.threshold).assign(1.0 if mode == "wta" else 0.0)
    net.fit(x, y, epochs=3, batch_size=64, verbose=0)
    for layer in sparsity_layers(net):
        (layer.density if mode == "wta" else layer.threshold).assign(0.5 if mode == "wta" else 0.05)
    net.fit(x, y, epochs=2, batch_size=64, verbose=0)
    keras_acc = float((net.predict(xt, verbose=0).argmax(1) == yt).mean())
    tfl = to_int8_tflite(net, x[:200], batch_size=1)
    assert int8_problem(tfl) is None
    ops = set(op_names(tfl))
    assert "SELECT_V2" in ops and "TOPK_V2" not in ops
    lite = LiteRTModel(tfl)
    assert abs(float((lite.predict(xt).argmax(1) == yt).mean()) - keras_acc) <= 0.01
    assert keras_acc > 0.5
    xq = lite.quantize_input(xt[:120])
    micro = check_micro(tfl, xq, lite.predict_int8(xq))
    assert micro.ok, micro.error
    # The fake-quant twin reads the masks' ops from the file (REDUCE_MAX, the ranks' comparisons and int8
    # SUM, SELECT_V2; ABS for thresholds) and agrees with LiteRT; PGD through it hurts the file itself.
    from atmc_tf.attacks import PGDConfig
    from atmc_tf.export.twin import fake_quant_twin, twin_agreement, twin_attack
    twin = fake_quant_twin(tfl)
    assert twin_agreement(twin, lite, xt) >= 0.98
    x_adv = twin_attack(tfl, xt[:120], yt[:120], PGDConfig(0.1, steps=5), twin=twin)
    clean, attacked = ((lite.predict(v).argmax(1) == yt[:120]).mean() for v in (xt[:120], x_adv))
    assert attacked < clean - 0.1, (clean, attacked)


def test_jpnet_activation_l1_term_lowers_the_activations_it_regularises(digits):
    """ActivationL1 (ATMCConfig.activation_l1) under PGD training with GlobalL0: the same run with a large
    weight ends with a smaller L1 of the activations before the threshold, and more of them zeroed."""
    from atmc_tf.training.terms import ActivationL1, term_from_config, term_to_config
    x, y = digits[0][:256], digits[1][:256]
    assert term_from_config(term_to_config(ActivationL1(0.5))) == ActivationL1(0.5)
    results = []
    for weight in (1e-6, 1.0):
        keras.utils.set_random_seed(0)
        plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(32, activation="relu", name="hidden"), keras.layers.Dense(10)])
        net = atmc_tf.wrap_model(insert_activation_sparsity(plain, "threshold", threshold=0.1))
        config = atmc_tf.method_config("al0", attack=atmc_tf.PGDConfig(eps=0.1, steps=2),
                                       nnz_budget=atmc_tf.dense_weight_count(plain) // 2, activation_l1=weight)
        trainer = atmc_tf.ATMCTrainer(net, config)
        assert [t.kind for t in trainer.terms][-1] == "activation_l1"
        trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = trainer.fit(x, y, epochs=3, batch_size=32, verbose=0)
        assert "activation_l1" in history.history
        (gate,) = sparsity_layers(net)
        probe = keras.Model(net.inputs, [gate.input, gate.output])
        before, after = (keras.ops.convert_to_numpy(t) for t in probe(x))
        results.append((np.abs(before).mean(), np.count_nonzero(after) / after.size))
    (l1_small, density_small), (l1_large, density_large) = results
    assert l1_large < 0.5 * l1_small and density_large < density_small


def test_thresholds_calibrated_to_a_density_reach_it(digits):
    """ActivationBudgetSchedule(threshold_density=0.3): the thresholds move so that about 30% of the
    activations pass (they start at 0: everything nonzero passes)."""
    x, y = digits[0][:512], digits[1][:512]
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    net = atmc_tf.wrap_model(insert_activation_sparsity(plain, "threshold", threshold=0.0))
    config = atmc_tf.method_config("da", attack=atmc_tf.PGDConfig(eps=0.1, steps=1), activation_ramp_steps=8,
                                   activation_threshold_density=0.3)
    trainer = atmc_tf.ATMCTrainer(net, config)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, epochs=5, batch_size=64, verbose=0)
    from atmc_tf.export import activation_densities
    densities = activation_densities(net, x)
    assert len(densities) == 2
    for d in densities.values():
        assert 0.2 <= d["density"] <= 0.4, densities


def test_without_activation_sparsity_shares_the_weights_and_computes_densely():
    from atmc_tf.layers import without_activation_sparsity
    plain = _cnn()
    x = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
    for net in (insert_activation_sparsity(plain, "wta", 0.25),
                insert_activation_sparsity(keras.Model(plain.inputs, plain.outputs), "wta", 0.25)):
        dense = without_activation_sparsity(net)
        assert not sparsity_layers(dense)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(dense(x)), keras.ops.convert_to_numpy(plain(x)),
                                   rtol=1e-6, atol=1e-6)
        assert not np.allclose(keras.ops.convert_to_numpy(net(x)), keras.ops.convert_to_numpy(plain(x)))
