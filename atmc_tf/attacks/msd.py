"""Multi steepest descent (MSD; Maini, Wong and Kolter, "Adversarial Robustness Against the Union of
Multiple Perturbation Models", ICML 2020; their msd_v0 in locuslab/robust_union), as pure tensor code.

One attack against the union of the L_inf, L2 and L1 balls: at every step, from the gradient at the
current point, take the steepest-ascent step of each norm (sign step; normalised gradient; the sparse
top-k step of attacks/l1.py), project each onto ITS OWN ball (L1: the exact projection onto the ball
intersected with the box) and the box, and keep, per example, the candidate with the highest loss. The
result is the highest-loss iterate over all steps (the start, x itself, included), so every returned
point lies in the union of the balls and in the box. Like msd_v0 it starts at x (no random start).
"""
import dataclasses
import math

import tensorflow as tf

from atmc_tf.attacks import l1
from atmc_tf.attacks.pgd import _norm2, _xent


@dataclasses.dataclass(frozen=True)
class MSDConfig:
    """eps_inf / eps_2 / eps_1: each norm's radius (None: that norm is not in the union; at least one).
    step_inf / step_2 / step_1: the step sizes (None: 2.5 * eps / steps, as PGD). l1_sparsity: the L1
    step moves the top (1 - l1_sparsity) share of coordinates."""

    eps_inf: float | None = None
    eps_2: float | None = None
    eps_1: float | None = None
    steps: int = 10
    step_inf: float | None = None
    step_2: float | None = None
    step_1: float | None = None
    clip_min: float = 0.0
    clip_max: float = 1.0
    l1_sparsity: float = 0.99

    def __post_init__(self):
        if not self.radii:
            raise ValueError("MSD needs at least one of eps_inf, eps_2, eps_1")
        for norm, eps in self.radii.items():
            if not (math.isfinite(eps) and eps >= 0):
                raise ValueError(f"eps_{norm} must be a finite number >= 0, got {eps}")
            step = getattr(self, f"step_{norm}")
            if step is not None and not step > 0:
                raise ValueError(f"step_{norm} must be > 0, got {step}")
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.clip_min < self.clip_max:
            raise ValueError("clip_min must be < clip_max")
        if not 0 <= self.l1_sparsity < 1:
            raise ValueError(f"l1_sparsity must be in [0, 1), got {self.l1_sparsity}")

    @property
    def radii(self):
        """{norm: eps} of the norms in the union ("inf", "2", "1")."""
        return {n: float(e) for n, e in (("inf", self.eps_inf), ("2", self.eps_2), ("1", self.eps_1))
                if e is not None}

    @property
    def eps(self):
        """The largest radius (the registry's attacks have an eps; MSD's ball is a union)."""
        return max(self.radii.values())

    def step_size(self, norm):
        step = getattr(self, f"step_{norm}")
        return step if step is not None else 2.5 * self.radii[norm] / self.steps

    def attack(self, model_fn, x, y, seed=None):
        """x_adv for (x, y) (seed: unused, MSD is deterministic; kept for the attack interface)."""
        return msd(model_fn, x, y, self.radii, {n: self.step_size(n) for n in self.radii}, self.steps,
                   self.clip_min, self.clip_max, self.l1_sparsity)


def msd(model_fn, x, y, radii, step_sizes, steps=10, clip_min=0.0, clip_max=1.0, l1_sparsity=0.99, loss_fn=None):
    """MSD's examples: radii / step_sizes map norms ("inf", "2", "1") to eps / step size. Returns x_adv,
    gradient-stopped, in the union of the balls and in [clip_min, clip_max]."""
    loss_fn = loss_fn or _xent
    x = tf.convert_to_tensor(x)
    lo, hi = clip_min - x, clip_max - x
    shape = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], 0)

    def candidate(norm, delta, grad):
        eps, alpha = tf.cast(radii[norm], x.dtype), tf.cast(step_sizes[norm], x.dtype)
        if norm == "inf":
            return tf.clip_by_value(tf.clip_by_value(delta + alpha * tf.sign(grad), -eps, eps), lo, hi)
        if norm == "2":
            d = delta + alpha * grad / tf.maximum(_norm2(grad), 1e-12)
            d = d * tf.minimum(1.0, eps / tf.maximum(_norm2(d), 1e-12))
            return tf.clip_by_value(d, lo, hi)  # clipping towards 0 never leaves the L2 ball
        d = delta + alpha * l1.l1_step(grad, x + delta, clip_min, clip_max, l1_sparsity)
        return tf.clip_by_value(l1.project_l1_box(d, eps, lo, hi), lo, hi)

    def step(i, delta, best, best_loss):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            loss = tf.reduce_sum(loss_fn(y, model_fn(x + delta)))
        grad = tape.gradient(loss, delta)
        chosen, chosen_loss = None, None
        for norm in radii:
            d = candidate(norm, delta, grad)
            d_loss = loss_fn(y, model_fn(x + d))
            if chosen is None:
                chosen, chosen_loss = d, d_loss
            else:
                better = d_loss > chosen_loss
                chosen = tf.where(tf.reshape(better, shape), d, chosen)
                chosen_loss = tf.maximum(d_loss, chosen_loss)
        better = chosen_loss > best_loss
        best = tf.where(tf.reshape(better, shape), chosen, best)
        return i + 1, chosen, best, tf.maximum(chosen_loss, best_loss)

    zero = tf.zeros_like(x)
    _, _, best, _ = tf.while_loop(lambda i, *_: i < steps, step,
                                  (tf.constant(0), zero, zero, loss_fn(y, model_fn(x))))
    return tf.stop_gradient(tf.clip_by_value(x + best, clip_min, clip_max))
