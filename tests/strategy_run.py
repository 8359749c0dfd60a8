"""Train ATMC-b for a few steps under a tf.distribute strategy; print a JSON verdict.

Run as a separate process (devices and TF_CONFIG must be set before TF starts):
    python tests/strategy_run.py mirrored
    python tests/strategy_run.py multiworker INDEX PORT0 PORT1   # one process per worker
"""
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import tensorflow as tf

MODE = sys.argv[1] if len(sys.argv) > 1 else "mirrored"
if MODE == "multiworker":
    index, ports = int(sys.argv[2]), sys.argv[3:5]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index}})
else:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
keras.config.disable_traceback_filtering()

from atmc_tf.attacks import PGDConfig  # noqa: E402
from atmc_tf.constraints import num_levels  # noqa: E402
from atmc_tf.layers import atmc_wrappers, wrap_model  # noqa: E402
from atmc_tf.training import ATMCTrainer, dense_weight_count, method_config  # noqa: E402
from conftest import count_steps_term, small_cnn  # noqa: E402


def main():
    if MODE == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None][:512]
    y = d.target.astype("int64")[:512]
    with strategy.scope():
        plain = small_cnn(synchronized_bn=True)
        budget = dense_weight_count(plain) // 5
        cfg = method_config("atmc", attack=PGDConfig(eps=0.1, steps=3), nnz_budget=budget, bits=3,
                            quant_interval=2)
        net = wrap_model(plain)
        terms, constraints = cfg.components()
        counter = count_steps_term()
        trainer = ATMCTrainer(net, terms=terms + [counter], constraints=constraints)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    hist = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0)
    report = {"replicas": strategy.num_replicas_in_sync, "budget": budget, "tensors": [],
              "term_state": [float(p.numpy()) for p in getattr(counter.count.value, "values", [counter.count.value])],
              "replicas_identical": True, "history_nnz": hist.history["nnz"]}
    # The compressed tensors and every constraint's state (ADMM's Z and U, the L0 threshold).
    for v in [v for w in atmc_wrappers(net) for v in w.compressed_variables] + trainer.non_trainable_weights:
        parts = [p.numpy() for p in getattr(v.value, "values", [v.value])]
        same = all(np.array_equal(parts[0], p) for p in parts[1:])
        report["replicas_identical"] &= bool(same) and (len(parts) == 2 or MODE == "multiworker")
    for w in atmc_wrappers(net):
        for v in w.compressed_variables:
            report["tensors"].append({"nnz": int(np.count_nonzero(v.numpy())),
                                      "levels": int(num_levels(v.value, cfg.quant_scheme, w.channel_axes))})
    report["nnz"] = sum(t["nnz"] for t in report["tensors"])
    digest = hashlib.sha256()
    for v in net.weights:
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    report["weights_sha256"] = digest.hexdigest()
    report["per_variable"] = {v.path: hashlib.sha256(np.ascontiguousarray(v.numpy()).tobytes()).hexdigest()[:12]
                              for v in net.weights}
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    main()
