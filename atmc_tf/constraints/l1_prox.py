"""GAN Slimming's channel sparsity: an L1 penalty on normalisation scales, applied as a proximal step.

GS (Wang, Gui et al., ECCV 2020, VITA-Group/GAN-Slimming gs.py) prunes a generator's channels by
minimising rho * sum |gamma_c| over the BatchNorm scales with a proximal-gradient step: after each
optimizer step, gamma <- soft_threshold(gamma, lr * rho). A channel whose gamma reaches exactly 0
outputs its BN's beta whatever its input; BNChannelL1Prox also zeroes that beta, so the channel
outputs exactly 0 and surgery can cut it (without it the channel is a constant that a 'same'-padded
3x3 consumer cannot fold). An optional global channel budget (at most `budget` nonzero gammas over
all tensors, ties to the lower index) turns the penalty into a hard count after the prox: L1 alone
gives no control of the final size, which the pipeline's --channel_budget needs.

Pure tensor math; the pairing of tensors is [gamma_1, beta_1, gamma_2, beta_2, ...].
"""
import tensorflow as tf

from atmc_tf.constraints.base import Constraint


def soft_threshold(v, t):
    """prox of t * ||x||_1 at v: argmin_x 0.5 ||x - v||^2 + t ||x||_1 = sign(v) * max(|v| - t, 0).
    Exact zeros where |v| <= t; t >= 0."""
    v = tf.convert_to_tensor(v)
    t = tf.cast(t, v.dtype)
    return tf.sign(v) * tf.maximum(tf.abs(v) - t, tf.zeros_like(v))


def budget_masks(scales, budget):
    """Masks keeping `budget` channels over all 1-D tensors of `scales` together, ranked by |scale|
    divided by the largest |scale| of its own tensor (ties to the lower flat index, tf.math.top_k's
    rule); zeros never count as kept. Raw |gamma| ranked globally emptied whole layers (a 4x budget
    on the digits generator cut every channel of its first convolution); normalised, every tensor
    keeps its largest channel when budget >= the number of tensors, and layers whose gammas sit at
    different scales compete fairly (LAMP's idea, atmc_tf.constraints.sparsity, for channels); the
first largest of each tensor is ranked above all others, so ties cannot empty a tensor either."""
    sizes = [int(s.shape[0]) for s in scales]
    scores = []
    for s in scales:
        a = tf.abs(tf.reshape(s, [-1]))
        # each tensor's (first) largest channel scores 2, above every other normalised score (<= 1)
        top = tf.one_hot(tf.argmax(a), tf.size(a), dtype=a.dtype) * tf.cast(tf.reduce_max(a) > 0, a.dtype)
        scores.append(tf.math.divide_no_nan(a, tf.reduce_max(a)) + top)
    flat = tf.concat(scores, axis=0)
    k = tf.minimum(tf.cast(budget, tf.int32), sum(sizes))  # a tensor is fine: a schedule can ramp it
    _, idx = tf.math.top_k(flat, k=k, sorted=False)
    keep = tf.scatter_nd(tf.expand_dims(idx, 1), tf.ones([k], tf.int32), [sum(sizes)]) > 0
    keep = tf.logical_and(keep, flat > 0)
    return [tf.cast(m, s.dtype) for m, s in zip(tf.split(keep, sizes), scales)]


class BNChannelL1Prox(Constraint):
    """Soft-threshold every gamma by `threshold` (= learning rate * rho) after each step, keep at
    most `budget` nonzero gammas globally (None: no count), and zero the beta of every zero gamma."""

    kind = "l1_prox"
    sparsifying = True
    metric_names = ("live_channels",)

    def __init__(self, threshold, budget=None):
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if budget is not None and not int(budget) >= 1:
            raise ValueError(f"budget must be None or >= 1, got {budget}")
        self.threshold = float(threshold)
        self.budget = None if budget is None else int(budget)

    def get_config(self):
        return {"threshold": self.threshold, "budget": self.budget}

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        if len(self.tensors) % 2:
            raise ValueError("BNChannelL1Prox takes [gamma, beta] pairs: got an odd number of tensors")

    def _apply(self, values, threshold, budget):
        gammas = [soft_threshold(g, threshold) for g in values[0::2]]
        if budget is not None:
            gammas = [g * m for g, m in zip(gammas, budget_masks(gammas, budget))]
        betas = [tf.where(tf.equal(g, 0), tf.zeros_like(b), b) for g, b in zip(gammas, values[1::2])]
        return [t for pair in zip(gammas, betas) for t in pair]

    def project(self, values, step, assign, budget=None):
        """`budget` overrides self.budget for this step (a schedule ramping it down)."""
        return self._apply(values, self.threshold, self.budget if budget is None else budget)

    def finalize(self, values, assign):
        return self._apply(values, 0.0, self.budget)

    def metrics(self, values):
        return {"live_channels": tf.add_n([tf.math.count_nonzero(g, dtype=tf.int32) for g in values[0::2]])}
