"""Robustness of a model under one attack or the worst case over several, as reviewers count it.

Any registered attack works (an object with attack(model_fn, x, y, seed=None) -> x_adv): each is
crafted batch by batch in one tf.function and the model's top-1 is read on its examples.
"""
import dataclasses

import numpy as np
import tensorflow as tf


def correct_under_attack(model_fn, x, y, config, batch_size=256, seed=None):
    """Per example, does model_fn still predict y on config's adversarial example (bool array).
    seed: an int makes the attack's random starts a function of it and the batch alone (stateless:
    every worker of a distributed run, and a resumed run, draws the same); None: TF's global RNG."""
    y = np.asarray(y).reshape(-1)

    @tf.function(reduce_retracing=True)
    def correct(xb, yb, batch_seed):
        x_adv = config.attack(model_fn, xb, yb) if seed is None else config.attack(model_fn, xb, yb, seed=batch_seed)
        pred = tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32)
        return tf.equal(pred, tf.cast(yb, tf.int32))

    return np.concatenate([correct(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]),
                                   tf.constant([0 if seed is None else int(seed), i], tf.int64)).numpy()
                           for i in range(0, len(y), batch_size)] or [np.zeros(0, bool)])


def per_class_accuracy(correct, y, num_classes):
    """Per class c, the share of examples of label c with correct True (NaN for a class with none)."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    correct = np.asarray(correct, bool).reshape(-1)
    count = np.bincount(y, minlength=num_classes)[:num_classes]
    hits = np.bincount(y, weights=correct.astype(np.float64), minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, hits / np.maximum(count, 1), np.nan)


@dataclasses.dataclass(frozen=True)
class WorstCase:
    """clean: clean accuracy; per_attack: {name: accuracy under that attack}; worst_case: the share
    of examples classified correctly clean AND under every attack (RobustBench's rule), never above
    min(clean, *per_attack.values()); robust: that per-example mask."""

    clean: float
    per_attack: dict
    worst_case: float
    robust: np.ndarray = dataclasses.field(repr=False, compare=False)

    def as_dict(self):
        """JSON-ready: the accuracies, without the mask."""
        return {"clean": self.clean, "per_attack": dict(self.per_attack), "worst_case": self.worst_case}


def worst_case_accuracy(model_fn, x, y, configs, batch_size=256):
    """Accuracy under each attack and the per-example worst case over all of them.

    configs: {name: attack config} or a sequence of configs (named by their registry kind, with
    "_2", "_3", ... on repeats). An example counts as robust only if the model classifies it
    correctly clean and survives every attack; the accuracy of that rule is what an ensemble such
    as AutoAttack reports, and it is below each attack's own accuracy whenever the attacks fool
    different examples.
    """
    from atmc_tf.attacks.registry import attack_to_dict

    if not isinstance(configs, dict):
        named = {}
        for config in configs:
            kind = attack_to_dict(config)["kind"]
            name, n = kind, 1
            while name in named:
                n += 1
                name = f"{kind}_{n}"
            named[name] = config
        configs = named
    if not configs:
        raise ValueError("worst_case_accuracy needs at least one attack")
    y = np.asarray(y).reshape(-1)
    clean = np.concatenate([np.argmax(np.asarray(model_fn(tf.constant(x[i:i + batch_size]))), axis=-1)
                            == y[i:i + batch_size] for i in range(0, len(y), batch_size)] or [np.zeros(0, bool)])
    robust, per_attack = clean.copy(), {}
    for name, config in configs.items():
        ok = correct_under_attack(model_fn, x, y, config, batch_size)
        per_attack[name] = float(ok.mean()) if len(y) else 0.0
        robust &= ok
    n = max(len(y), 1)
    return WorstCase(clean=float(clean.sum() / n), per_attack=per_attack, worst_case=float(robust.sum() / n),
                     robust=robust)


def union_accuracy(predict, x, y, examples, batch_size=256):
    """Accuracy per threat model and under their union, from adversarial examples already crafted.

    predict: images -> logits (a Keras model's predict, or a LiteRTModel's for the transfer check on an
    int8 .tflite); examples: {threat name: x_adv for the whole of x}. An example counts for the union
    only if it is classified correctly clean and on every threat's example (every attack fails).
    Returns a WorstCase (per_attack: the threats, worst_case: the union)."""
    y = np.asarray(y).reshape(-1)

    def correct(images):
        return np.concatenate([np.argmax(np.asarray(predict(images[i:i + batch_size])), axis=-1)
                               == y[i:i + batch_size] for i in range(0, len(y), batch_size)] or [np.zeros(0, bool)])

    n = max(len(y), 1)
    clean = correct(x)
    robust, per_threat = clean.copy(), {}
    for name, x_adv in examples.items():
        ok = correct(x_adv)
        per_threat[name] = float(ok.sum() / n)
        robust &= ok
    return WorstCase(clean=float(clean.sum() / n), per_attack=per_threat, worst_case=float(robust.sum() / n),
                     robust=robust)
