"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), APGD-CE and APGD-DLR, under L_inf or L2, as pure tensor code.

Follows the reference implementation (fra31/auto-attack, autopgd_base.py) step for step: initial
step 2 * eps, momentum 0.75 from the second step on, per-example best-loss point, and at every
checkpoint of `apgd_checkpoints(steps)` each example whose step size is halved restarts from its best
point (with the gradient there). An example's step size halves when

1. fewer than rho * (w_j - w_{j-1}) of its steps since the last checkpoint raised the loss
   (the paper's strict "<"; the reference compares with "<="), or
2. its step size was not halved at the last checkpoint and its best loss has not grown since
   (never at the first checkpoint, as in the reference).

The attack returns, per example, the clean input if the model already misclassifies it, else a
misclassified iterate if one was met, else the highest-loss point; across restarts an example keeps
its worst case (misclassified over not, then the higher loss). Like pgd(), it only calls model_fn,
so it runs eagerly and inside a tf.function (one tf.while_loop per restart).
"""
import dataclasses
import math

import tensorflow as tf

from atmc_tf.attacks.pgd import _norm2, _project, _random_start, _xent, check_threat

NORMS = ("inf", "2")  # APGD's L1 version (Croce & Hein 2021) is another algorithm, not built

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75


def apgd_checkpoints(steps):
    """Iterations w_j = ceil(p_j * steps) after which the step size may halve: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), every w_j in (0, steps], strictly increasing.

    The p_j are kept in integer hundredths: with floats 0.22 * 100 is 22.000000000000004 and its
    ceiling 23."""
    steps = int(steps)
    out, prev, cur = [], 0, 22
    while cur <= 100:
        w = -(-cur * steps // 100)
        if w > 0 and (not out or w > out[-1]):
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return out


def dlr_loss(y, logits):
    """Difference of logits ratio, per example: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12),
    z sorted decreasingly as z_pi1 >= z_pi2 >= z_pi3. Invariant to shifting and (up to the 1e-12)
    to positive scaling of the logits, so a model cannot hide behind logit scale. Needs >= 3 classes."""
    logits = tf.convert_to_tensor(logits)
    if logits.dtype in (tf.float16, tf.bfloat16):
        logits = tf.cast(logits, tf.float32)
    classes = logits.shape[-1]
    if classes is not None and classes < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the logits have {classes}")
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    top = tf.math.top_k(logits, k=3).values
    z_y = tf.gather(logits, y, axis=1, batch_dims=1)
    first_is_y = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
    z_other = tf.where(first_is_y, top[:, 1], top[:, 0])
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


_LOSS_FNS = {"ce": _xent, "dlr": dlr_loss}


@dataclasses.dataclass(frozen=True)
class APGDConfig:
    """One APGD setting. steps: gradient steps per restart (the attack costs steps + 1 gradients
    and one more forward pass per restart); loss "ce" (APGD-CE) or "dlr" (APGD-DLR, >= 3 classes)."""

    eps: float
    steps: int = 100
    loss: str = "ce"
    norm: str = "inf"
    restarts: int = 1
    rho: float = 0.75
    clip_min: float = 0.0
    clip_max: float = 1.0

    def __post_init__(self):
        check_threat(self, NORMS)
        if str(self.loss) not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")

    def attack(self, model_fn, x, y, seed=None):
        """x_adv for (x, y); seed: a stateless seed (shape [2] integers) makes the random starts a
        function of it alone; None: TF's global RNG."""
        return apgd(model_fn, x, y, eps=self.eps, steps=self.steps, loss=self.loss, norm=self.norm,
                    restarts=self.restarts, rho=self.rho, clip_min=self.clip_min, clip_max=self.clip_max,
                    seed=seed)


def _per_example(mask, like):
    """A [batch] boolean reshaped to broadcast against `like` ([batch, ...])."""
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([like.shape.rank - 1], tf.int32)], 0))


def _unit(g, norm):
    return tf.sign(g) if norm == "inf" else g / tf.maximum(_norm2(g), 1e-12)


def apgd(model_fn, x, y, eps, steps=100, loss="ce", norm="inf", restarts=1, rho=0.75,
         clip_min=0.0, clip_max=1.0, seed=None):
    """Untargeted APGD maximising the CE or DLR loss; returns x_adv (gradient-stopped) with
    ||x_adv - x|| <= eps in `norm` and clip_min <= x_adv <= clip_max. See the module docstring."""
    norm = "inf" if norm in ("inf", "linf", math.inf) else str(norm)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if loss not in _LOSS_FNS:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    loss_fn = _LOSS_FNS[loss]
    x = tf.convert_to_tensor(x)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    eps_t = tf.cast(eps, x.dtype)
    steps = int(steps)
    marks = apgd_checkpoints(steps)
    # Indexed by the iteration k = 1..steps: is k a checkpoint, and how many steps since the last one.
    is_mark = tf.constant([k in marks for k in range(steps + 1)])
    gaps = {w: w - p for w, p in zip(marks, [0] + marks[:-1])}
    since_last = tf.constant([float(gaps.get(k, 1)) for k in range(steps + 1)], x.dtype)

    def value_and_grad(x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model_fn(x_adv)
            losses = tf.cast(loss_fn(y, logits), x.dtype)
            total = tf.reduce_sum(losses)
        grad = tape.gradient(total, x_adv)
        wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        return losses, grad, wrong

    def project(v):
        # Clipping to the box that holds x never moves a point away from x: it stays in the ball.
        return tf.clip_by_value(x + _project(v - x, eps_t, norm), clip_min, clip_max)

    clean_wrong = tf.not_equal(tf.argmax(model_fn(x), axis=-1, output_type=tf.int32), y)

    def single_run(restart_seed):
        x0 = project(x + _random_start(x, eps_t, norm, restart_seed))
        loss0, grad0, wrong0 = value_and_grad(x0)
        fooled = clean_wrong | wrong0
        x_fooled = tf.where(_per_example(clean_wrong, x), x, x0)
        step0 = tf.fill(tf.shape(loss0), 2.0 * eps_t)
        state = dict(k=tf.constant(1), x_adv=x0, x_prev=x0, grad=grad0, loss_prev=loss0,
                     x_best=x0, grad_best=grad0, loss_best=loss0, x_fooled=x_fooled, fooled=fooled,
                     step=step0, rises=tf.zeros_like(loss0), loss_best_at_mark=loss0,
                     halved_at_mark=tf.ones_like(fooled))

        def body(s):
            k = s["k"]
            a = tf.where(k > 1, tf.cast(MOMENTUM, x.dtype), tf.cast(1.0, x.dtype))
            z = project(s["x_adv"] + _per_example(s["step"], x) * _unit(s["grad"], norm))
            x_new = project(s["x_adv"] + a * (z - s["x_adv"]) + (1 - a) * (s["x_adv"] - s["x_prev"]))
            loss_new, grad_new, wrong = value_and_grad(x_new)
            x_fooled = tf.where(_per_example(wrong & ~clean_wrong, x), x_new, s["x_fooled"])
            rises = s["rises"] + tf.cast(loss_new > s["loss_prev"], x.dtype)
            better = loss_new > s["loss_best"]
            x_best = tf.where(_per_example(better, x), x_new, s["x_best"])
            grad_best = tf.where(_per_example(better, x), grad_new, s["grad_best"])
            loss_best = tf.where(better, loss_new, s["loss_best"])
            # Checkpoint: halve and restart from the best point where either condition holds.
            mark = tf.gather(is_mark, k)
            oscillating = rises < rho * tf.gather(since_last, k)
            stalled = ~s["halved_at_mark"] & (s["loss_best_at_mark"] >= loss_best)
            halve = mark & (oscillating | stalled)
            wide = _per_example(halve, x)
            return (dict(
                k=k + 1,
                x_adv=tf.where(wide, x_best, x_new), x_prev=s["x_adv"],
                grad=tf.where(wide, grad_best, grad_new),
                loss_prev=tf.where(halve, loss_best, loss_new),
                x_best=x_best, grad_best=grad_best, loss_best=loss_best,
                x_fooled=x_fooled, fooled=s["fooled"] | wrong,
                step=tf.where(halve, s["step"] / 2, s["step"]),
                rises=tf.where(mark, tf.zeros_like(rises), rises),
                loss_best_at_mark=tf.where(mark, loss_best, s["loss_best_at_mark"]),
                halved_at_mark=tf.where(mark, halve, s["halved_at_mark"])),)

        s = tf.while_loop(lambda s: s["k"] <= steps, body, (state,))[0]
        out = tf.where(_per_example(s["fooled"], x), s["x_fooled"], s["x_best"])
        return tf.stop_gradient(out), s["fooled"], s["loss_best"]

    best = None
    for r in range(int(restarts)):
        restart_seed = None if seed is None else tf.random.experimental.stateless_fold_in(
            tf.cast(seed, tf.int64), r)
        run = single_run(restart_seed)
        if best is None:
            best = run
            continue
        # Worst case per example: a misclassified point beats any other, then the higher loss.
        take = (run[1] & ~best[1]) | ((run[1] == best[1]) & (run[2] > best[2]))
        best = (tf.where(_per_example(take, x), run[0], best[0]), run[1] | best[1],
                tf.where(take, run[2], best[2]))
    return best[0]
