"""GAN Slimming's channel sparsity: an L1 penalty on normalisation scales, applied as a proximal step.

GS (Wang, Gui et al., ECCV 2020, VITA-Group/GAN-Slimming gs.py) prunes a generator's channels by
minimising rho * sum |gamma_c| over the BatchNorm scales with a proximal-gradient step: after each
optimizer step, gamma <- soft_threshold(gamma, lr * rho). A channel whose gamma reaches exactly 0
outputs its BN's beta whatever its input; BNChannelL1Prox also zeroes that beta, so the channel
outputs exactly 0 and surgery can cut it (without it the channel is a constant that a 'same'-padded
3x3 consumer cannot fold). An optional global channel budget (at most `budget` nonzero gammas over
all tensors, ties to the lower index) turns the penalty into a hard count after the prox: L1 alone
gives no control of the final size, which the pipeline's --channel_budget needs. With a MAC model
(mac_masks; atmc_tf.gan.channel_mac_model builds one for a generator) the budget is the student's
MACs instead, which --mac_budget needs: at one channel count, which channels survive decides the
MACs (a channel at 28x28 costs 4x one at 14x14).

Grouped channels: a BatchNorm of every unit of a Dense that a Reshape then turns into C channels
(a generator's "project" head: unit j = p*C + c is channel c at position p) has P*C gammas, and a
channel is the group of its P gammas. Its scale is their root mean square, the prox of
t * sqrt(P) * ||gamma_group||_2 (group lasso) shrinks the group as a whole, gamma_group *
max(0, 1 - t / rms), so the channel's scale becomes max(rms - t, 0): with P = 1 it is the L1 soft
threshold. Budgets count and rank channels (groups) by that scale.

Pure tensor math; the pairing of tensors is [gamma_1, beta_1, gamma_2, beta_2, ...].
"""
import numpy as np
import tensorflow as tf

from atmc_tf.constraints.base import Constraint


def soft_threshold(v, t):
    """prox of t * ||x||_1 at v: argmin_x 0.5 ||x - v||^2 + t ||x||_1 = sign(v) * max(|v| - t, 0).
    Exact zeros where |v| <= t; t >= 0."""
    v = tf.convert_to_tensor(v)
    t = tf.cast(t, v.dtype)
    return tf.sign(v) * tf.maximum(tf.abs(v) - t, tf.zeros_like(v))


def budget_masks(scales, budget, floor=1):
    """Masks keeping `budget` channels over all 1-D tensors of `scales` together, ranked by |scale|
    divided by the largest |scale| of its own tensor (ties to the lower flat index, tf.math.top_k's
    rule); zeros never count as kept. The `floor` largest (nonzero) channels of every tensor rank
    above all others: with a budget of at least floor * tensors no layer keeps fewer than
    min(floor, its nonzero channels). Raw |gamma| ranked globally emptied whole layers (a 4x budget
    on the digits generator cut every channel of its first convolution); normalised, every tensor
    keeps its largest channel when budget >= the number of tensors, and layers whose gammas sit at
    different scales compete fairly (LAMP's idea, atmc_tf.constraints.sparsity, for channels); the
first largest of each tensor is ranked above all others, so ties cannot empty a tensor either."""
    sizes = [int(s.shape[0]) for s in scales]
    scores = _scores(scales, floor)
    flat = tf.concat(scores, axis=0)
    k = tf.minimum(tf.cast(budget, tf.int32), sum(sizes))  # a tensor is fine: a schedule can ramp it
    _, idx = tf.math.top_k(flat, k=k, sorted=False)
    keep = tf.scatter_nd(tf.expand_dims(idx, 1), tf.ones([k], tf.int32), [sum(sizes)]) > 0
    keep = tf.logical_and(keep, flat > 0)
    return [tf.cast(m, s.dtype) for m, s in zip(tf.split(keep, sizes), scales)]


def _scores(scales, floor=1):
    """budget_masks' ranking scores: |scale| over its tensor's largest; each tensor's `floor` largest
    nonzero ones (ties to the lower index) + 2, so they rank above every other channel."""
    if not int(floor) >= 1:
        raise ValueError(f"floor must be >= 1, got {floor}")
    scores = []
    for s in scales:
        a = tf.abs(tf.reshape(s, [-1]))
        _, idx = tf.math.top_k(a, k=min(int(floor), int(a.shape[0])))
        top = tf.reduce_sum(tf.one_hot(idx, tf.size(a), dtype=a.dtype), axis=0) * tf.cast(a > 0, a.dtype)
        scores.append(tf.math.divide_no_nan(a, tf.reduce_max(a)) + 2 * top)
    return scores


def group_scales(gamma, group):
    """The C channel scales of a gamma tensor of group * C entries (entry p*C + c is channel c): the root
    mean square of each channel's `group` gammas; |gamma| itself when group == 1."""
    g = tf.reshape(gamma, [group, -1])
    return tf.abs(g[0]) if group == 1 else tf.sqrt(tf.reduce_mean(tf.square(g), axis=0))


def expand_channels(per_channel, group):
    """A per-channel tensor (C) repeated over the group's positions: entry p*C + c is per_channel[c]."""
    return per_channel if group == 1 else tf.tile(per_channel, [group])


def group_soft_threshold(gamma, t, group):
    """The prox of t * sqrt(group) * sum over channels of ||gamma_channel||_2 at gamma: each channel's
    gammas scaled by max(0, 1 - t / rms) (exact zeros where rms <= t); soft_threshold when group == 1."""
    if group == 1:
        return soft_threshold(gamma, t)
    rms = group_scales(gamma, group)
    t = tf.cast(t, rms.dtype)
    factor = tf.math.divide_no_nan(tf.maximum(rms - t, tf.zeros_like(rms)), rms)
    return gamma * expand_channels(factor, group)


def mac_model_macs(mac_model, counts):
    """MACs of the model that (linear, pairs, constant) describes, cut to counts[i] channels in tensor i."""
    linear, pairs, constant = mac_model
    return constant + sum(v * k for v, k in zip(linear, counts)) + sum(w * counts[i] * counts[j] for i, j, w in pairs)


def mac_masks(scales, budget, linear, pairs, constant=0.0, floor=1):
    """Masks keeping the longest prefix of budget_masks' ranking (the same scores and ties) whose MACs
    are at most `budget`, the MACs of k_i kept channels in tensor i being
        constant + sum_i linear[i] * k_i + sum_(i, j, w) in pairs w * k_i * k_j
    (atmc_tf.training.structure.channel_mac_model: exact for a cut model). MACs grow along the
    prefix, so the longest one that fits is found in one pass. Zeros never count as kept (they rank
    last). budget_masks(scales, k, floor) keeps the prefix of length k: both are one rule, two budgets.
    The ranking is not MAC-aware: a `floor` > 1 (each tensor's floor largest first) keeps a cheap layer
    from being left with one channel while an expensive one takes the budget."""
    scores = _scores(scales, floor)
    sizes = [int(s.shape[0]) for s in scales]
    flat = tf.concat([tf.cast(s, tf.float64) for s in scores], axis=0)
    order = tf.argsort(-flat, stable=True)
    tensor_of = tf.constant(np.repeat(np.arange(len(sizes)), sizes), tf.int32)
    counts = tf.cumsum(tf.one_hot(tf.gather(tensor_of, order), len(sizes), dtype=tf.float64), axis=0)
    # Python numbers straight to float64: through tf.cast they would pass float32 first and lose digits
    as64 = lambda v: tf.cast(tf.convert_to_tensor(v, dtype_hint=tf.float64), tf.float64)  # noqa: E731
    macs = as64(constant) + tf.linalg.matvec(counts, tf.constant(linear, tf.float64))
    for i, j, w in pairs:
        macs += float(w) * counts[:, i] * counts[:, j]
    n = tf.reduce_sum(tf.cast(macs <= as64(budget), tf.int32))
    kept = tf.scatter_nd(tf.expand_dims(order, 1), tf.cast(tf.range(tf.size(flat)) < n, tf.int32), [sum(sizes)]) > 0
    kept = tf.logical_and(kept, flat > 0)
    return [tf.cast(m, s.dtype) for m, s in zip(tf.split(kept, sizes), scales)]


class BNChannelL1Prox(Constraint):
    """Soft-threshold every gamma by `threshold` (= learning rate * rho) after each step, keep at
    most `budget` nonzero gammas globally (None: no count), and zero the beta of every zero gamma.
    mac_model: None (the budget counts channels), or (linear, pairs, constant) over the gamma tensors
    as mac_masks takes them; the budget is then the MACs (a number > 0) of the kept channels.
    groups: None (every gamma is a channel), or per gamma tensor its group size P (this module's
    docstring: P*C gammas make C channels, thresholded, ranked and counted as groups).
    floor: each tensor's `floor` largest channels rank first (budget_masks / mac_masks): with a budget
    that holds them, no layer is cut below min(floor, its live channels)."""

    kind = "l1_prox"
    sparsifying = True
    metric_names = ("live_channels",)

    def __init__(self, threshold, budget=None, mac_model=None, groups=None, floor=1):
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if isinstance(floor, bool) or not (isinstance(floor, (int, np.integer)) and floor >= 1):
            raise ValueError(f"floor must be an integer >= 1, got {floor!r}")
        self.threshold = float(threshold)
        self.floor = int(floor)
        self.groups = None if groups is None else [int(g) for g in groups]
        if self.groups is not None and not all(g >= 1 for g in self.groups):
            raise ValueError(f"groups must be sizes >= 1, got {groups}")
        if mac_model is None:
            if budget is not None and not int(budget) >= 1:
                raise ValueError(f"budget must be None or >= 1, got {budget}")
            self.budget, self.mac_model = None if budget is None else int(budget), None
        else:
            if budget is None or not float(budget) > 0:
                raise ValueError(f"a MAC budget must be a number > 0, got {budget}")
            linear, pairs, constant = mac_model
            self.mac_model = ([float(v) for v in linear], [(int(i), int(j), float(w)) for i, j, w in pairs],
                              float(constant))
            if not all(v >= 0 for v in self.mac_model[0]) or not all(w >= 0 for _, _, w in self.mac_model[1]):
                raise ValueError("MAC model coefficients must be >= 0")
            self.budget = float(budget)

    def get_config(self):
        return {"threshold": self.threshold, "budget": self.budget, "groups": self.groups, "floor": self.floor,
                "mac_model": None if self.mac_model is None else [self.mac_model[0], [list(p) for p in self.mac_model[1]],
                                                                  self.mac_model[2]]}

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        if len(self.tensors) % 2:
            raise ValueError("BNChannelL1Prox takes [gamma, beta] pairs: got an odd number of tensors")
        n = len(self.tensors) // 2
        if self.groups is not None and (len(self.groups) != n or any(
                int(np.prod(t.shape)) % g for t, g in zip(self.tensors[0::2], self.groups))):
            raise ValueError(f"groups must give one size per gamma tensor dividing its length: {self.groups} for "
                             f"{[int(np.prod(t.shape)) for t in self.tensors[0::2]]}")
        if self.mac_model is not None and (len(self.mac_model[0]) != n or any(
                not (0 <= i < n and 0 <= j < n) for i, j, _ in self.mac_model[1])):
            raise ValueError(f"mac_model must describe the {n} gamma tensors: {len(self.mac_model[0])} linear terms, "
                             f"pairs {[(i, j) for i, j, _ in self.mac_model[1]]}")

    def full_budget(self):
        """The budget that keeps every channel: their count, or their MACs (a ramp's start)."""
        sizes = [int(np.prod(t.shape)) // g for t, g in zip(self.tensors[0::2], self._groups())]
        return sum(sizes) if self.mac_model is None else mac_model_macs(self.mac_model, sizes)

    def _groups(self):
        return self.groups or [1] * (len(self.tensors) // 2)

    def _apply(self, values, threshold, budget):
        groups = self._groups()
        gammas = [group_soft_threshold(g, threshold, p) for g, p in zip(values[0::2], groups)]
        if budget is not None:
            scales = [group_scales(g, p) for g, p in zip(gammas, groups)]
            masks = (budget_masks(scales, budget, self.floor) if self.mac_model is None else
                     mac_masks(scales, budget, *self.mac_model, floor=self.floor))
            gammas = [g * expand_channels(m, p) for g, m, p in zip(gammas, masks, groups)]
        # a channel whose gammas are all 0 outputs its betas: zero them (all of the group's, or none)
        dead = [expand_channels(tf.equal(group_scales(g, p), 0), p) for g, p in zip(gammas, groups)]
        betas = [tf.where(d, tf.zeros_like(b), b) for d, b in zip(dead, values[1::2])]
        return [t for pair in zip(gammas, betas) for t in pair]

    def project(self, values, step, assign, budget=None):
        """`budget` overrides self.budget for this step (a schedule ramping it down)."""
        return self._apply(values, self.threshold, self.budget if budget is None else budget)

    def finalize(self, values, assign):
        return self._apply(values, 0.0, self.budget)

    def metrics(self, values):
        return {"live_channels": tf.add_n([tf.math.count_nonzero(group_scales(g, p), dtype=tf.int32)
                                           for g, p in zip(values[0::2], self._groups())])}
