"""Structured (group) sparsity: one budget of whole output channels over all compressed tensors.

A group is one output channel of a tensor: the slice at one index of its `channel_axes`
(TensorInfo.channel_axes), e.g. a Dense kernel's column, a Conv2D kernel's (kh, kw, in) filter,
a DepthwiseConv2D kernel's (kh, kw) filter for one of its in x multiplier outputs. Groups are
numbered row-major over the channel axes, which for a depthwise kernel (axes 2, 3) is the layer's
output order, c * multiplier + m. A zero group is a channel that surgery can remove: unlike
unstructured zeros, it shrinks the dense model itself.

select_groups keeps the groups that come first in one global order, as long as their costs fit
the budget. With unit costs (a budget of k groups) that is exactly the k best groups, and with
scoring "l2" (squared group norm) it is the Euclidean projection onto {at most k nonzero groups
over all tensors}: the distance is the energy of the dropped groups, least when the dropped are
the weakest. With other costs (parameters, MACs) choosing the best set is a knapsack problem; we
take the greedy answer, by score per unit cost, stopping at the first group that does not fit.
Where removing a channel also frees weights of the layer reading it, the cost of a set of kept
channels is not a sum of per-group costs: a weight joining channel i of one layer to channel o of
the next stays only while both are kept. `exact` then gives that cost in full, per-group linear
costs plus bilinear terms w * k_a * k_b over the kept counts of tensors a and b
(atmc_tf.training.structure.channel_cost_model), and the kept prefix is the longest one whose exact
cost fits; the order is still by score over `costs` (a group's share of what it frees).

Scores are computed in float64 (the square of a small float32 weight underflows in float32).
TensorFlow's CPU kernels flush float32 subnormals to zero, also in that cast, so a group of
subnormal weights scores 0; it still ranks before the all-zero groups (nonzero-ness is read from
the bit patterns), which keeps the selection idempotent.
"""
import tensorflow as tf

from atmc_tf.constraints.quantize import _channel_reduce_axes
from atmc_tf.constraints.sparsity import _magnitude_bits, _masked, lamp_of_energies

GROUP_SCORINGS = ("l2", "lamp")


def check_group_scoring(scoring):
    """`scoring` if it is one of GROUP_SCORINGS, else ValueError."""
    if scoring not in GROUP_SCORINGS:
        raise ValueError(f"group scoring must be one of {GROUP_SCORINGS}, got {scoring!r}")
    return scoring


def group_shape(shape, channel_axes):
    """The shape of a tensor's per-group values kept broadcastable to it: 1 on the reduced axes."""
    reduced = _channel_reduce_axes(len(shape), channel_axes)
    return tuple(1 if a in reduced else int(d) for a, d in enumerate(shape))


def num_groups(shape, channel_axes):
    """How many groups (output channels) a tensor of `shape` has."""
    n = 1
    for d in group_shape(shape, channel_axes):
        n *= d
    return n


def group_size(shape, channel_axes):
    """Weights per group: the tensor's size over its number of groups."""
    size = 1
    for d in shape:
        size *= int(d)
    return size // num_groups(shape, channel_axes)


def group_energies(tensor, channel_axes):
    """Squared L2 norm of every group, 1-D float64 in group order."""
    t = tf.convert_to_tensor(tensor)
    axes = _channel_reduce_axes(t.shape.rank, channel_axes)
    return tf.reshape(tf.reduce_sum(tf.square(tf.cast(t, tf.float64)), axis=axes), [-1])


def group_nonzero(tensor, channel_axes):
    """Whether each group holds a nonzero weight, read from the bit patterns (exact for subnormals,
    which CPU kernels compare as 0), 1-D bool in group order."""
    t = tf.convert_to_tensor(tensor)
    bits = tf.reshape(_magnitude_bits([t]), tf.shape(t))
    return tf.reshape(tf.reduce_any(bits != 0, axis=_channel_reduce_axes(t.shape.rank, channel_axes)), [-1])


def group_scores(tensors, channel_axes, scoring="l2"):
    """Per-tensor 1-D float64 group scores. "l2": the squared group norm (the Euclidean choice).
    "lamp": LAMP (sparsity.lamp_of_energies) over the groups of each tensor: scale-free in each
    tensor, so layers of different sizes and scales compete on comparable terms, and the strongest
    group of every nonzero tensor scores exactly 1, every other at most 1/2."""
    check_group_scoring(scoring)
    energies = [group_energies(t, a) for t, a in zip(tensors, channel_axes)]
    return energies if scoring == "l2" else [lamp_of_energies(e) for e in energies]


def select_groups(scores, budget, costs=None, protect=None, nonzero=None, leaders=None, exact=None):
    """Boolean keep-vectors (one per tensor, in group order) of the groups that fit `budget`.

    All groups are put in one order: protected first (`protect`: per-tensor bool vectors), then by
    score / cost descending, then nonzero before zero (`nonzero`: per-tensor bool vectors, for the
    groups that score 0 but are not zero), then by position (tensor order, then group order). The
    longest prefix whose total cost is at most `budget` is kept. costs=None: unit costs, so exactly
    min(budget, groups) groups are kept, the best ones: this is exact. Other costs must be > 0; the
    selection is then the greedy one, not an optimal knapsack.
    leaders: None, or one int per group over all tensors (global group index): groups with the same
    leader are kept or dropped together, as one group whose score and cost are the sums of theirs
    (protected / nonzero if any of them is); a leader is its own leader. E.g. a depthwise channel
    and the channel it reads, which surgery removes together.
    exact: None, or (linear, pairs): per-tensor 1-D per-group costs >= 0 and [(tensor a, tensor b, w)]:
    a prefix then costs sum(linear of its groups) + sum(w * k_a * k_b), k_t its groups of tensor t,
    and that cost is held to `budget` instead of the sum of `costs` (which still orders the groups).
    """
    sizes = [int(s.shape[0]) for s in scores]
    score = tf.concat([tf.cast(s, tf.float64) for s in scores], axis=0)
    cost = tf.ones_like(score) if costs is None else tf.concat([tf.cast(c, tf.float64) for c in costs], 0)
    flags = [tf.cast(tf.concat(f, axis=0), tf.float64) if f is not None else None for f in (nonzero, protect)]
    if leaders is not None:
        leaders = tf.constant(leaders, tf.int32)
        n = tf.size(score)
        score = tf.math.unsorted_segment_sum(score, leaders, n)
        cost = tf.math.unsorted_segment_sum(cost, leaders, n)  # 0 for a group that follows another
        flags = [None if f is None else tf.math.unsorted_segment_max(f, leaders, n) for f in flags]
    ratio = tf.math.divide_no_nan(score, cost)
    # Lexicographic order by stable argsorts, from the least significant key to the most.
    order = tf.range(tf.size(score))
    keys = [ratio]
    if flags[0] is not None:
        keys.insert(0, flags[0])
    if flags[1] is not None:
        keys.append(flags[1])
    for key in keys:
        order = tf.gather(order, tf.argsort(-tf.gather(key, order), stable=True))
    if exact is None:
        spent = tf.cumsum(tf.gather(cost, order))
    else:
        spent = _exact_prefix_costs(order, sizes, exact, leaders)
    fits = spent <= tf.cast(budget, tf.float64)
    keep = tf.gather(fits, tf.math.invert_permutation(order))
    if leaders is not None:
        keep = tf.gather(keep, leaders)
    return tf.split(keep, sizes)


def _exact_prefix_costs(order, sizes, exact, leaders):
    """The exact cost (select_groups' `exact`) of every prefix of `order` (global group indices, with
    `leaders` folded in): the kept count of each tensor along the order, then linear + bilinear terms."""
    linear, pairs = exact
    lin = tf.concat([tf.cast(c, tf.float64) for c in linear], axis=0)
    tensor_of = tf.constant([t for t, n in enumerate(sizes) for _ in range(n)], tf.int32)
    share = tf.one_hot(tensor_of, len(sizes), dtype=tf.float64)  # group -> its tensor
    if leaders is not None:
        n = sum(sizes)
        lin = tf.math.unsorted_segment_sum(lin, leaders, n)
        share = tf.math.unsorted_segment_sum(share, leaders, n)  # a leader counts its followers' groups
    counts = tf.cumsum(tf.gather(share, order), axis=0)
    spent = tf.cumsum(tf.gather(lin, order))
    for a, b, w in pairs:
        spent += float(w) * counts[:, a] * counts[:, b]
    return spent


def group_masks(tensors, channel_axes, budget, scoring="l2", costs=None, leaders=None, exact=None):
    """Boolean keep-masks (shapes of `tensors`) of the groups select_groups keeps by `scoring`.
    With "lamp" every tensor's strongest group is protected, so no nonzero tensor is emptied as
    long as the budget covers those groups (k >= number of tensors, for a count budget)."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    scores = group_scores(tensors, channel_axes, scoring)
    protect = [tf.equal(s, 1.0) for s in scores] if scoring == "lamp" else None
    nonzero = [group_nonzero(t, a) for t, a in zip(tensors, channel_axes)]
    keep = select_groups(scores, budget, costs, protect, nonzero, leaders, exact)
    return [tf.broadcast_to(tf.reshape(k, group_shape(t.shape, a)), tf.shape(t))
            for t, a, k in zip(tensors, channel_axes, keep)]


def select_group_l0(tensors, channel_axes, budget, scoring="l2", costs=None, leaders=None, exact=None):
    """At most `budget` nonzero groups in all (unit costs), or groups of total cost at most
    `budget` (costs: per-tensor 1-D per-group costs > 0); kept groups keep their values, the others
    are zeroed. scoring="l2" with unit costs is the Euclidean projection; see group_masks."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    return _masked(tensors, group_masks(tensors, channel_axes, budget, scoring, costs, leaders, exact))


def count_nonzero_groups(tensors, channel_axes):
    """Groups with a nonzero weight over all tensors, as int64."""
    return tf.add_n([tf.math.count_nonzero(group_nonzero(t, a), dtype=tf.int64)
                     for t, a in zip(tensors, channel_axes)])
