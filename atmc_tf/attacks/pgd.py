"""Projected gradient descent (Madry et al.) under L_inf, L2 or L1, as pure tensor code.

pgd(model_fn, x, y, ...) -> x_adv. model_fn maps a batch to logits; it is
called, not inspected, so the same function serves inside a train_step (a
tf.function, any tf.distribute replica) and in evaluation. The random start
really happens (uniform in the L_inf ball, uniform radius in the L2 ball,
uniform in the L1 ball), every iterate is projected back onto the eps-ball and
clipped to the data range (L1: the exact projection onto the ball intersected
with the box, and sparse steepest-ascent steps: attacks/l1.py), and with
restarts > 1 each example keeps its highest-loss restart.
"""
import dataclasses
import math

import numpy as np
import tensorflow as tf

from atmc_tf.attacks import l1

NORMS = ("inf", "2", "1")


def check_threat(config, norms=NORMS):
    """ValueError unless an attack config's shared fields are valid: eps (finite, >= 0), steps >= 1,
    norm in `norms`, restarts >= 1, clip_min < clip_max (PGDConfig, APGDConfig)."""
    if not (config.eps >= 0 and math.isfinite(config.eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {config.eps}")
    if int(config.steps) < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    if str(config.norm) not in norms:
        raise ValueError(f"norm must be one of {norms}, got {config.norm!r}")
    if int(config.restarts) < 1:
        raise ValueError(f"restarts must be >= 1, got {config.restarts}")
    if not config.clip_min < config.clip_max:
        raise ValueError("clip_min must be < clip_max")


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """One attack setting. step_size None means 2.5 * eps / steps (Madry)."""

    eps: float
    steps: int = 7
    step_size: float | None = None
    norm: str = "inf"
    rand_init: bool = True
    restarts: int = 1
    clip_min: float = 0.0
    clip_max: float = 1.0

    def __post_init__(self):
        check_threat(self)
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")

    @property
    def alpha(self):
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def attack(self, model_fn, x, y, seed=None):
        """x_adv for (x, y); seed: a stateless seed (shape [2] integer tensor) makes the random
        start a function of it alone (a training step passes one derived from its step count,
        so a resumed run draws the same starts as an uninterrupted one); None: TF's global RNG."""
        return pgd(model_fn, x, y, eps=self.eps, step_size=self.alpha, steps=self.steps,
                   norm=self.norm, rand_init=self.rand_init, restarts=self.restarts,
                   clip_min=self.clip_min, clip_max=self.clip_max, seed=seed)


def _xent(y, logits):
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=tf.cast(logits, tf.float32))


def _norm2(t):
    axes = list(range(1, t.shape.rank))
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))


def _project(delta, eps, norm):
    if norm == "inf":
        return tf.clip_by_value(delta, -eps, eps)
    return delta * tf.minimum(1.0, eps / tf.maximum(_norm2(delta), 1e-12))


def _random_start(x, eps, norm, seed=None):
    """A uniform point of the eps-ball around 0 per example; from TF's global RNG, or a
    function of `seed` alone (stateless) when one is given."""
    if seed is None:
        uniform, normal = tf.random.uniform, tf.random.normal
    else:
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        uniform = lambda shape, *a, **k: tf.random.stateless_uniform(shape, seeds[0], *a, **k)  # noqa: E731
        normal = lambda shape, **k: tf.random.stateless_normal(shape, seeds[1], **k)  # noqa: E731
    if norm == "inf":
        return uniform(tf.shape(x), -eps, eps, dtype=x.dtype)
    if norm == "1":
        return l1.random_l1(x, eps, seed)
    direction = normal(tf.shape(x), dtype=x.dtype)
    direction /= tf.maximum(_norm2(direction), 1e-12)
    radius = uniform(tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], 0), dtype=x.dtype)
    return direction * radius * eps


def pgd(model_fn, x, y, eps, step_size=None, steps=10, norm="inf", rand_init=True,
        clip_min=0.0, clip_max=1.0, restarts=1, loss_fn=None, seed=None, l1_sparsity=0.99):
    """Untargeted PGD maximising loss_fn(y, model_fn(x_adv)) (per-example losses).
    norm "1": each step moves the top (1 - l1_sparsity) fraction of coordinates (attacks/l1.py).

    Returns x_adv with ||x_adv - x|| <= eps (in `norm`) and clip_min <= x_adv <= clip_max,
    gradient-stopped. loss_fn defaults to softmax cross-entropy on logits. seed (shape [2]
    integers) makes the random starts stateless: the same seed, the same starts.
    """
    norm = "inf" if norm in (np.inf, "inf", "linf") else str(norm)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    loss_fn = loss_fn or _xent
    x = tf.convert_to_tensor(x)
    eps_t = tf.cast(eps, x.dtype)
    alpha = tf.cast(step_size if step_size is not None else 2.5 * eps / steps, x.dtype)

    def step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(loss_fn(y, model_fn(x_adv)))
        grad = tape.gradient(loss, x_adv)
        if norm == "1":
            x_adv = x_adv + alpha * l1.l1_step(grad, x_adv, clip_min, clip_max, l1_sparsity)
            return i + 1, tf.clip_by_value(x + l1.project_l1_box(x_adv - x, eps_t, clip_min - x, clip_max - x),
                                           clip_min, clip_max)
        if norm == "inf":
            x_adv = x_adv + alpha * tf.sign(grad)
        else:
            x_adv = x_adv + alpha * grad / tf.maximum(_norm2(grad), 1e-12)
        x_adv = x + _project(x_adv - x, eps_t, norm)
        # Clipping to the box that contains x never moves a point away from x,
        # so the result stays inside the eps-ball.
        return i + 1, tf.clip_by_value(x_adv, clip_min, clip_max)

    best, best_loss = x, None
    for r in range(int(restarts)):
        restart_seed = None if seed is None else tf.random.experimental.stateless_fold_in(
            tf.cast(seed, tf.int64), r)
        start = x + _random_start(x, eps_t, norm, restart_seed) if rand_init else x
        start = tf.clip_by_value(start, clip_min, clip_max)
        _, x_adv = tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), start))
        x_adv = tf.stop_gradient(x_adv)
        if restarts == 1:
            return x_adv
        loss = loss_fn(y, model_fn(x_adv))
        if best_loss is None:
            best, best_loss = x_adv, loss
        else:
            better = loss > best_loss
            shape = tf.concat([tf.shape(better), tf.ones([x.shape.rank - 1], tf.int32)], 0)
            best = tf.where(tf.reshape(better, shape), x_adv, best)
            best_loss = tf.maximum(loss, best_loss)
    return best


def fgsm(model_fn, x, y, eps, clip_min=0.0, clip_max=1.0, norm="inf"):
    """Fast gradient sign method: PGD with one full step and no random start."""
    return pgd(model_fn, x, y, eps=eps, step_size=eps, steps=1, norm=norm, rand_init=False,
               clip_min=clip_min, clip_max=clip_max)


def adversarial_examples(model_fn, x, y, config, batch_size=256):
    """Adversarial examples for a whole array (config: any registered attack), crafted batch by batch in one
    tf.function; a NumPy array like x. For attacking another model with the same images
    (transfer, e.g. an int8 .tflite) or storing them."""
    y = np.asarray(y).reshape(-1)
    craft = tf.function(lambda xb, yb: config.attack(model_fn, xb, yb), reduce_retracing=True)
    return np.concatenate([craft(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size])).numpy()
                           for i in range(0, len(y), batch_size)])


def robust_accuracy(model_fn, x, y, config, batch_size=256):
    """Accuracy of model_fn on the examples of `config` (PGDConfig: eps 0 = clean accuracy; any
    other registered attack, e.g. APGDConfig, through its attack())."""
    if not isinstance(config, PGDConfig):
        from atmc_tf.attacks.evaluate import correct_under_attack
        correct = correct_under_attack(model_fn, x, y, config, batch_size)
        return float(correct.sum() / max(len(correct), 1))
    return accuracy_curve(model_fn, x, y, config, [config.eps], batch_size)[config.eps]


def accuracy_curve(model_fn, x, y, config, eps_values, batch_size=256):
    """{eps: accuracy under `config` with that eps} for every eps in eps_values.

    One tf.function serves every batch and every eps (eps and the step size
    are tensor arguments), so the attack is traced once, not once per point.
    The step size scales with eps as config.alpha does for config.eps.
    """
    y = np.asarray(y).reshape(-1)
    ratio = config.alpha / config.eps if config.eps > 0 else 2.5 / config.steps

    @tf.function(reduce_retracing=True)
    def correct(xb, yb, eps, attack):
        xa = tf.cond(attack,
                     lambda: pgd(model_fn, xb, yb, eps=eps, step_size=eps * ratio, steps=config.steps,
                                 norm=config.norm, rand_init=config.rand_init, restarts=config.restarts,
                                 clip_min=config.clip_min, clip_max=config.clip_max),
                     lambda: xb)
        pred = tf.argmax(model_fn(xa), axis=-1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(pred == tf.cast(yb, tf.int32), tf.int32))

    out = {}
    for e in eps_values:
        hits = 0
        for i in range(0, len(y), batch_size):
            hits += int(correct(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]),
                                tf.constant(float(e), tf.float32), tf.constant(float(e) > 0)))
        out[e] = hits / max(len(y), 1)
    return out
