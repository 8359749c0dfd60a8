"""Why the benchmark trains with SGD + momentum + weight decay, not Adam (docs/why_sgd.md).

    PYTHONPATH=. .venv/bin/python tools/optimizer_probe.py adam
    PYTHONPATH=. .venv/bin/python tools/optimizer_probe.py sgd

On the first 12k Fashion-MNIST training images: 4 epochs of dense PGD-7 training (DA) of the
benchmark's LeNet, then where one global top-k at ratio 0.01 (k = 12,555 of 1,255,500 weights)
puts its nonzeros per layer, then 2 epochs of AP and of AL0 from that DA model; validation
accuracies (clean, PGD-7) on 2,000 validation images. A few minutes per optimizer on 2 cores.
"""
import sys
import time

import keras
import tensorflow as tf

from atmc_tf.attacks import PGDConfig
from atmc_tf.constraints import sparsity
from atmc_tf.data import load_dataset
from atmc_tf.layers import strip_model
from atmc_tf.models import build_model
from atmc_tf.training import ATMCTrainer, method_config, wrap_for_method

K = 12555
LR = {"adam": (3e-3, 1e-3), "sgd": (0.05, 0.01)}  # (DA, compression): the pipeline's / benchmark's defaults


def main(opt_name):
    if opt_name not in LR:
        sys.exit(f"error: optimizer must be one of {', '.join(LR)}, got {opt_name!r}")
    d = load_dataset("fashion_mnist", seed=0)
    x, y, xv, yv = d.x_train[:12000], d.y_train[:12000], d.x_val[:2000], d.y_val[:2000]
    attack = PGDConfig(eps=0.1, steps=7, step_size=2.5 * 0.1 / 7)

    def optimizer(lr):
        if opt_name == "adam":
            return keras.optimizers.Adam(lr)
        return keras.optimizers.SGD(lr, momentum=0.9, weight_decay=5e-4)

    def run(model, method, k, lr, epochs):
        keras.utils.set_random_seed(0)
        cfg = method_config(method, attack=attack, nnz_budget=k)
        net = wrap_for_method(model, cfg)
        trainer = ATMCTrainer(net, cfg)
        trainer.compile(optimizer=optimizer(lr))
        t = time.time()
        h = trainer.fit(x, y, epochs=epochs, batch_size=128, validation_data=(xv, yv), verbose=0)
        accs = {key: round(v[-1], 3) for key, v in h.history.items() if key in ("val_clean_acc", "val_adv_acc")}
        print(opt_name, method, k, lr, accs, f"{time.time() - t:.0f}s", flush=True)
        return strip_model(net)

    da = run(build_model("lenet", d.input_shape, d.num_classes, seed=0), "da", None, LR[opt_name][0], 4)
    kernels = [layer.kernel.value for layer in da.layers if hasattr(layer, "kernel")]
    print("mean |w| per layer", [round(float(tf.reduce_mean(tf.abs(w))), 4) for w in kernels])
    masks = sparsity.topk_masks(kernels, K)
    print(f"global top-{K} keeps per layer", [int(tf.reduce_sum(m)) for m in masks],
          "of", [int(tf.size(w)) for w in kernels])
    for method in ("ap", "al0"):
        run(da, method, K, LR[opt_name][1], 2)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
