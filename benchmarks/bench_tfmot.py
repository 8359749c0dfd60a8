"""The benchmark's TFMOT peer, in its own process: prune_low_magnitude + pruning-preserving QAT on tf_keras.

    TF_USE_LEGACY_KERAS=1 python -m benchmarks.bench_tfmot --weights=da.npz --out=result.json \
        --target_gzip=60000 ...

benchmarks/benchmark.py starts it with subprocess; it never runs in the Keras 3
process, because tensorflow-model-optimization works only with tf_keras (Keras
2) and switches TensorFlow to it for the whole process (TF_USE_LEGACY_KERAS=1).

What it does, as a TFMOT user would today:
1. Rebuild the benchmark's LeNet in tf_keras, copy the DA weights in (the .npz the
   benchmark wrote) and check the logits against the Keras 3 model's.
2. Pick the per-layer sparsity s whose int8 .tflite gzips to --target_gzip
   (bisection on the gzipped size of the magnitude-pruned, QAT-wrapped model
   before any training: cheap, and the size hardly moves during fine-tuning).
3. prune_low_magnitude (PolynomialDecay 0 -> s over the first 60% of the steps),
   natural fine-tuning (TFMOT has no adversarial training), strip_pruning.
4. Pruning-preserving QAT: quantize_apply with Default8BitPrunePreserveQuantizeScheme.
5. Full-integer int8 .tflite (int8 input/output), its raw and gzipped bytes.
6. Clean and robust accuracy with the benchmark's protocol: PGD crafted on the QAT
   tf_keras model (fake-quant, straight-through gradients), run on the .tflite.
ReLUs are fused into Conv2D/Dense (activation="relu", the same function): with
separate ReLU layers TFMOT 0.8.1's LayerReLUQuantize transform gives the
convolutions a NoOpQuantizeConfig and QAT then neither quantizes nor keeps
their kernels sparse.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is imported

import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

F = flags.FLAGS
flags.DEFINE_string("weights", None, "The .npz of the DA model's weights (layer_name/index) and check logits.")
flags.DEFINE_string("out", None, "Where to write the result JSON.")
flags.DEFINE_integer("target_gzip", None, "Gzipped .tflite bytes to match (picks the sparsity).")
flags.DEFINE_float("sparsity", None, "Use this per-layer sparsity instead of matching --target_gzip.")
flags.DEFINE_string("model", "lenet", "Architecture of the DA model: lenet or mlp.")
flags.DEFINE_string("dataset", "fashion_mnist", "atmc_tf.data data set.")
flags.DEFINE_string("data_dir", None, "Data directory.")
flags.DEFINE_integer("seed", 0, "Seed (data split, as the benchmark's).")
flags.DEFINE_integer("limit_train", None, "Training images limit (as the benchmark's).")
flags.DEFINE_integer("limit_test", None, "Test images limit (as the benchmark's).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("prune_epochs", 4, "Pruning fine-tuning epochs.")
flags.DEFINE_integer("qat_epochs", 2, "Quantization-aware training epochs.")
flags.DEFINE_float("prune_lr", 1e-3, "Adam learning rate while pruning.")
flags.DEFINE_float("qat_lr", 1e-4, "Adam learning rate for QAT.")
flags.DEFINE_float("eps", 0.1, "L_inf PGD radius.")
flags.DEFINE_integer("eval_pgd_steps", 20, "PGD steps for evaluation.")
flags.DEFINE_integer("eval_restarts", 5, "PGD restarts for evaluation.")
flags.DEFINE_integer("search_iters", 10, "Bisection steps on the sparsity.")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")

MAX_SPARSITY = 0.999
REP_SAMPLES = 300


def build_tf_keras(name, input_shape, num_classes):
    """atmc_tf.models' architectures in tf_keras, ReLUs fused, same layer names and weight order."""
    import tf_keras as K
    L = K.layers
    inputs = K.Input(shape=tuple(input_shape))
    if name == "lenet":
        x = L.Conv2D(20, 5, padding="same", activation="relu", name="conv1")(inputs)
        x = L.MaxPooling2D(2, padding="same", name="pool1")(x)
        x = L.Conv2D(50, 5, padding="same", activation="relu", name="conv2")(x)
        x = L.MaxPooling2D(2, padding="same", name="pool2")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(500, activation="relu", name="fc1")(x)
    elif name == "mlp":
        x = L.Flatten(name="flatten")(inputs)
        x = L.Dense(256, activation="relu", name="fc1")(x)
    else:
        raise ValueError(f"bench_tfmot supports lenet and mlp, not {name!r}")
    outputs = L.Dense(num_classes, name="logits")(x)
    return K.Model(inputs, outputs, name=name)


def load_weights(model, npz):
    for layer in model.layers:
        n = len(layer.get_weights())
        if n:
            layer.set_weights([npz[f"{layer.name}/{i}"] for i in range(n)])


def kernel_layers(model):
    import tf_keras as K
    return [l for l in model.layers if isinstance(l, (K.layers.Conv2D, K.layers.Dense))]


def magnitude_prune(model, sparsity):
    """Per-layer magnitude pruning of every kernel, as prune_low_magnitude's mask does."""
    import tf_keras as K
    pruned = K.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    for layer in kernel_layers(pruned):
        w = layer.kernel.numpy()
        keep = max(1, int(round(w.size * (1 - sparsity))))
        if keep < w.size:
            thr = np.sort(np.abs(w).ravel())[-keep]
            w = np.where(np.abs(w) >= thr, w, 0).astype(w.dtype)
        layer.kernel.assign(w)
    return pruned


def qat_model(model):
    import tensorflow_model_optimization as tfmot
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    return tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())


def to_tflite(model, rep_x):
    """The same full-int8 conversion as atmc_tf's, from the tf_keras model (atmc_tf's exports a
    Keras 3 model through a SavedModel)."""
    import tensorflow as tf
    from atmc_tf.export.tflite import calibration_samples, set_full_int8
    calib = calibration_samples(rep_x, REP_SAMPLES)

    def representative():
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    return set_full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative).convert()


def gzip_at(model, sparsity, x_cal):
    """Gzipped bytes of the int8 .tflite of `model` pruned to `sparsity`, QAT-wrapped, untrained."""
    from atmc_tf.export import gzip_size
    q = qat_model(magnitude_prune(model, sparsity))
    q(x_cal, training=True)  # sets the fake-quant ranges of weights and activations once
    return gzip_size(to_tflite(q, x_cal))


def match_sparsity(model, target, x_cal, iters):
    """Sparsity whose gzipped .tflite is closest to `target` (size falls as sparsity rises)."""
    table = {}

    def size(s):
        if s not in table:
            table[s] = gzip_at(model, s, x_cal)
            logging.info("tfmot calibration: sparsity %.5f -> %d gzipped bytes (target %d)", s, table[s], target)
        return table[s]

    lo, hi = 0.0, MAX_SPARSITY
    if size(hi) >= target:
        return hi, table
    if size(lo) <= target:
        return lo, table
    # Bisect on log(1 - s): the sizes that matter sit at 90-99.9% sparsity.
    a, b = math.log(1 - lo), math.log(1 - hi)
    for _ in range(iters):
        mid = (a + b) / 2
        s = 1 - math.exp(mid)
        if size(s) > target:
            a = mid
        else:
            b = mid
    best = min(table, key=lambda s: abs(table[s] - target))
    return best, table


def craft(model, x, y, eps, steps, restarts):
    from atmc_tf.attacks import PGDConfig, adversarial_examples
    atk = PGDConfig(eps=eps, steps=steps, restarts=restarts, step_size=2.5 * eps / steps)
    return adversarial_examples(lambda z: model(z, training=False), x, y, atk)


def versions():
    from pipelines.provenance import package_versions
    return package_versions(("tensorflow", "tf-keras", "tensorflow-model-optimization"), with_python=False)


def run():
    import tf_keras as K
    import tensorflow_model_optimization as tfmot

    from atmc_tf.constraints.accounting import TensorSize, size_report
    from atmc_tf.data import load_dataset
    from atmc_tf.export import atomic, evaluate_deployment, gzip_size, tflite_kernels
    from benchmarks.bench_report import accuracy_fields

    t_start = time.time()
    K.utils.set_random_seed(F.seed)
    data = load_dataset(F.dataset, data_dir=F.data_dir, seed=F.seed, limit_train=F.limit_train,
                        limit_test=F.limit_test)
    npz = np.load(F.weights)
    model = build_tf_keras(F.model, data.input_shape, data.num_classes)
    load_weights(model, npz)
    diff = float(np.max(np.abs(model.predict(npz["check_x"], verbose=0) - npz["check_logits"])))
    if diff > 1e-3:
        raise RuntimeError(f"the tf_keras rebuild does not reproduce the DA model (max |logit diff| {diff})")
    rep_x = data.x_train[:REP_SAMPLES]
    out_dir = os.path.dirname(os.path.abspath(F.out))

    t = time.time()
    if F.sparsity is not None:
        sparsity, table = float(F.sparsity), {}
    else:
        sparsity, table = match_sparsity(model, F.target_gzip, rep_x, F.search_iters)
    search_s = time.time() - t
    logging.info("tfmot: sparsity %.5f", sparsity)

    loss = K.losses.SparseCategoricalCrossentropy(from_logits=True)
    t = time.time()
    steps = F.prune_epochs * math.ceil(len(data.y_train) / F.batch_size)
    if sparsity > 0 and F.prune_epochs > 0:
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=max(1, int(0.6 * steps)),
            frequency=max(1, min(100, steps // 20)))
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        pruned.compile(optimizer=K.optimizers.Adam(F.prune_lr), loss=loss, metrics=["accuracy"])
        h1 = pruned.fit(data.x_train, data.y_train, epochs=F.prune_epochs, batch_size=F.batch_size,
                        validation_data=(data.x_val, data.y_val), verbose=F.verbose,
                        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
        history = {"prune": {k: [float(v) for v in vs] for k, vs in h1.history.items()}}
    else:
        stripped, history = model, {}
    prune_s = time.time() - t
    t = time.time()
    qat = qat_model(stripped)
    qat.compile(optimizer=K.optimizers.Adam(F.qat_lr), loss=loss, metrics=["accuracy"])
    if F.qat_epochs > 0:
        h2 = qat.fit(data.x_train, data.y_train, epochs=F.qat_epochs, batch_size=F.batch_size,
                     validation_data=(data.x_val, data.y_val), verbose=F.verbose)
        history["qat"] = {k: [float(v) for v in vs] for k, vs in h2.history.items()}
    qat_s = time.time() - t

    tfl = to_tflite(qat, rep_x)
    tfl_file = os.path.join(out_dir, "model_int8.tflite")
    atomic.write_bytes_atomic(tfl_file, tfl)
    kernels = tflite_kernels(tfl)
    tensors = []
    for kern in kernels:
        w = kern["weights"]
        levels = len(np.unique(w[w != 0]))
        tensors.append(TensorSize(name=kern["name"], numel=int(w.size), nnz=int(np.count_nonzero(w)),
                                  levels=levels, scales=len(kern["scales"])))
    dense = int(sum(int(np.prod(l.kernel.shape)) for l in kernel_layers(model)))
    size = size_report(tensors, dense).as_dict()

    t = time.time()
    ev = evaluate_deployment(tfl, data.x_test, data.y_test, keras_model=qat,
                             x_adv=lambda x, y: craft(qat, x, y, F.eps, F.eval_pgd_steps, F.eval_restarts))
    eval_s = time.time() - t
    gz = gzip_size(tfl)
    result = {
        "method": "tfmot", "status": "done", "sparsity": sparsity, "target_gzip_bytes": F.target_gzip,
        "gzip_mismatch": None if not F.target_gzip else (gz - F.target_gzip) / F.target_gzip,
        **accuracy_fields(ev),
        "paper_bits": size["paper_bits"], "paper_ratio": size["paper_ratio"], "honest_bits": size["honest_bits"],
        "nnz": size["nnz"], "size": size, "tflite_bytes": len(tfl), "tflite_gzip_bytes": gz,
        "tflite_file": tfl_file,
        "layer_sparsity": {k["name"]: 1 - float(np.count_nonzero(k["weights"])) / k["weights"].size
                           for k in kernels},
        "per_channel_scales": {k["name"]: len(k["scales"]) for k in kernels},
        "train_seconds": prune_s + qat_s, "prune_seconds": prune_s, "qat_seconds": qat_s,
        "search_seconds": search_s, "eval_seconds": eval_s, "total_seconds": time.time() - t_start,
        "calibration": {f"{s:.6f}": v for s, v in sorted(table.items())},
        "lr": f"{F.prune_lr:g}/{F.qat_lr:g}", "prune_epochs": F.prune_epochs, "qat_epochs": F.qat_epochs,
        "rebuild_max_logit_diff": diff, "history": history, "versions": versions(),
        "attack": f"PGD-{F.eval_pgd_steps} x {F.eval_restarts} restarts crafted on the QAT tf_keras model "
                  "(fake-quant, straight-through gradients); .tflite: the same images (transfer)",
        "training": "natural (TFMOT has no adversarial training)",
    }
    atomic.write_json_atomic(F.out, result)
    logging.info("tfmot: clean %.4f robust %.4f (.tflite %.4f / %.4f), %d B gzipped (target %s)",
                 result["clean_acc"], result["robust_acc"], result["tflite_clean_acc"], result["tflite_robust_acc"],
                 gz, F.target_gzip)
    return result


def main(argv):
    if len(argv) > 1:
        sys.stderr.write(f"error: unexpected arguments {argv[1:]}\n")
        sys.exit(2)
    for name in ("weights", "out"):
        if not F[name].value:
            sys.stderr.write(f"error: --{name} is required\n")
            sys.exit(2)
    if F.target_gzip is None and F.sparsity is None:
        sys.stderr.write("error: give --target_gzip or --sparsity\n")
        sys.exit(2)
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        sys.stderr.write("error: TF_USE_LEGACY_KERAS must be 1 for tensorflow-model-optimization\n")
        sys.exit(2)
    run()


if __name__ == "__main__":
    app.run(main)
