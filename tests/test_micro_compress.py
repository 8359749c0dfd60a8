"""compress_for_micro: few-valued kernels stored as TFLite Micro LUT indices, decoded bit-exactly.

One tiny digits model (Conv2D, Conv2D, DepthwiseConv2D, Dense) whose kernels hold a known number of
int8 codes per output channel, exported once; TFLite Micro runs in child processes.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from atmc_tf.export.micro import ARENA_MAX, _child
from atmc_tf.export.micro_compress import (MicroCompressionError, compress_for_micro, kernel_tensors,
                                           micro_outputs_equal)
from atmc_tf.export.tflite import (LiteRTModel, c_header, c_source, op_names, parse_check, tflite_kernels,
                                   to_int8_tflite)

# Distinct codes per output channel, by layer name (each set includes 0 and a code of magnitude 127,
# so that the converter's per-channel scale max|W_c| / 127 gives back exactly these codes).
VALUES = {"conv_a": 4, "conv_b": 4, "depthwise": 2, "dense": 17}
BITS = {"conv_a": None, "conv_b": 2, "depthwise": 1, "dense": 5}  # conv_a: 144 weights, too few to pay


def tiny_model():
    import keras
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(i)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_b")(h)
    h = keras.layers.DepthwiseConv2D(5, padding="same", depth_multiplier=2, activation="relu", name="depthwise")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(i, keras.layers.Dense(10, name="dense")(h))


def _channel_codes(rng, n, k):
    """n int8 codes taking exactly k distinct values, 0 and +-127 among them."""
    others = rng.choice(np.setdiff1d(np.arange(-126, 127), [0]), size=max(k - 2, 0), replace=False)
    values = np.concatenate([[0, rng.choice([-127, 127])], others])[:k]
    codes = rng.choice(values, size=n)
    codes[:k] = values  # every value present
    return rng.permutation(codes)


def set_codes(model, values, seed=0):
    """Give every output channel of each named layer `values[name]` distinct codes times its own scale."""
    rng = np.random.default_rng(seed)
    for name, k in values.items():
        layer = model.get_layer(name)
        w = layer.kernel.numpy()
        flat = w.reshape(w.shape[:-2] + (-1,)) if name == "depthwise" else w  # channel in * mult + m
        flat = flat.reshape(-1, flat.shape[-1])
        for c in range(flat.shape[1]):
            flat[:, c] = _channel_codes(rng, flat.shape[0], k) * rng.uniform(0.01, 0.05)
        layer.kernel.assign(flat.reshape(w.shape))


@pytest.fixture(scope="module")
def exported(digits):
    x_train, _, x_test, _ = digits
    model = tiny_model()
    set_codes(model, VALUES)
    original = to_int8_tflite(model, x_train, batch_size=1)
    compressed, report = compress_for_micro(original)
    x_int8 = LiteRTModel(original).quantize_input(x_test)
    return {"model": model, "original": original, "compressed": compressed, "report": report,
            "x_int8": x_int8, "x_train": x_train}


def _entry(report, layer):
    [entry] = [t for t in report["tensors"] if f"/{layer}_1/" in t["name"]]
    return entry


def test_kernels_have_the_planted_code_counts(exported):
    kernels = {k["name"]: k for k in tflite_kernels(exported["original"])}
    for layer, k in VALUES.items():
        [kernel] = [v for n, v in kernels.items() if f"/{layer}_1/" in n]
        w = np.moveaxis(kernel["weights"], kernel["quantized_dimension"], 0)
        assert {np.unique(c).size for c in w} == {k}, layer


def test_compressed_file_is_smaller_with_the_right_index_bits(exported):
    report = exported["report"]
    assert report["file_bytes_before"] == len(exported["original"])
    assert report["file_bytes_after"] == len(exported["compressed"]) < len(exported["original"])
    for layer, bits in BITS.items():
        entry = _entry(report, layer)
        assert entry["values_per_channel_max"] == VALUES[layer]
        assert entry["index_bits"] == bits, entry
        if bits is None:
            assert entry["encoding"] == "dense_int8" and entry["bytes_after"] == entry["bytes_before"]
            assert "not less than" in entry["reason"]
        else:
            assert entry["encoding"] == "lut_per_channel" and entry["reason"] is None
            channels = entry["shape"][entry["axis"]]  # indices + header + one table per channel
            assert entry["bytes_after"] == -(-entry["bytes_before"] * bits // 8) + 16 + channels * VALUES[layer]
    assert _entry(report, "depthwise")["axis"] == 3 and _entry(report, "dense")["axis"] == 0
    assert report["compressed_tensors"] == 3
    assert op_names(exported["compressed"]).count("CUSTOM") == 3  # one DECODE ahead of each reader
    assert report["ops"][0] == "CONV_2D" and "TFLM_DECODE" in report["ops"]
    # The saving on the file is the data saving less the DECODE metadata.
    data_saving = sum(t["bytes_before"] - t["bytes_after"] for t in report["tensors"])
    assert 0 < report["file_bytes_before"] - report["file_bytes_after"] < data_saving


def test_compressed_model_passes_the_tflite_verifier(exported):
    parse_check(exported["compressed"])  # the package's stale quantization on encoded tensors is cleared
    assert kernel_tensors(exported["compressed"])[0]["name"].endswith("conv_a_1/convolution")


def test_tflm_outputs_bit_identical_on_every_test_image(exported):
    check = micro_outputs_equal(exported["original"], exported["compressed"], exported["x_int8"])
    assert check.ok, check.error
    assert check.samples_checked == len(exported["x_int8"]) and check.max_abs_diff == 0
    # DECODE writes each decoded kernel into the arena, next to the activations.
    assert check.arena_bytes_compressed >= check.arena_bytes_original
    assert check.arena_growth_bytes == check.arena_bytes_compressed - check.arena_bytes_original
    print("\nsizes", exported["report"]["file_bytes_before"], "->", exported["report"]["file_bytes_after"],
          "arena", check.arena_bytes_original, "->", check.arena_bytes_compressed)


def test_per_tensor_lut_is_refused_on_per_channel_kernels(exported):
    with pytest.raises(MicroCompressionError, match="per channel"):
        compress_for_micro(exported["original"], mode="per_tensor")
    with pytest.raises(ValueError, match="mode"):
        compress_for_micro(exported["original"], mode="per_row")


def test_per_tensor_lut_would_be_wrong_and_the_check_says_so(exported):
    """Why the refusal: the package's PerTensor LUT on these kernels runs without an error on TFLM and
    changes the outputs; micro_outputs_equal reports it."""
    from tflite_micro.tensorflow.lite.micro.compression import SpecBuilder, compress, spec
    [dw] = [k for k in kernel_tensors(exported["original"]) if k["op"] == "DEPTHWISE_CONV_2D"]
    per_tensor = SpecBuilder().add_tensor(0, dw["tensor"]).with_lut(index_bitwidth=2, mode=spec.PerTensor())
    wrong = compress(exported["original"], per_tensor.build())
    check = micro_outputs_equal(exported["original"], bytes(wrong), exported["x_int8"][:20])
    assert not check.ok and check.max_abs_diff > 1 and "differ" in check.error


def test_dense_random_kernels_are_left_unchanged(exported):
    model = tiny_model()
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if getattr(layer, "kernel", None) is not None:
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    original = to_int8_tflite(model, exported["x_train"][:200], batch_size=1)
    compressed, report = compress_for_micro(original)
    assert compressed == original and report["compressed_tensors"] == 0
    assert report["file_bytes_after"] == report["file_bytes_before"] == len(original)
    for entry in report["tensors"]:
        assert entry["encoding"] == "dense_int8" and entry["bytes_after"] == entry["bytes_before"]
    # Large kernels need 8-bit indices; the small first conv would not pay for its DECODE anyway.
    assert _entry(report, "dense")["values_per_channel_max"] > 128
    assert "8-bit indices" in _entry(report, "dense")["reason"]
    assert "TFLM_DECODE" not in report["ops"]


def test_c_source_of_the_compressed_model(exported, tmp_path):
    data = exported["compressed"]
    source = c_source(data, "g_model")
    assert re.search(rf"^const unsigned int g_model_len = {len(data)};$", source, re.M)
    array = source.split("g_model[] = {", 1)[1].split("};", 1)[0]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", array)) == data
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    (tmp_path / "model_data.cc").write_text(source)
    (tmp_path / "model_data.h").write_text(c_header())
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include "model_data.h"\n'
        "int main() { unsigned long sum = 0; for (unsigned i = 0; i < g_model_len; ++i) sum += g_model[i];\n"
        '  std::printf("%u %lu\\n", g_model_len, sum); }\n')
    subprocess.run(["g++", "-std=c++17", "-o", str(tmp_path / "main"), str(tmp_path / "main.cc"),
                    str(tmp_path / "model_data.cc")], check=True, timeout=120)
    out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(data)), str(sum(data))]


def test_a_kernel_with_17_values_per_channel_gets_5_bit_indices(exported):
    entry = _entry(exported["report"], "dense")
    assert entry["values_per_channel_max"] == 17 and entry["index_bits"] == 5
    assert entry["bytes_after"] == (10240 * 5 + 7) // 8 + 16 + 10 * 17
    # And TFLM decodes it: the compressed model's first sample runs (all samples: the bit-identity test).
    run = _child(exported["compressed"], "run", ARENA_MAX, exported["x_int8"][:1], 120)
    assert run["error"] is None


@pytest.mark.parametrize("zero_in_levels,bits", [(True, 2), (False, 3)])
def test_b_bit_atmc_kernels_get_b_bit_indices(digits, zero_in_levels, bits):
    """The quantizer's 2-bit codebook (0 counted among the 4 values) becomes 2-bit LUT indices on the
    device; the paper's count (4 nonzero values + 0) needs 3."""
    from atmc_tf.constraints import quantize
    from atmc_tf.layers.wrappers import kernel_channel_axes
    model = tiny_model()
    for name in ("conv_b", "dense"):
        layer = model.get_layer(name)
        layer.kernel.assign(quantize(layer.kernel, "codebook_int8", 2, kernel_channel_axes(layer),
                                     zero_in_levels=zero_in_levels))
    _, report = compress_for_micro(to_int8_tflite(model, digits[0], batch_size=1))
    for name in ("conv_b", "dense"):
        entry = _entry(report, name)
        assert entry["encoding"] == "lut_per_channel" and entry["index_bits"] == bits, entry


def test_stripped_names_leave_the_model_and_its_outputs_as_they_were(exported):
    """strip_names: tensor / subgraph names and the description go (the file shrinks), everything a runtime
    reads stays: TFLM outputs bit-identical, LiteRT's too, the signature runner's keys kept."""
    from atmc_tf.export.tflite import _litert, parse_check, strip_names
    compressed = exported["compressed"]
    stripped = strip_names(compressed)
    model = parse_check(stripped)
    assert all(not t.name for g in model.subgraphs for t in g.tensors) and not model.description
    names = sum(len(t.name) for g in parse_check(compressed).subgraphs for t in g.tensors)
    assert len(stripped) <= len(compressed) - names // 2  # the names were most of what went
    check = micro_outputs_equal(exported["original"], stripped, exported["x_int8"][:40])
    assert check.ok and check.max_abs_diff == 0, check.error
    original, plain = exported["original"], strip_names(exported["original"])
    a, b = LiteRTModel(original), LiteRTModel(plain)
    assert np.array_equal(a.predict_int8(exported["x_int8"]), b.predict_int8(exported["x_int8"]))
    interpreter = _litert()[1]
    assert interpreter(model_content=plain).get_signature_list() == \
        interpreter(model_content=original).get_signature_list()
    with pytest.raises(ValueError, match="not a valid .tflite"):
        strip_names(b"not a model")
