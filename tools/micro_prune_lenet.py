"""Flash bytes and TFLM arena of a sparse 4-bit LeNet: uncompressed, LUT only, PRUNE only, best of both.

Random weights projected to 1% nonzeros globally (constraints.project_l0), then a 4-bit int8 codebook
per layer; every compressed file is checked bit-identical on TFLM (micro_outputs_equal) on N random
inputs. The figures in atmc_tf/export/micro_compress.py's docstring:
    tools/env.sh python tools/micro_prune_lenet.py 64          # build_model("lenet", (28, 28, 1), 10)
    tools/env.sh python tools/micro_prune_lenet.py 64 valid    # Caffe LeNet, valid padding (430,500)
"""
import json
import sys
import time

import numpy as np
import keras
from atmc_tf.models import build_model
from atmc_tf.constraints import project_l0, quantize
from atmc_tf.layers.wrappers import kernel_channel_axes
from atmc_tf.export.tflite import to_int8_tflite, LiteRTModel
from atmc_tf.export.micro_compress import compress_for_micro, micro_outputs_equal


def main():
    keras.utils.set_random_seed(0)
    if len(sys.argv) > 2 and sys.argv[2] == "valid":  # Caffe LeNet as published: 431k weights
        L = keras.layers
        i = keras.Input((28, 28, 1))
        h = L.MaxPooling2D(2)(L.Conv2D(20, 5, activation="relu", name="conv1")(i))
        h = L.MaxPooling2D(2)(L.Conv2D(50, 5, activation="relu", name="conv2")(h))
        h = L.Dense(500, activation="relu", name="fc1")(L.Flatten()(h))
        model = keras.Model(i, L.Dense(10, name="logits")(h))
    else:
        model = build_model("lenet", (28, 28, 1), 10, seed=0)
    layers = [l for l in model.layers if getattr(l, "kernel", None) is not None]
    total = sum(int(np.prod(l.kernel.shape)) for l in layers)
    k = round(0.01 * total)
    projected = project_l0([l.kernel for l in layers], k)
    for l, w in zip(layers, projected):
        l.kernel.assign(quantize(w, "codebook_int8", 4, kernel_channel_axes(l)))
    nnz = {l.name: int(np.count_nonzero(l.kernel.numpy())) for l in layers}
    print("weights", total, "kept", k, "nonzeros per layer", nnz, flush=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 28, 28, 1)).astype("float32")
    orig = to_int8_tflite(model, x, batch_size=1)
    x8 = LiteRTModel(orig).quantize_input(x[:int(sys.argv[1]) if len(sys.argv) > 1 else 20])
    rows = {"uncompressed_int8_b1": {"file_bytes": len(orig)}}
    arena0 = None
    for label, enc in (("lut_only", ("lut",)), ("prune_only", ("prune",)), ("best_of_lut_prune", ("lut", "prune"))):
        t = time.time()
        c, rep = compress_for_micro(orig, encodings=enc)
        chk = micro_outputs_equal(orig, c, x8, arena_original=arena0)
        arena0 = chk.arena_bytes_original
        rows[label] = {"file_bytes": len(c), "ok": chk.ok, "error": chk.error, "samples": chk.samples_checked,
                       "arena_original": chk.arena_bytes_original, "arena_compressed": chk.arena_bytes_compressed,
                       "arena_growth": chk.arena_growth_bytes,
                       "tensors": [(e["name"].split("/")[-2], e["shape"], e["encoding"], e["index_bits"], e["nonzeros"],
                                    e["bytes_before"], e["bytes_after"], e["candidates"]) for e in rep["tensors"]],
                       "seconds": round(time.time() - t, 1)}
        print(label, json.dumps(rows[label]), flush=True)
    rows["uncompressed_int8_b1"]["arena"] = arena0
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
