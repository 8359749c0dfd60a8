"""The deployed (int8 .tflite) form of wide WinnersTakeAll layers: the threshold search keeps exactly the
units whose int8 score is >= the k-th largest, its table is aligned with the scores' quantization, and the
file runs on LiteRT and TFLite Micro and through the fake-quant twin (atmc_tf.export.winners)."""
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from atmc_tf.export import winners as W
from atmc_tf.layers import WinnersTakeAll, insert_activation_sparsity, sparsity_layers, winners_count
from atmc_tf.layers.activation_sparsity import LEVELS, PAIRWISE_MAX_UNITS, grid_winners_mask


def _topk_with_ties(s, k):
    """Per row: s >= the k-th largest value of the row (every unit tied with it kept)."""
    return s >= np.sort(s, axis=-1)[:, -k][:, None]


scales = st.floats(0.0001220703125, 8.0, allow_nan=False, width=32)  # 2^-13 .. 2^3


@settings(deadline=None, max_examples=40)
@given(scales, st.integers(-128, 127))
def test_table_is_the_int8_grid_and_quantizes_back_to_its_scale(scale, zp):
    table = W.table_for_quant(scale, zp)
    assert table.shape == (256,) and (np.diff(table.astype(np.float64)) > 0).all()
    assert W._nudge_scale(table[0], table[-1]) == (np.float32(scale), zp)
    codes = np.round(table / np.float32(scale)) + zp   # every entry quantizes to its own code
    assert (codes == np.arange(-128, 128)).all()


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 80), st.data())
def test_threshold_search_keeps_the_int8_top_k_with_ties(n, data):
    """On scores that lie on the table's grid (the int8 values a .tflite computes with), the radix-16 search
    keeps exactly the units >= the k-th largest score, for every k and any number of ties."""
    k = data.draw(st.integers(1, n))
    scale = data.draw(scales)
    zp = data.draw(st.integers(-128, 127))
    # few distinct codes make ties common; the extremes -128 and 127 are the search's edge cases
    codes = data.draw(st.lists(st.lists(st.sampled_from([-128, -127, -1, 0, 1, 5, 126, 127])
                                        | st.integers(-128, 127), min_size=n, max_size=n), min_size=1, max_size=4))
    table = W.table_for_quant(scale, zp)
    s = table[np.asarray(codes) + 128]
    keep = keras.ops.convert_to_numpy(grid_winners_mask(tf.constant(s), k, tf.constant(table)))
    np.testing.assert_array_equal(keep, _topk_with_ties(s, k))


def _wide_model(x, y, units=48):
    """Digits CNN with a pairwise-form WTA on the conv (8 channels) and a deployed-form one on Dense(units)."""
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(units, activation="relu"), keras.layers.Dense(10)])
    net = insert_activation_sparsity(plain, "wta", density=0.25)
    net.compile(optimizer=keras.optimizers.Adam(3e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for layer in sparsity_layers(net):
        layer.density.assign(1.0)
    net.fit(x, y, epochs=3, batch_size=64, verbose=0)
    for layer in sparsity_layers(net):
        layer.density.assign(0.25)
    net.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return net


def _tensors(tfl):
    """(a LiteRT interpreter that keeps every intermediate tensor, allocated; the parsed model)."""
    from ai_edge_litert.interpreter import Interpreter

    from atmc_tf.export import parse_check
    interp = Interpreter(model_content=tfl, experimental_preserve_all_tensors=True, num_threads=1)
    interp.allocate_tensors()
    return interp, parse_check(tfl)


def test_wide_layer_exports_in_linear_form_with_exact_masks_on_litert_tflm_and_the_twin(digits):
    from atmc_tf.attacks import PGDConfig
    from atmc_tf.export import LiteRTModel, check_micro, int8_problem, op_names, to_int8_tflite
    from atmc_tf.export.tflite import _op_name
    from atmc_tf.export.twin import fake_quant_twin, twin_agreement, twin_attack
    x, y, xt, yt = digits
    net = _wide_model(x, y)
    wta = [layer for layer in sparsity_layers(net) if isinstance(layer, WinnersTakeAll)]
    assert [layer.units for layer in wta] == [8, 48] and 8 <= PAIRWISE_MAX_UNITS < 48
    assert [layer.name for layer in W.wide_winners(net)] == [wta[1].name]
    keras_logits = net.predict(xt, verbose=0)
    tfl = to_int8_tflite(net, x[:200], batch_size=1)
    assert all(layer._deployed is None for layer in wta)               # the switch is off again
    np.testing.assert_array_equal(net.predict(xt, verbose=0), keras_logits)
    assert int8_problem(tfl) is None
    groups = W.grid_tables(tfl)
    assert len(groups) == 1 and groups[0]["aligned"] and len(groups[0]["tables"]) == LEVELS + 1
    ops = op_names(tfl)
    assert {"GATHER", "ARG_MIN", "GREATER_EQUAL"} <= set(ops) and "TOPK_V2" not in ops
    assert ops.count("SUM") == 1                       # the conv's pairwise ranks only
    # the counting FULLY_CONNECTEDs are not layer kernels: the code check pairs the model's 3 layers
    from atmc_tf.export import kernel_codes_match, tflite_kernels
    assert len(tflite_kernels(tfl)) == 3 and ops.count("FULLY_CONNECTED") > 3
    assert len(kernel_codes_match(net, tfl)["layers"]) == 3
    _, parsed = _tensors(tfl)
    shapes = [list(t.shape) for t in parsed.subgraphs[0].tensors]
    assert [48, 48] not in shapes and [1, 48, 48] not in shapes     # no n x n constant or intermediate

    # the file's mask = the int8 top-k of the file's own scores, ties kept
    lite = LiteRTModel(tfl)
    xq = lite.quantize_input(xt[:100])
    interp, parsed = _tensors(tfl)
    graph = parsed.subgraphs[0]
    final = [op for op in graph.operators if _op_name(parsed, op) == "GREATER_EQUAL"][-1]
    inp = interp.get_input_details()[0]["index"]
    k = winners_count(0.25, 48)
    kept = []
    for row in xq:
        interp.set_tensor(inp, row[None])
        interp.invoke()
        s = interp.get_tensor(int(final.inputs[0])).reshape(1, -1).astype(int)
        mask = interp.get_tensor(int(final.outputs[0])).reshape(1, -1)
        np.testing.assert_array_equal(mask, _topk_with_ties(s, k))
        kept.append(mask.sum())
    assert min(kept) >= k

    keras_acc = float((keras_logits.argmax(1) == yt).mean())
    assert keras_acc > 0.5
    assert abs(float((lite.predict(xt).argmax(1) == yt).mean()) - keras_acc) <= 0.02
    micro = check_micro(tfl, xq[:60], lite.predict_int8(xq[:60]))
    assert micro.ok, micro.error
    # the dynamic-batch file (what evaluation and the twin attacks use) converts in the same form
    tfl_n = to_int8_tflite(net, x[:200])
    assert W.grid_tables(tfl_n)[0]["aligned"]
    twin = fake_quant_twin(tfl_n)
    lite_n = LiteRTModel(tfl_n)
    assert twin_agreement(twin, lite_n, xt) >= 0.98
    x_adv = twin_attack(tfl_n, xt[:120], yt[:120], PGDConfig(0.1, steps=5), twin=twin)
    clean, attacked = ((lite_n.predict(v).argmax(1) == yt[:120]).mean() for v in (xt[:120], x_adv))
    assert attacked < clean - 0.1, (clean, attacked)


@pytest.mark.parametrize("batch_size", [1, None])
def test_masks_stay_exact_on_a_layer_wider_than_the_int8_range(batch_size):
    """n = 300 > 255: a count quantized at the range of n would lose its unit steps (the dynamic-batch file once
    did: its clip was not fused into the counting FULLY_CONNECTED). Both files keep the int8 top-k exactly."""
    from atmc_tf.export import to_int8_tflite
    from atmc_tf.export.tflite import _op_name
    keras.utils.set_random_seed(2)
    inp = keras.Input((16,))
    out = keras.layers.Dense(10)(WinnersTakeAll(0.1)(keras.layers.Dense(300, activation="relu")(inp)))
    model = keras.Model(inp, out)
    x = np.random.default_rng(1).normal(size=(160, 16)).astype(np.float32)
    tfl = to_int8_tflite(model, x[:128], batch_size=batch_size)
    assert W.exact_counts(tfl) == LEVELS and W.grid_tables(tfl)[0]["aligned"]
    interp, parsed = _tensors(tfl)
    graph = parsed.subgraphs[0]
    final = [op for op in graph.operators if _op_name(parsed, op) == "GREATER_EQUAL"][-1]
    detail = interp.get_input_details()[0]
    scale, zp = detail["quantization"]
    rows = np.clip(np.round(x[128:] / scale) + zp, -128, 127).astype(np.int8)
    batches = [rows[i:i + 1] for i in range(len(rows))] if batch_size == 1 else [rows]
    if batch_size is None:
        interp.resize_tensor_input(detail["index"], rows.shape)
        interp.allocate_tensors()
    for b in batches:
        interp.set_tensor(detail["index"], b)
        interp.invoke()
        s = interp.get_tensor(int(final.inputs[0])).reshape(len(b), -1).astype(int)
        mask = interp.get_tensor(int(final.outputs[0])).reshape(len(b), -1)
        np.testing.assert_array_equal(mask, _topk_with_ties(s, winners_count(0.1, 300)))


def test_a_table_that_cannot_be_aligned_falls_back_to_the_pairwise_form(monkeypatch, caplog):
    """A misaligned table would make the comparisons inexact: that layer is converted pairwise instead,
    with a warning naming it (here the aligned table is replaced by one of a wider range)."""
    from atmc_tf.export import op_names, to_int8_tflite
    keras.utils.set_random_seed(1)
    inp = keras.Input((12,))
    out = keras.layers.Dense(10)(WinnersTakeAll(0.2, name="wide")(keras.layers.Dense(40, activation="relu")(inp)))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(128, 12)).astype(np.float32)
    good = to_int8_tflite(model, x, batch_size=1)
    assert W.grid_tables(good)[0]["aligned"] and "SUM" not in op_names(good)
    monkeypatch.setattr(W, "table_for_quant", lambda scale, zp: W.table_for_range(0.0, float(scale) * 300))
    monkeypatch.setattr(W, "table_for_range", lambda lo, hi: np.linspace(lo, hi * 1.3, 256).astype(np.float32))
    with caplog.at_level(logging.WARNING):
        tfl = to_int8_tflite(model, x, batch_size=1)
    assert "wide" in caplog.text and "pairwise" in caplog.text
    assert W.grid_tables(tfl) == [] and "SUM" in op_names(tfl)


@pytest.mark.parametrize("units", [PAIRWISE_MAX_UNITS, PAIRWISE_MAX_UNITS + 1])
def test_the_pairwise_form_stays_up_to_the_threshold(units):
    layer = WinnersTakeAll(0.5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation="relu"), layer])
    assert (W.wide_winners(model) == [layer]) == (units > PAIRWISE_MAX_UNITS)
