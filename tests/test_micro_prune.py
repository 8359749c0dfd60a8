"""PRUNE (bitmap + value table) kernels for TFLite Micro: chosen where smaller, decoded bit-exactly.

One tiny digits model whose kernels are planted sparse and few-valued (or dense), exported once;
TFLite Micro runs in child processes.
"""
import importlib
import math

import numpy as np
import pytest

from atmc_tf.export.micro_compress import (DECODE_OP, compress_for_micro, kernel_tensors, micro_outputs_equal)
from atmc_tf.export.micro_prune import encode, prune_bytes
from atmc_tf.export.tflite import LiteRTModel, parse_check, to_int8_tflite

# layer: (fraction of nonzero codes, distinct nonzero codes per output channel) or None for dense random.
PLANT = {"conv_a": None, "conv_b": (0.03, 7), "depthwise": (0.1, 3), "dense_a": (0.5, 1), "dense": None}
ENCODING = {"conv_a": "dense_int8", "conv_b": "prune", "depthwise": "prune", "dense_a": "lut_per_channel",
            "dense": "dense_int8"}


def tiny_model():
    import keras
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(i)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_b")(h)
    h = keras.layers.DepthwiseConv2D(5, padding="same", depth_multiplier=2, activation="relu", name="depthwise")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu", name="dense_a")(h)
    return keras.Model(i, keras.layers.Dense(10, name="dense")(h))


def plant(model, seed=0):
    """Each output channel of a planted layer: round(fraction * n) (at least 1) nonzero codes drawn from
    `k` nonzero values, one of them +-127 (so the converter's scale max|W_c| / 127 gives the codes
    back), times the channel's own scale; unplanted layers get dense normal weights."""
    rng = np.random.default_rng(seed)
    for name, how in PLANT.items():
        layer = model.get_layer(name)
        w = layer.kernel.numpy()
        if how is None:
            layer.kernel.assign(rng.normal(size=w.shape).astype("float32"))
            continue
        fraction, k = how
        flat = w.reshape(-1, w.shape[-2] * w.shape[-1]) if name == "depthwise" else w.reshape(-1, w.shape[-1])
        for c in range(flat.shape[1]):
            n = flat.shape[0]
            values = np.concatenate([[rng.choice([-127, 127])],
                                     rng.choice(np.setdiff1d(np.arange(-126, 127), [0]), k - 1, replace=False)])
            codes = np.zeros(n)
            where = rng.permutation(n)[:max(1, round(fraction * n))]
            codes[where] = rng.choice(values, size=where.size)
            codes[where[0]] = values[0]
            flat[:, c] = codes * rng.uniform(0.01, 0.05)
        layer.kernel.assign(flat.reshape(w.shape))


@pytest.fixture(scope="module")
def exported(digits):
    x_train, _, x_test, _ = digits
    model = tiny_model()
    plant(model)
    original = to_int8_tflite(model, x_train, batch_size=1)
    compressed, report = compress_for_micro(original)
    return {"original": original, "compressed": compressed, "report": report, "x_train": x_train,
            "x_int8": LiteRTModel(original).quantize_input(x_test)}


def _layer(items, layer):
    [item] = [t for t in items if f"/{layer}_1/" in t["name"]]
    return item


def _decode_pairs(tflite_bytes):
    """{kernel name: (encoded bytes, ancillary bytes, decoded tensor)} of every DECODE in the file."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor
    model = model_editor.read(tflite_bytes)
    out = {}
    for op in model.subgraphs[0].operators:
        if op.custom_code == DECODE_OP:
            for (encoded, ancillary), decoded in zip(zip(op.inputs[0::2], op.inputs[1::2]), op.outputs):
                out[decoded.name.removesuffix("_decoded")] = (bytes(encoded.buffer.data),
                                                              bytes(ancillary.buffer.data), decoded)
    return out


def _prune_decode(bitmap, ancillary, size):
    """What DecodeStatePrune::DecompressToBuffer<int8_t> writes, zero point 0 (in Python)."""
    keep = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="big")[:size].astype(bool)
    out = np.zeros(size, np.int8)
    out[keep] = np.frombuffer(ancillary[16:], np.int8)
    return out


def test_encode_layout():
    bitmap, ancillary = encode(np.array([0, 5, 0, 0, 0, 0, 0, 0, -3], np.int8))
    assert bitmap == bytes([0b01000000, 0b10000000])  # element 0 is the most significant bit
    assert ancillary[:16] == bytes([2, 1, 0, 0, 1] + [0] * 11)  # PRUNE, DCM v1, PRUNE v1 in byte 4
    assert ancillary[16:] == np.array([5, -3], np.int8).tobytes()
    assert len(bitmap) + len(ancillary) == prune_bytes(9, 2)
    # Per-channel zero points (last axis): an element equal to its channel's zero point is dropped.
    w = np.array([[0, 3], [1, 3], [0, 4]], np.int8)
    bitmap, ancillary = encode(w, zero_points=[0, 3], axis=1)
    assert bitmap == bytes([0b00100100]) and ancillary[16:] == np.array([1, 4], np.int8).tobytes()
    from tflite_micro.tensorflow.lite.micro.compression.compressor import CompressionError
    with pytest.raises(CompressionError, match="quantized dimension 1"):  # the runtime's Setup would fail
        encode(np.zeros((2, 3, 4), np.int8), zero_points=[0, 0, 0], axis=1)


def test_package_encoder_is_still_a_stub():
    """Why this module exists: the pinned package's own PRUNE encoder raises."""
    from tflite_micro.tensorflow.lite.micro.compression import compressor, spec
    compress = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")
    with pytest.raises(compressor.CompressionError, match="not yet implemented"):
        compress._COMPRESSORS[spec.PruningCompression].compress(None, spec.PruningCompression())


def test_each_kernel_gets_the_smaller_encoding(exported):
    report = exported["report"]
    kernels = kernel_tensors(exported["original"])
    for layer, encoding in ENCODING.items():
        entry, kernel = _layer(report["tensors"], layer), _layer(kernels, layer)
        assert entry["encoding"] == encoding, entry
        w = kernel["weights"]
        nonzeros = int(np.count_nonzero(w))
        assert entry["nonzeros"] == nonzeros and entry["candidates"]["prune"] == prune_bytes(w.size, nonzeros)
        if encoding == "prune":
            assert entry["bytes_after"] == math.ceil(w.size / 8) + 16 + nonzeros  # bitmap, DCM, values
            assert entry["candidates"]["prune"] < entry["candidates"].get("lut_per_channel", math.inf)
            assert entry["index_bits"] is None and entry["reason"] is None
        elif encoding == "lut_per_channel":
            assert entry["index_bits"] == 1 and entry["bytes_after"] < entry["candidates"]["prune"]
        else:
            assert entry["bytes_after"] == entry["bytes_before"] == w.size and "not less than" in entry["reason"]
    assert report["compressed_tensors"] == 3
    assert report["file_bytes_after"] == len(exported["compressed"]) < report["file_bytes_before"]


def test_encoded_tensors_in_the_file(exported):
    """The file holds exactly the bitmap and DCM + values; decoding them gives the int8 kernel back;
    the decoded tensor keeps the kernel's per-channel scales and quantized dimension."""
    pairs = _decode_pairs(exported["compressed"])
    original = parse_check(exported["original"]).subgraphs[0].tensors
    compressed_graph = parse_check(exported["compressed"]).subgraphs[0]  # passes the TFLite verifier
    for layer in ("conv_b", "depthwise"):
        kernel = _layer(kernel_tensors(exported["original"]), layer)
        bitmap, ancillary, decoded = pairs[kernel["name"]]
        w = kernel["weights"]
        assert len(bitmap) == math.ceil(w.size / 8) and len(ancillary) == 16 + np.count_nonzero(w)
        assert ancillary[0] == 2
        np.testing.assert_array_equal(_prune_decode(bitmap, ancillary, w.size), w.ravel())
        q0 = original[kernel["tensor"]].quantization
        [q1] = [t.quantization for t in compressed_graph.tensors if t.name.decode() == decoded.name]
        assert len(q0.scale) > 1 and list(q1.scale) == list(q0.scale)
        assert q1.quantizedDimension == q0.quantizedDimension == kernel["quantized_dimension"]
    assert _layer(kernel_tensors(exported["original"]), "depthwise")["quantized_dimension"] == 3


def test_tflm_outputs_bit_identical_on_every_test_image(exported):
    check = micro_outputs_equal(exported["original"], exported["compressed"], exported["x_int8"])
    assert check.ok, check.error
    assert check.samples_checked == len(exported["x_int8"]) and check.max_abs_diff == 0
    assert check.arena_bytes_compressed >= check.arena_bytes_original
    print("\nsizes", exported["report"]["file_bytes_before"], "->", exported["report"]["file_bytes_after"],
          "arena", check.arena_bytes_original, "->", check.arena_bytes_compressed)


def test_a_wrong_bit_order_runs_and_the_check_catches_it(exported):
    """The silent failure to guard against: a bitmap in the other bit order decodes without any error
    on TFLM and moves the outputs; micro_outputs_equal says so."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor
    compress = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")
    model = model_editor.read(exported["compressed"])
    [decode_op] = [op for op in model.subgraphs[0].operators
                   if op.custom_code == DECODE_OP and "/depthwise_1/" in op.outputs[0].name]
    encoded = decode_op.inputs[0]
    bits = np.unpackbits(np.frombuffer(bytes(encoded.buffer.data), np.uint8), bitorder="big")
    encoded.buffer.data = np.packbits(bits, bitorder="little").tobytes()
    wrong = bytes(compress._apply_flatbuffer_alignment(model.build()))
    check = micro_outputs_equal(exported["original"], wrong, exported["x_int8"][:20])
    assert not check.ok and check.max_abs_diff > 1 and "differ" in check.error, check


def test_lut_only_keeps_the_old_choice_and_a_bigger_file(exported):
    lut_only, report = compress_for_micro(exported["original"], encodings=("lut",))
    assert not any(t["encoding"] == "prune" for t in report["tensors"])
    assert all("prune" not in t["candidates"] for t in report["tensors"])
    assert len(exported["compressed"]) < len(lut_only) <= len(exported["original"])
    with pytest.raises(ValueError, match="encodings"):
        compress_for_micro(exported["original"], encodings=("huffman",))
