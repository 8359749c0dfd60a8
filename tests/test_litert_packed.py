"""to_litert_packed: uniform low-bit FULLY_CONNECTED / CONV_2D kernels stored as packed int4 that
the pinned LiteRT runs, int8 in and out, with the int8 model's accuracy (docs/device_bytes_litert.md)."""
import numpy as np
import pytest

from atmc_tf.export.litert_packed import (lattice_half, pack_int4, pack_int4_kernels, to_litert_packed,
                                          unpack_int4)
from atmc_tf.export.tflite import LiteRTModel, int8_problem, op_names, parse_check, to_int8_tflite


def test_pack_int4_nibble_order_and_round_trip():
    # TFLite's INT4 layout: element 2i in the low nibble, 2i+1 in the high one.
    assert pack_int4(np.array([1, -2, 7], np.int8)).tolist() == [0xE1, 0x07]
    values = np.arange(-8, 8, dtype=np.int8)
    assert np.array_equal(unpack_int4(pack_int4(values), 16), values)
    with pytest.raises(ValueError, match="int4"):
        pack_int4(np.array([8], np.int8))


@pytest.mark.parametrize("bits, half", [(2, 1), (3, 3), (4, 7)])
def test_lattice_half_finds_the_uniform_grid(bits, half):
    from atmc_tf.constraints.quantize import uniform_levels
    codes = np.asarray(uniform_levels(bits)).astype(np.int32)
    assert lattice_half(np.tile(codes, (3, 1))) == half
    assert lattice_half(np.array([0, 5, 127])) is None  # 5 is on no int4 lattice


@pytest.fixture(scope="module")
def packed(digits):
    """A Conv2D + Dense digits model with kernels on the uniform 4-bit lattice: int8 and packed."""
    import keras
    from atmc_tf.constraints import quantize
    x_tr, y_tr, _, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)),
                              keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_tr, y_tr, epochs=8, batch_size=64, verbose=0)
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            layer.kernel.assign(quantize(layer.kernel, "uniform_int8", 4, channel_axes=(-1,)))
    int8 = to_int8_tflite(model, x_tr)
    small, report = to_litert_packed(model, x_tr)
    return int8, small, report


def test_packed_kernels_are_int4_and_the_file_shrinks(packed):
    int8, small, report = packed
    assert [(k["op"], k["packed"], k["lattice_half"]) for k in report["kernels"]] == [
        ("CONV_2D", True, 7), ("FULLY_CONNECTED", True, 7), ("FULLY_CONNECTED", True, 7)]
    kernel_bytes = sum(k["int8_bytes"] for k in report["kernels"])
    assert report["int8_bytes"] == len(int8) and report["bytes"] == len(small)
    assert len(small) <= len(int8) - kernel_bytes // 2 + 64  # half the kernel bytes gone
    graph = parse_check(small).subgraphs[0]
    assert sum(t.type == 17 for t in graph.tensors) == 3  # TensorType.INT4: the three kernels
    assert op_names(small) == op_names(int8)


def test_packed_model_runs_on_litert_with_the_int8_models_accuracy(packed, digits):
    int8, small, _ = packed
    _, _, x_te, y_te = digits
    assert int8_problem(small) is None  # int8 input, output and activations, as the int8 model
    a, b = LiteRTModel(int8), LiteRTModel(small)
    assert b.input_dtype == np.int8
    xq = a.quantize_input(x_te)
    out_a, out_b = a.predict_int8(xq).astype(int), b.predict_int8(xq).astype(int)
    acc_a, acc_b = np.mean(out_a.argmax(1) == y_te), np.mean(out_b.argmax(1) == y_te)
    assert acc_a > 0.9
    assert abs(acc_a - acc_b) <= 0.01, (acc_a, acc_b)
    assert np.mean(out_a.argmax(1) == out_b.argmax(1)) >= 0.98
    assert np.abs(out_a - out_b).max() <= 8  # weights move by at most half an int8 step


def test_kernels_off_the_lattice_stay_int8(digits):
    from conftest import trained_digits_mlp
    model = trained_digits_mlp(digits, epochs=1)
    int8 = to_int8_tflite(model, digits[0])
    small, report = pack_int4_kernels(int8)
    assert not any(k["packed"] for k in report["kernels"])
    xq = LiteRTModel(int8).quantize_input(digits[2])
    assert np.array_equal(LiteRTModel(int8).predict_int8(xq), LiteRTModel(small).predict_int8(xq))
