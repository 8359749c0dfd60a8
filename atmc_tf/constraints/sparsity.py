"""Global L0 projection: one nonzero budget shared by every compressed tensor.

project_l0 is the exact Euclidean projection onto {W : sum_t nnz(W_t) <= k}:
keep the k largest magnitudes over the concatenation of all tensors, zero the
rest. There is no per-layer quota; layers compete for the one budget.

Magnitudes are compared as the integer bit patterns of |w| (monotone for
non-negative IEEE floats), which is exact: CPU kernels that flush denormals to
zero cannot merge a tiny weight with 0 or misplace the threshold. Of entries
tied at the threshold, the lowest flat positions (tensor order, then row-major)
are kept, so exactly min(k, total size) entries survive and every function here
selects the same set.
"""
import tensorflow as tf

_BITS = {tf.float16: tf.int16, tf.bfloat16: tf.int16, tf.float32: tf.int32, tf.float64: tf.int64}


def _magnitude_bits(tensors):
    """|w| of every tensor, flattened and concatenated, as order-preserving integers."""
    dtype = tensors[0].dtype
    if dtype not in _BITS or any(t.dtype != dtype for t in tensors):
        raise ValueError(f"L0 projection needs tensors of one float dtype, got {[t.dtype.name for t in tensors]}")
    itype = _BITS[dtype]
    sign_off = tf.constant(tf.dtypes.as_dtype(itype).max, itype)
    return tf.concat([tf.bitwise.bitwise_and(tf.bitcast(tf.reshape(t, [-1]), itype), sign_off)
                      for t in tensors], axis=0)


def _kth_largest(values, k):
    """k-th largest entry of 1-D `values` (1 <= k <= size). One top_k of min(k, size - k + 1)
    entries: when nearly all values are kept, select the few smallest instead."""
    rest = tf.size(values) - k + 1
    return tf.cond(k <= rest,
                   lambda: tf.reduce_min(tf.math.top_k(values, k=k, sorted=False).values),
                   lambda: -tf.reduce_min(tf.math.top_k(-values, k=rest, sorted=False).values))


def _keep_at(tensors, bits, kth, k):
    """Boolean masks keeping entries above the threshold `kth`, plus the first-positioned
    ties at it up to k entries in all."""
    above = bits > kth
    tied = tf.equal(bits, kth)
    room = k - tf.reduce_sum(tf.cast(above, tf.int32))
    keep = tf.cond(tf.reduce_sum(tf.cast(tied, tf.int32)) <= room,
                   lambda: above | tied,
                   lambda: above | (tied & (tf.cumsum(tf.cast(tied, tf.int32)) <= room)))
    masks, offset = [], 0
    for t in tensors:
        size = tf.size(t)
        masks.append(tf.reshape(keep[offset:offset + size], tf.shape(t)))
        offset += size
    return masks


def _select(tensors, bits, k, kth):
    """Boolean keep-masks and the k-th largest bit pattern (`kth`: a callable of k, run only
    when k > 0; the pattern of 0.0 when k = 0)."""
    k = tf.minimum(tf.cast(k, tf.int32), tf.size(bits))

    def some():
        kth_bits = kth(k)
        return _keep_at(tensors, bits, kth_bits, k), kth_bits

    def none():
        return [tf.zeros(tf.shape(t), tf.bool) for t in tensors], tf.zeros([], bits.dtype)

    return tf.cond(k > 0, some, none)


def _top_k_keep(tensors, k):
    bits = _magnitude_bits(tensors)
    return _select(tensors, bits, k, lambda k: _kth_largest(bits, k))[0]


def _masked(tensors, keep):
    # A select, not a product: w * 1.0 would flush a denormal w to 0 on CPU.
    return [tf.where(m, t, tf.zeros([], t.dtype)) for t, m in zip(tensors, keep)]


def topk_masks(tensors, k):
    """0/1 masks (same dtypes/shapes as `tensors`) keeping the global top-k |w|.

    Exactly min(k, total size) entries are kept (ties at the threshold go to the
    lowest positions). Cost: one top_k of min(k, N - k + 1) over the N
    magnitudes, then O(N) comparisons; no N x k intermediates.
    """
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    return [tf.cast(m, t.dtype) for t, m in zip(tensors, _top_k_keep(tensors, k))]


def project_l0(tensors, k):
    """Nearest point (Euclidean) with at most k nonzeros in total."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    return _masked(tensors, _top_k_keep(tensors, k))


def project_l0_hinted(tensors, k, threshold_hint, margin=0.5):
    """project_l0 with a warm start; returns (projected tensors, k-th largest |w|).

    Between two training steps the support barely moves, so the previous step's
    k-th magnitude `threshold_hint` bounds the new one from below up to a small
    drift. Only the entries with |w| >= (1 - margin) * hint are candidates; when
    there are at least k of them, every global top-k entry is among them (all
    others are smaller than every candidate), so the k-th largest candidate is
    the global threshold. Otherwise (first step, large drift) it falls back to
    the full array. For every hint the result equals project_l0's, bit for bit;
    only the cost changes: O(N) plus a top_k of min(k, M - k + 1) over the M
    candidates, which is small when the support is stable (M close to k).
    """
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    bits = _magnitude_bits(tensors)
    low = tf.cast(threshold_hint, tensors[0].dtype) * (1.0 - margin)
    # No usable hint (0 before the first step, negative, NaN: low > 0 is false) or too few
    # candidates (an inf hint has none): the full array.
    usable = low > 0
    cand = tf.boolean_mask(bits, bits >= _magnitude_bits([tf.reshape(low, [1])])[0])

    def kth(k):
        return tf.cond(usable & (tf.size(cand) >= k), lambda: _kth_largest(cand, k), lambda: _kth_largest(bits, k))

    masks, kth_bits = _select(tensors, bits, k, kth)
    return _masked(tensors, masks), tf.bitcast(kth_bits, tensors[0].dtype)


SCORINGS = ("magnitude", "lamp")


def check_scoring(scoring):
    """`scoring` if it is one of SCORINGS, else ValueError."""
    if scoring not in SCORINGS:
        raise ValueError(f"l0 scoring must be one of {SCORINGS}, got {scoring!r}")
    return scoring


def lamp_scores(tensor):
    """Layer-adaptive magnitude scores (LAMP, Lee et al., ICLR 2021) of one tensor's entries:
    w_u^2 / sum of w_v^2 over the entries v of the same tensor with |w_v| >= |w_u| (ties: by
    position). In [0, 1]; the largest entry of every nonzero tensor scores exactly 1, so a global
    top-k over these scores keeps at least one entry per tensor when k >= the number of tensors,
    and tensors of very different sizes or scales compete on comparable terms. Computed in float64
    (returned as float64): the square of a tiny float32 weight would underflow to 0 in float32."""
    t = tf.convert_to_tensor(tensor)
    return tf.reshape(lamp_of_energies(tf.reshape(tf.square(tf.cast(t, tf.float64)), [-1])), tf.shape(t))


def lamp_of_energies(energies):
    """LAMP scores of items given their non-negative energies (1-D float64; w^2 for entries,
    squared group norms for groups): e_u / sum of e_v over the items v with e_v >= e_u (ties: by
    position). The item ranked last (largest, last-positioned on ties) of a nonzero vector scores
    exactly 1 and every other item at most 1/2."""
    order = tf.argsort(energies, stable=True)
    ascending = tf.gather(energies, order)
    score = tf.math.divide_no_nan(ascending, tf.cumsum(ascending, reverse=True))
    return tf.scatter_nd(order[:, None], score, tf.shape(energies))


def l0_masks(tensors, k, scoring="magnitude"):
    """0/1 masks (dtypes and shapes of `tensors`) of the min(k, size) entries with the largest
    scores: |w| ("magnitude": topk_masks) or lamp_scores ("lamp")."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    check_scoring(scoring)
    ranked = tensors if scoring == "magnitude" else [lamp_scores(t) for t in tensors]
    return [tf.cast(m, t.dtype) for t, m in zip(tensors, _top_k_keep(ranked, k))]


def select_l0(tensors, k, scoring="magnitude"):
    """At most k nonzeros in total, kept where the scores are largest; the kept entries keep their
    values. scoring="magnitude" is project_l0 (the Euclidean projection, the paper's choice);
    "lamp" ranks by lamp_scores, so no tensor is emptied while the budget covers one entry each."""
    if scoring == "magnitude":
        return project_l0(tensors, k)
    return apply_masks(tensors, l0_masks(tensors, k, scoring))


def apply_masks(tensors, masks):
    """Projection onto a fixed support (AP / NAP fine-tuning)."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    return _masked(tensors, [tf.not_equal(tf.cast(m, t.dtype), 0) for t, m in zip(tensors, masks)])


def count_nonzero(tensors):
    """Total number of nonzero entries, as int64."""
    return tf.add_n([tf.math.count_nonzero(t, dtype=tf.int64) for t in tensors])
