"""The benchmark's cost measurements, each short and in the calling process.

- step_time_ratio: time per ATMCTrainer step (ATMC-b: wrapped model, global top-k
  after every step, ADMM codebook every quant_interval steps) over time per bare
  PGD adversarial-training step (ATMCTrainer with method "da" on the unwrapped
  model: the same attack, the same loss mix, no constraint), on the same batches,
  back to back in alternating rounds after warm-up.
- resnet50_cost: one global L0 projection and one codebook fit over the conv/dense
  kernels of keras.applications.ResNet50(weights=None) (~25.5M weights; nothing is
  downloaded), against one training step of that network. The projection is timed
  cold (full top_k) and warm (started from the previous threshold after one plain SGD
  step from the projected kernels, as the trainer runs it); the codebook is fitted to
  the projected kernels.
"""
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from atmc_tf import constraints as C
from atmc_tf.attacks import PGDConfig
from atmc_tf.constraints.accounting import budget_for_ratio
from atmc_tf.layers import kernel_channel_axes
from atmc_tf.training import ATMCTrainer, compressible_layers, dense_weight_count, method_config, wrap_for_method


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _trainer(net, config, make_optimizer):
    trainer = ATMCTrainer(net, config)
    trainer.compile(optimizer=make_optimizer())
    trainer.prepare_constraints()
    return trainer


def step_time_ratio(plain, x, y, attack, ratio, bits_list=(8, 4), quant_scheme="codebook_int8", rho=0.1,
                    quant_interval=5, clean_weight=0.5, batch_size=64, steps=20, rounds=3, *, make_optimizer):
    """Median seconds per train step of ATMC-b and of bare PGD-AT, and their ratios.

    make_optimizer: returns a fresh optimizer per trainer, the one the real stages use."""
    steps = max(quant_interval, steps - steps % quant_interval)  # whole ADMM periods
    n_batches = steps
    need = n_batches * batch_size
    reps = int(np.ceil(need / len(y)))
    xs, ys = np.concatenate([x] * reps)[:need], np.concatenate([y] * reps)[:need]
    batches = [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, need, batch_size)]
    mix = dict(clean_weight=clean_weight, adv_weight=1 - clean_weight)
    tensors = len(compressible_layers(plain))
    n = dense_weight_count(plain)
    trainers = {"bare": _trainer(_clone(plain), method_config("da", attack=attack, **mix), make_optimizer)}
    budgets = {}
    for b in bits_list:
        try:
            k = budget_for_ratio(ratio, n, b, tensors)
        except ValueError:
            continue
        budgets[b] = k
        cfg = method_config("atmc", attack=attack, nnz_budget=k, bits=b, quant_scheme=quant_scheme, rho=rho,
                            quant_interval=quant_interval, **mix)
        trainers[f"atmc{b}"] = _trainer(wrap_for_method(plain, cfg), cfg, make_optimizer)
    for tr in trainers.values():  # warm-up: trace, and one full ADMM period
        for xb, yb in batches[:quant_interval + 1]:
            tr.train_on_batch(xb, yb)
    times = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            tr = trainers[name]
            t0 = time.perf_counter()
            for xb, yb in batches:
                tr.train_on_batch(xb, yb)
            times[name].append((time.perf_counter() - t0) / len(batches))
    out = {"batch_size": int(batch_size), "pgd_steps": int(attack.steps), "steps": len(batches), "rounds": rounds,
           "quant_interval": quant_interval, "ratio_budget": ratio, "loadavg": _loadavg(),
           "bare_step_s": statistics.median(times["bare"]), "all_times_s": times}
    for b in bits_list:
        name = f"atmc{b}"
        if name in times:
            out[f"{name}_step_s"] = statistics.median(times[name])
            out[f"ratio_{name}"] = out[f"{name}_step_s"] / out["bare_step_s"]
            out[f"k{b}"] = budgets[b]
        else:
            out[f"{name}_step_s"] = out[f"ratio_{name}"] = None
    return out


def _timed(fn, reps):
    fn()  # warm-up (tracing)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _sgd_step(model, kernels, weights, x, y, lr):
    """The kernels after one plain SGD step (learning rate lr) from `weights` on the batch (x, y);
    the model's kernels are left as they were."""
    before = [tf.convert_to_tensor(v.value) for v in kernels]
    for var, val in zip(kernels, weights):
        var.assign(val)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    grads = tape.gradient(loss, kernels)
    for var, val in zip(kernels, before):
        var.assign(val)
    return [w - lr * g for w, g in zip(weights, grads)]


def resnet50_cost(input_size=224, batch=4, reps=3, ratio=0.01, bits_list=(8, 4), quant_scheme="codebook_int8",
                  quant_interval=5, eps=0.1, pgd_steps=7, pgd_step=True, seed=0, lr=0.01):
    """Seconds for one L0 projection + one codebook fit over ResNet-50's kernels vs one training step."""
    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(weights=None, input_shape=(input_size, input_size, 3), classes=1000,
                                        classifier_activation=None)
    layers = compressible_layers(model)
    kernels = [l.kernel for l in layers]
    n = int(sum(int(np.prod(k.shape)) for k in kernels))
    rng = np.random.default_rng(seed)
    x = rng.random((batch, input_size, input_size, 3), dtype=np.float32)
    y = rng.integers(0, 1000, batch)
    out = {"input": input_size, "batch": batch, "reps": reps, "tensors": len(kernels), "weights": n,
           "ratio": ratio, "quant_scheme": quant_scheme, "quant_interval": quant_interval, "pgd_steps": pgd_steps,
           "bits": list(bits_list), "per_bits": {}, "loadavg": _loadavg(), "warm_step_lr": lr}

    initial = model.get_weights()  # random labels at lr 0.01 can drive the timed steps to NaN
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out["natural_step_s"] = _timed(lambda: model.train_on_batch(x, y), reps)
    out["pgd_step_s"] = None
    if pgd_step:
        trainer = ATMCTrainer(model, method_config("da", attack=PGDConfig(eps=eps, steps=pgd_steps)))
        trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        out["pgd_step_s"] = _timed(lambda: trainer.train_on_batch(x, y), reps)

    model.set_weights(initial)  # project and fit the initialised kernels, not what the timed steps left
    values = [tf.convert_to_tensor(k.value) for k in kernels]
    axes = [kernel_channel_axes(l) for l in layers]
    for b in bits_list:
        k = budget_for_ratio(ratio, n, b, len(kernels))
        project = tf.function(lambda vs, k=k: C.project_l0(vs, k))
        warm = tf.function(lambda vs, hint, k=k: C.project_l0_hinted(vs, k, hint))
        fit = tf.function(lambda vs, b=b: [C.quantize(v, quant_scheme, b, a) for v, a in zip(vs, axes)])
        t_proj = _timed(lambda: [t.numpy() for t in project(values)[:1]], reps)
        # What a training step pays: the projection warm-started from the previous step's
        # threshold, after one real training step from projected weights; the codebook is fitted
        # to the projected (sparse) kernels, as the ADMM update does.
        projected, kth = C.project_l0_hinted(values, k, 0.0)
        stepped = _sgd_step(model, kernels, projected, x, y, lr)
        t_warm = _timed(lambda: [t.numpy() for t in warm(stepped, kth)[0][:1]], reps)
        candidates = int(sum(int(tf.math.count_nonzero(tf.abs(t) >= 0.5 * kth)) for t in stepped))
        t_fit = _timed(lambda: [t.numpy() for t in fit(projected)[:1]], reps)
        e = {"k": int(k), "project_l0_s": t_proj, "project_l0_warm_s": t_warm, "warm_candidates": candidates,
             "codebook_s": t_fit,
             "fraction_of_natural_step": (t_proj + t_fit) / out["natural_step_s"]}
        if out["pgd_step_s"]:
            e["fraction_of_pgd_step"] = (t_proj + t_fit) / out["pgd_step_s"]
            e["amortized_fraction_of_pgd_step"] = (t_warm + t_fit / quant_interval) / out["pgd_step_s"]
        out["per_bits"][str(b)] = e
    return out
