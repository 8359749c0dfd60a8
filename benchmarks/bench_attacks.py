"""The benchmark's cells attacked as reviewers attack them (issue 18, part 5): evaluation only.

Per cell, from its saved Keras model and its int8 .tflite:
- Keras, white box, the whole test split: PGD (the run's --eval_pgd_steps x --eval_restarts, the cell's own
  attack, crafted again), APGD-CE and APGD-DLR (AutoAttack's, --apgd_steps each, one restart), and per example
  the worst case of the three (RobustBench's rule: correct clean and under every attack).
- The int8 .tflite itself: the three attacks' images transferred, PGD crafted through the file's fake-quant
  float twin (atmc_tf.export.twin: its own int8 scales, white box on the deployed arithmetic), and Square
  Attack (score-based, LiteRT in the loop) on the first --square_n test images with --square_queries queries;
  the per-example worst case of everything.
A TFMOT cell (a tf_keras model, another process) gets the .tflite-side attacks that need no Keras model: its
file's twin and Square.
"""
import contextlib
import time

import numpy as np
from absl import logging

def attack_settings(cfg, bench):
    """What a cell's "attacks" entry is measured with; a cell measured with other settings is attacked again."""
    return {"apgd_steps": int(bench["apgd_steps"]), "square_n": int(bench["square_n"]),
            "square_queries": int(cfg.square_queries), "eps": float(cfg.eps),
            "eval_pgd_steps": int(cfg.eval_pgd_steps), "eval_restarts": int(cfg.eval_restarts),
            "seed": int(cfg.seed)}


def _correct(predict, x, y, batch_size=256):
    return np.concatenate([np.asarray(predict(x[i:i + batch_size])).argmax(-1) == y[i:i + batch_size]
                           for i in range(0, len(y), batch_size)])


def _worst(masks):
    out = None
    for m in masks:
        out = m.copy() if out is None else out & m
    return out


def attack_fields(cfg, settings, tflite_bytes, data, keras_model=None):
    """The cell's "attacks" entry: accuracies (fractions) per attack and the per-example worst cases.
    keras_model None (TFMOT): the .tflite-side attacks only."""
    from atmc_tf.attacks import APGDConfig, adversarial_examples, per_class_accuracy
    from atmc_tf.export import LiteRTModel, fake_quant_twin, square_attack, twin_agreement, twin_attack
    from pipelines import stages
    t = time.time()
    x, y = data.x_test, np.asarray(data.y_test).reshape(-1)
    n = min(settings["square_n"], len(y))
    phases = {}

    @contextlib.contextmanager
    def phase(name):  # a cell takes minutes: say what runs, and keep each attack's seconds
        logging.info("attacks: %s on %d images", name, len(x) if name != "square" else n)
        start = time.time()
        yield
        phases[name] = time.time() - start

    eps = settings["eps"]
    lite = LiteRTModel(tflite_bytes)
    lite_ok = {"clean": _correct(lite.predict, x, y)}
    keras_ok = {}
    if keras_model is not None:
        fn = lambda z: keras_model(z, training=False)  # noqa: E731
        attacks = {"pgd": stages.eval_attack(cfg),
                   "apgd-ce": APGDConfig(eps=eps, steps=settings["apgd_steps"], loss="ce"),
                   "apgd-dlr": APGDConfig(eps=eps, steps=settings["apgd_steps"], loss="dlr")}
        keras_ok["clean"] = _correct(fn, x, y)
        for name, config in attacks.items():
            with phase(name):
                x_adv = adversarial_examples(fn, x, y, config)
                keras_ok[name] = _correct(fn, x_adv, y)
                lite_ok[f"transfer {name}"] = _correct(lite.predict, x_adv, y)
    twin = fake_quant_twin(tflite_bytes)
    with phase("twin pgd"):
        x_twin = twin_attack(tflite_bytes, x, y, stages.eval_attack(cfg), twin=twin)
        lite_ok["twin pgd"] = _correct(lite.predict, x_twin, y)
    with phase("square"):
        x_sq, queries = square_attack(lite.predict, x[:n], y[:n], eps, n_queries=settings["square_queries"],
                                      seed=settings["seed"])
        square = _correct(lite.predict, x_sq, y[:n])
    lite_worst = _worst(lite_ok.values())
    direct = lite_ok["clean"][:n] & lite_ok["twin pgd"][:n] & square
    out = {"settings": dict(settings), "n": int(len(y)),
           "tflite": {k: float(v.mean()) for k, v in lite_ok.items()},
           "tflite_worst_case": float(lite_worst.mean()),
           "twin_agreement": twin_agreement(twin, lite, x),
           "square": {"n": n, "acc": float(square.mean()), "queries_mean": float(np.mean(queries)),
                      "queries_max": int(np.max(queries)), "budget": settings["square_queries"]},
           "first_n": {"n": n, "tflite_direct": float(direct.mean()),
                       "tflite_worst_case": float((lite_worst[:n] & square).mean())}}
    per_class = lambda mask: [None if np.isnan(v) else float(v)  # noqa: E731
                              for v in per_class_accuracy(mask, y, data.num_classes)]
    out["per_class"] = {"tflite_clean": per_class(lite_ok["clean"]), "tflite_worst_case": per_class(lite_worst)}
    if keras_model is not None:
        keras_worst = _worst(keras_ok.values())
        out["keras"] = {k: float(v.mean()) for k, v in keras_ok.items()}
        out["keras_worst_case"] = float(keras_worst.mean())
        out["first_n"]["keras_worst_case"] = float(keras_worst[:n].mean())
        out["per_class"]["keras_worst_case"] = per_class(keras_worst)
    out["seconds"], out["seconds_by_attack"] = time.time() - t, phases
    return out
