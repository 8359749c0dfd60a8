"""to_litert_sparse: sparse kernels stored in TFLite's sparse tensor format, which the pinned LiteRT runs
with the dense int8 model's outputs (docs/device_bytes_litert.md, route C)."""
import numpy as np
import pytest

from atmc_tf.export.litert_sparse import sparse_summary, sparse_tensors, to_litert_sparse
from atmc_tf.export.tflite import LiteRTModel, int8_problem, op_names, to_int8_tflite


def _keep_largest(model, fraction):
    """Zero all but the `fraction` largest-magnitude kernel entries over the whole model (one global top-k)."""
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    flat = np.concatenate([np.abs(k.numpy()).ravel() for k in kernels])
    threshold = np.sort(flat)[-max(1, int(fraction * flat.size))]
    for k in kernels:
        k.assign(np.where(np.abs(k.numpy()) >= threshold, k.numpy(), 0.0))


@pytest.fixture(scope="module")
def models(digits):
    """A trained digits MLP (Dense 64 -> 64 -> 10) with 97% of its weights zeroed: int8 and sparse files
    (measured: the hidden kernel in 1x16 blocks read by the sparse FULLY_CONNECTED, the logits' kernel
    expanded by a DENSIFY)."""
    from conftest import trained_digits_mlp
    model = trained_digits_mlp(digits, epochs=8)
    _keep_largest(model, 0.03)
    x_tr = digits[0]
    return model, to_int8_tflite(model, x_tr), to_litert_sparse(model, x_tr)


def test_sparse_kernels_are_stored_sparse_and_the_file_shrinks(models):
    model, int8, sparse = models
    tensors = sparse_tensors(sparse)
    assert sparse_tensors(int8) == []
    kernel_bytes = sum(int(np.prod(layer.kernel.shape)) for layer in model.layers if hasattr(layer, "kernel"))
    assert {t["reader"] for t in tensors} == {"FULLY_CONNECTED"} and len(tensors) == 2, tensors
    assert sum(t["dense_bytes"] for t in tensors) == kernel_bytes
    summary = sparse_summary(sparse)
    assert summary["stored_bytes"] <= 0.2 * kernel_bytes  # 3% nonzeros (plus the zeros of their 1x16 blocks)
    assert [t["densified"] for t in tensors] == [False, True] and tensors[0]["block_map"] == [1]
    assert summary["densified_bytes"] == tensors[1]["dense_bytes"]
    # the index arrays cost less than what is saved (measured: 9,648 -> 6,448 bytes, of 4,736 kernel bytes)
    assert len(sparse) < len(int8) - kernel_bytes // 2
    assert [op for op in op_names(sparse) if op != "DENSIFY"] == op_names(int8)


def test_sparse_model_runs_on_litert_with_the_int8_models_outputs(models, digits):
    _, int8, sparse = models
    _, _, x_te, y_te = digits
    assert int8_problem(sparse) is None  # int8 input, output and activations
    a, b = LiteRTModel(int8), LiteRTModel(sparse)
    xq = a.quantize_input(x_te)
    out_a, out_b = a.predict_int8(xq).astype(int), b.predict_int8(xq).astype(int)
    assert np.mean(out_a.argmax(1) == y_te) > 0.3  # 3% of the weights, not fine-tuned: far above chance (10%)
    assert np.abs(out_a - out_b).max() <= 1  # the same int8 arithmetic, summed in another order at most
    assert np.mean(out_a.argmax(1) == out_b.argmax(1)) >= 0.99


def test_a_dense_model_stays_dense(digits):
    from conftest import trained_digits_mlp
    model = trained_digits_mlp(digits, epochs=1)
    sparse = to_litert_sparse(model, digits[0])
    assert sparse_tensors(sparse) == [] and "DENSIFY" not in op_names(sparse)


class _Data:
    def __init__(self, digits):
        _, _, self.x_test, self.y_test = digits


def test_the_phone_gets_the_smallest_file_that_keeps_the_answers(models, digits, tmp_path):
    from pipelines.phone import phone_model
    model, int8, sparse = models
    files = {"tflite": str(tmp_path / "model_int8.tflite")}
    acc = float(np.mean(LiteRTModel(int8).predict(digits[2]).argmax(1) == digits[3]))
    chosen, out = phone_model(model, digits[0], int8, acc, _Data(digits), files)
    assert out["file"] == "sparse" and out["sparse"]["used"] and out["sparse"]["top1_agreement"] >= 0.99
    assert not out["int4"]["ok"] and "lattice" in out["int4"]["reason"]  # float kernels: nothing to pack
    assert chosen == (tmp_path / "model_sparse.tflite").read_bytes() and len(chosen) == out["sparse"]["bytes"] < len(int8)
    assert files["tflite_phone"] == str(tmp_path / "model_sparse.tflite")


def test_a_file_litert_cannot_run_is_not_shipped(models, digits, tmp_path, monkeypatch):
    import atmc_tf.export
    from pipelines.phone import phone_model
    model, int8, sparse = models
    broken = bytearray(sparse)
    broken[4:8] = b"XXXX"  # not a .tflite any more: LiteRT refuses it
    monkeypatch.setattr(atmc_tf.export, "to_litert_sparse", lambda *a, **k: bytes(broken))
    monkeypatch.setattr(atmc_tf.export, "sparse_summary", lambda b: sparse_summary(sparse))
    files = {"tflite": str(tmp_path / "model_int8.tflite")}
    chosen, out = phone_model(model, digits[0], int8, 0.9, _Data(digits), files)
    assert chosen == int8 and out["file"] == "int8" and "tflite_phone" not in files
    assert "LiteRT cannot run it" in out["sparse"]["reason"] and not list(tmp_path.iterdir())
