"""int8 TFLite export: LiteRT agrees with Keras, kernels stored bit for bit, C array, atomic
writes, bad bytes refused, TFLite Micro check (ops, smallest arena, <= 1 step from LiteRT)."""
import os
import re
import shutil
import subprocess
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flatbuffers  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from atmc_tf.constraints import channel_scales, int8_codes  # noqa: E402
from atmc_tf.export import (LiteRTModel, atomic, c_header, c_source, check_micro, evaluate_deployment,  # noqa: E402
                            gzip_size, kernel_codes_match, micro, op_names, parse_check,
                            tflite_kernels, to_int8_tflite)
from conftest import small_cnn  # noqa: E402

KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _channel_axes(layer):
    return (-2, -1) if isinstance(layer, keras.layers.DepthwiseConv2D) else (-1,)


def _on_lattice(model):
    """Every kernel replaced by scale_c * int8_codes: what int8-lattice training produces."""
    for layer in model.layers:
        if isinstance(layer, KERNEL_LAYERS):
            w = layer.kernel.numpy()
            axes = _channel_axes(layer)
            layer.kernel.assign(int8_codes(w, axes).numpy() * channel_scales(w, axes).numpy())
    return model


def _flip_some_gammas(model, rng):
    """Negative BN gammas: the converter folds them into the conv, flipping those channels' codes."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            signs = np.where(rng.random(layer.gamma.shape) < 0.4, -1.0, 1.0).astype(np.float32)
            signs[0] = -1.0
            layer.gamma.assign(layer.gamma.numpy() * signs)


@pytest.fixture(scope="module")
def exported(digits):
    """A briefly trained small CNN on the int8 lattice, exported with a dynamic batch and with batch 1."""
    x_train, y_train, x_test, y_test = digits
    model = small_cnn(seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train[:600], y_train[:600], epochs=3, batch_size=64, verbose=0)
    _flip_some_gammas(model, np.random.default_rng(0))
    _on_lattice(model)
    rep_x = x_train[:300]
    return types.SimpleNamespace(model=model, rep_x=rep_x, x=x_test[:200], y=y_test[:200],
                                 tflite=to_int8_tflite(model, rep_x),
                                 tflite_b1=to_int8_tflite(model, rep_x, batch_size=1))


@pytest.fixture(scope="module")
def micro_inputs(exported):
    lite = LiteRTModel(exported.tflite_b1)
    x_int8 = lite.quantize_input(exported.x[:6])
    return x_int8, lite.predict_int8(x_int8)


# --- LiteRT vs Keras ------------------------------------------------------------------------

def test_litert_logits_agree_with_keras(exported):
    keras_logits = exported.model.predict(exported.x, verbose=0)
    lite_logits = LiteRTModel(exported.tflite).predict(exported.x)
    assert lite_logits.dtype == np.float32 and lite_logits.shape == keras_logits.shape
    assert np.mean(lite_logits.argmax(-1) == keras_logits.argmax(-1)) >= 0.95
    spread = np.ptp(keras_logits)
    assert spread > 0.5, "a trained model has spread-out logits"
    assert np.abs(lite_logits - keras_logits).max() <= 0.1 * spread


def test_deployment_evaluation(exported):
    """Accuracy of both models and their agreement, on clean and on given (or crafted) images."""
    keras_pred = exported.model.predict(exported.x, verbose=0).argmax(-1)
    lite_pred = LiteRTModel(exported.tflite).predict(exported.x).argmax(-1)
    shifted = np.clip(exported.x + 0.2, 0, 1)
    ev = evaluate_deployment(exported.tflite, exported.x, exported.y, shifted, keras_model=exported.model)
    assert ev.samples == len(exported.y)
    assert ev.tflite_clean_acc == pytest.approx(np.mean(lite_pred == exported.y))
    assert ev.keras_clean_acc == pytest.approx(np.mean(keras_pred == exported.y))
    assert ev.top1_agreement == pytest.approx(np.mean(lite_pred == keras_pred))
    assert abs(ev.tflite_clean_acc - ev.keras_clean_acc) <= 0.05
    crafted = evaluate_deployment(LiteRTModel(exported.tflite), exported.x, exported.y,
                                  lambda x, y: np.clip(x + 0.2, 0, 1), keras_model=exported.model)
    assert crafted == ev
    keras_shifted = exported.model.predict(shifted, verbose=0).argmax(-1)
    assert ev.keras_robust_acc == pytest.approx(np.mean(keras_shifted == exported.y))
    assert ev.top1_agreement_adv == pytest.approx(np.mean(LiteRTModel(exported.tflite).predict(shifted).argmax(-1)
                                                          == keras_shifted))
    alone = evaluate_deployment(exported.tflite, exported.x, exported.y)  # a .tflite without its Keras model
    assert alone.as_dict() == {**ev.as_dict(), "tflite_robust_acc": None, "keras_clean_acc": None,
                               "keras_robust_acc": None, "top1_agreement": None, "top1_agreement_adv": None}


def test_batching_does_not_change_outputs(exported):
    dynamic = LiteRTModel(exported.tflite)
    one = LiteRTModel(exported.tflite_b1)
    x = exported.x[:23]
    by_256 = dynamic.predict_int8(dynamic.quantize_input(x))
    by_7 = dynamic.predict_int8(dynamic.quantize_input(x), batch_size=7)
    np.testing.assert_array_equal(by_256, by_7)
    singles = one.predict_int8(one.quantize_input(x))  # the batch-1 model loops over samples
    assert singles.shape == by_256.shape and singles.dtype == np.int8
    assert np.abs(singles.astype(int) - by_256).max() <= 1
    with pytest.raises(ValueError, match="expects"):
        dynamic.predict(np.zeros((2, 7, 7, 1), np.float32))


def test_batch1_model_has_a_fixed_input(exported):
    one, dynamic = LiteRTModel(exported.tflite_b1), LiteRTModel(exported.tflite)
    assert one.input_shape == (1, 8, 8, 1) and one.fixed_batch == 1
    assert dynamic.input_shape == (-1, 8, 8, 1) and dynamic.fixed_batch is None
    assert one.input_dtype == np.int8 and dynamic.input_dtype == np.int8
    # A fixed batch needs no run-time shape arithmetic: smaller graph for microcontrollers.
    assert "SHAPE" in dynamic.op_names() and "SHAPE" not in one.op_names()
    assert one.op_names() == ["CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "RESHAPE",
                              "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert len(exported.tflite_b1) < len(exported.tflite)


def test_input_quantization_rounds_to_nearest(exported):
    lite = LiteRTModel(exported.tflite)
    scale, zero_point = lite._input["quantization"]
    x = np.linspace(0, 1, 1001, dtype=np.float32).reshape(-1, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32)
    q = lite.quantize_input(x)
    assert q.dtype == np.int8
    assert np.abs((q.astype(np.float32) - zero_point) * scale - x).max() <= scale / 2 + 1e-6


def test_bad_representative_data_is_refused(exported):
    with pytest.raises(ValueError, match="shape"):
        to_int8_tflite(exported.model, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        to_int8_tflite(exported.model, np.full((4, 8, 8, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        to_int8_tflite(exported.model, exported.rep_x, batch_size=0)


# --- the converter's weight quantization and the exported kernels ---------------------------

def test_converter_quantizes_every_kernel_per_channel(exported):
    """TF 2.21 facts the project relies on: CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED
    weights are int8, zero point 0, one scale per output channel = max|W_c| / 127."""
    layers = [layer for layer in exported.model.layers if isinstance(layer, KERNEL_LAYERS)]
    kernels = tflite_kernels(exported.tflite)
    assert [k["op"] for k in kernels] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    for layer, kernel in zip(layers, kernels):
        w, codes = layer.kernel.numpy(), kernel["weights"]
        channel_dim = 3 if kernel["op"] == "DEPTHWISE_CONV_2D" else 0
        channels = codes.shape[channel_dim]
        assert codes.dtype == np.int8 and kernel["quantized_dimension"] == channel_dim
        assert len(kernel["scales"]) == channels and np.all(kernel["zero_points"] == 0)
        per_channel_max = np.abs(codes.astype(int)).max(axis=tuple(a for a in range(codes.ndim) if a != channel_dim))
        assert np.all(per_channel_max == 127), "every channel's largest weight maps to +-127"
        if not isinstance(layer, keras.layers.Conv2D):  # conv2d has a folded BatchNormalization
            expected = channel_scales(w, _channel_axes(layer)).numpy().reshape(-1)
            np.testing.assert_allclose(kernel["scales"], expected, rtol=1e-6)


def test_on_lattice_kernels_are_stored_bit_for_bit(exported):
    result = kernel_codes_match(exported.model, exported.tflite)
    assert [row["layer"] for row in result["layers"]] == \
        [layer.name for layer in exported.model.layers if isinstance(layer, KERNEL_LAYERS)]
    assert result["exact"] and result["mismatches"] == 0 and result["max_abs_diff"] == 0, result
    assert all(row["per_channel"] and row["zero_points_zero"] and row["codes"] > 0 for row in result["layers"])
    # conv2d's BatchNormalization has negative gammas: only the sign correction makes this exact.
    conv = result["layers"][0]
    first_conv = next(l for l in exported.model.layers if isinstance(l, keras.layers.Conv2D))
    assert conv["layer"] == first_conv.name and conv["bn_folded"]
    stored = tflite_kernels(exported.tflite)[0]["weights"].transpose(1, 2, 3, 0)
    assert np.any(stored != int8_codes(exported.model.layers[1].kernel.numpy()).numpy())
    assert kernel_codes_match(exported.model, exported.tflite_b1)["exact"]


def test_off_lattice_kernels_within_one_code(exported):
    model = small_cnn(seed=3)
    rng = np.random.default_rng(3)
    for layer in model.layers:  # generic float weights, far from any lattice
        if isinstance(layer, KERNEL_LAYERS):
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
    _flip_some_gammas(model, rng)
    result = kernel_codes_match(model, to_int8_tflite(model, exported.rep_x[:50]))
    assert result["max_abs_diff"] <= 1, result


def test_code_check_catches_different_kernels(exported):
    other = _on_lattice(small_cnn(seed=1))
    result = kernel_codes_match(other, exported.tflite)
    assert not result["exact"] and all(row["mismatches"] > 0 for row in result["layers"])


# --- firmware files, sizes, atomic writes --------------------------------------------------

def test_c_source_round_trips_the_bytes(exported):
    data = exported.tflite_b1
    source = c_source(data, "g_model")
    assert re.search(r"^alignas\(16\) const unsigned char g_model\[\] = \{$", source, re.M)
    assert re.search(rf"^const unsigned int g_model_len = {len(data)};$", source, re.M)
    array = source.split("g_model[] = {", 1)[1].split("};", 1)[0]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", array)) == data
    header = c_header("g_model")
    assert "extern const unsigned char g_model[];" in header and "extern const unsigned int g_model_len;" in header
    with pytest.raises(ValueError, match="identifier"):
        c_source(data, "g-model")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_c_source_compiles_and_links(exported, tmp_path):
    data = exported.tflite_b1
    (tmp_path / "model_data.cc").write_text(c_source(data))
    (tmp_path / "model_data.h").write_text(c_header())
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include <cstdint>\n#include "model_data.h"\n'
        "int main() { unsigned long sum = 0; for (unsigned i = 0; i < g_model_len; ++i) sum += g_model[i];\n"
        '  std::printf("%u %lu %d\\n", g_model_len, sum, int(reinterpret_cast<std::uintptr_t>(g_model) % 16));'
        " }\n")
    subprocess.run(["g++", "-std=c++17", "-o", str(tmp_path / "main"), str(tmp_path / "main.cc"),
                    str(tmp_path / "model_data.cc")], check=True, timeout=120)
    out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(data)), str(sum(data)), "0"]


def test_gzip_shrinks_a_sparse_model(exported):
    sparse = _on_lattice(small_cnn(seed=0))
    sparse.set_weights(exported.model.get_weights())
    for layer in sparse.layers:  # keep the 10% largest weights of each kernel
        if isinstance(layer, KERNEL_LAYERS):
            w = layer.kernel.numpy()
            layer.kernel.assign(np.where(np.abs(w) >= np.quantile(np.abs(w), 0.9), w, 0.0))
    data = to_int8_tflite(sparse, exported.rep_x[:50])
    assert kernel_codes_match(sparse, data)["exact"], "pruning keeps the lattice"
    assert gzip_size(data) < 0.6 * len(data)
    assert gzip_size(data) / len(data) < gzip_size(exported.tflite) / len(exported.tflite)


def test_atomic_writes_replace_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "model.tflite"
    atomic.write_bytes_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600), "mkstemp's 0600 must not leak"
    target.chmod(0o640)
    atomic.write_bytes_atomic(str(target), b"second, longer content")
    assert target.read_bytes() == b"second, longer content"
    assert target.stat().st_mode & 0o777 == 0o640, "permissions of the replaced file are kept"
    atomic.write_text_atomic(tmp_path / "report.md", "caf\u00e9\n")
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "caf\u00e9\n"
    with pytest.raises(TypeError):
        atomic.write_bytes_atomic(target, "not bytes")  # fails after the temp file exists
    assert target.read_bytes() == b"second, longer content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "report.md"]
    with pytest.raises(FileNotFoundError):
        atomic.write_bytes_atomic(tmp_path / "missing" / "x.bin", b"x")


def test_atomic_path_for_writers_that_need_a_name(tmp_path):
    """Keras' model.save (a .keras name) and a writer that fails halfway: the final name holds a
    whole file or its old content, never a temporary one."""
    target = tmp_path / "model.keras"
    model = small_cnn(seed=0)
    with atomic.atomic_path(target, ".tmp.keras") as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".tmp.keras")
        model.save(tmp)
    loaded = keras.models.load_model(target)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True))
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic.atomic_path(target, ".tmp.keras") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half a model")
        raise RuntimeError("killed while writing")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


# --- bad bytes -------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", ["half", "header", "empty", "identifier"])
def test_parse_check_rejects_bad_bytes(exported, cut):
    data = exported.tflite_b1
    bad = {"half": data[: len(data) // 2], "header": data[:12], "empty": b"",
           "identifier": data[:4] + b"XXXX" + data[8:]}[cut]
    with pytest.raises(ValueError, match=r"is not a valid \.tflite flatbuffer: "):
        parse_check(bad)
    with pytest.raises(ValueError, match="not a valid"):
        LiteRTModel(bad)
    assert parse_check(data).subgraphs, "the intact bytes parse"


# --- TFLite Micro ------------------------------------------------------------------------------

def test_check_micro_passes(exported, micro_inputs):
    x_int8, litert_int8 = micro_inputs
    result = check_micro(exported.tflite_b1, x_int8, litert_int8)
    assert result.ok, result
    assert result.error is None and result.unsupported_ops == []
    assert result.ops == ["CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert result.samples_checked == len(x_int8) and result.max_abs_diff_vs_litert <= 1
    arena = result.arena_bytes
    assert micro.ARENA_GRANULARITY <= 256 and arena % micro.ARENA_GRANULARITY == 0 and 0 < arena < 64 * 1024
    # Smallest: one granule less fails (in process, safe for this known-good model).
    assert micro._attempt(exported.tflite_b1, arena, x_int8[:1])[0] is None
    error, log = micro._attempt(exported.tflite_b1, arena - micro.ARENA_GRANULARITY, x_int8[:1])
    assert error and any(re.search(r"available \d+, missing: \d+", line) for line in log), log
    assert result.as_dict()["arena_bytes"] == arena


def test_check_micro_reports_outputs_that_differ(exported, micro_inputs):
    x_int8, litert_int8 = micro_inputs
    shifted = np.clip(litert_int8.astype(int) + 3, -128, 127).astype(np.int8)
    result = check_micro(exported.tflite_b1, x_int8, shifted)
    assert not result.ok and result.max_abs_diff_vs_litert >= 2 and "differ" in result.error


def _edited(data, edit):
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    edit(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_check_micro_names_unsupported_ops(exported, micro_inputs):
    def max_pool_to_skip_gram(model):
        for code in model.operatorCodes:
            if code.builtinCode == schema.BuiltinOperator.MAX_POOL_2D:
                code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.SKIP_GRAM

    result = check_micro(_edited(exported.tflite_b1, max_pool_to_skip_gram), *micro_inputs)
    assert not result.ok and result.unsupported_ops == ["SKIP_GRAM"] and "SKIP_GRAM" in result.ops
    assert "failed to allocate" in result.error


def test_check_micro_never_raises_or_crashes(exported, micro_inputs):
    x_int8, litert_int8 = micro_inputs
    truncated = check_micro(exported.tflite_b1[:1000], x_int8, litert_int8)
    assert not truncated.ok and "not a valid .tflite flatbuffer" in truncated.error
    wrong_dtype = check_micro(exported.tflite_b1, x_int8.astype(np.float32), litert_int8)
    assert not wrong_dtype.ok and "int8" in wrong_dtype.error

    def weights_from_nowhere(model):  # LiteRT refuses this; TFLM reads wild memory
        graph = model.subgraphs[0]
        graph.tensors[graph.operators[0].inputs[1]].buffer = 10 ** 8

    crashing = _edited(exported.tflite_b1, weights_from_nowhere)
    refused = check_micro(crashing, x_int8, litert_int8)
    assert not refused.ok and "out of range buffer" in refused.error
    # Past LiteRT's check, TFLM segfaults: only its child process dies, not this one.
    crashed = micro._child(crashing, "probe", micro.ARENA_MAX, x_int8[:1], timeout_s=60)
    assert "died with SIGSEGV" in crashed["error"]


def test_op_names_lists_every_operator(exported):
    names = op_names(exported.tflite)
    assert names.count("FULLY_CONNECTED") == 2 and names[0] == "CONV_2D"


def test_a_crash_at_one_arena_size_is_not_a_failure(exported, micro_inputs, monkeypatch):
    """This TFLM build segfaults for some valid models at one arena size (a MobileNetV2-style model at
    exactly 4,096 bytes) while neighbouring sizes fail cleanly or work: every probe runs in a child of
    its own, so the search goes past the crash and the check passes."""
    x_int8, litert_int8 = micro_inputs
    clean = check_micro(exported.tflite_b1, x_int8, litert_int8)
    assert clean.ok, clean.error
    crash_at = [micro.ARENA_START, clean.arena_bytes - micro.ARENA_GRANULARITY]  # a crash, then a clean miss
    monkeypatch.setenv("ATMC_MICRO_CRASH_ARENAS", ",".join(map(str, crash_at)))
    again = check_micro(exported.tflite_b1, x_int8, litert_int8)
    assert again.ok, again.error
    assert again.arena_bytes == clean.arena_bytes and again.max_abs_diff_vs_litert <= 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, micro.ARENA_MAX))
def test_the_arena_search_finds_the_smallest_working_size(need):
    """With a monotone model (an arena works iff it holds `need` bytes), _next_probe's search ends at
    the smallest working size to ARENA_GRANULARITY: it works, and 256 bytes less does not (unless
    that is below ARENA_START's half, where nothing smaller is tried)."""
    known = {}
    while True:
        kind, size = micro._next_probe(known)
        if kind == "answer":
            break
        assert size not in known
        known[size] = size >= need
    assert size >= need or size == micro.ARENA_MAX
    assert size - micro.ARENA_GRANULARITY < need or size <= micro.ARENA_GRANULARITY
    assert len(known) <= 32


def test_a_probe_that_hangs_counts_as_a_size_that_does_not_work(exported, micro_inputs, monkeypatch):
    x_int8, litert_int8 = micro_inputs
    clean = micro._smallest_arena(bytes(exported.tflite_b1), x_int8[:1], 30)
    monkeypatch.setenv("ATMC_MICRO_HANG_ARENAS", str(clean - micro.ARENA_GRANULARITY))  # a miss anyway
    assert micro._smallest_arena(bytes(exported.tflite_b1), x_int8[:1], 2) == clean


def test_a_crash_at_every_size_is_reported_with_its_reason(exported, micro_inputs, monkeypatch):
    x_int8, litert_int8 = micro_inputs
    monkeypatch.setenv("ATMC_MICRO_CRASH_ARENAS", str(micro.ARENA_MAX))
    result = check_micro(exported.tflite_b1, x_int8, litert_int8)
    assert not result.ok and "died with SIGSEGV" in result.error and str(micro.ARENA_MAX) in result.error
