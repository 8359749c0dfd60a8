"""Global L0 projection: one nonzero budget shared by every compressed tensor.

project_l0 is the exact Euclidean projection onto {W : sum_t nnz(W_t) <= k}:
keep the k largest magnitudes over the concatenation of all tensors, zero the
rest. There is no per-layer quota; layers compete for the one budget.
"""
import tensorflow as tf


def _flat_abs(tensors):
    return tf.concat([tf.reshape(tf.abs(t), [-1]) for t in tensors], axis=0)


def topk_masks(tensors, k):
    """0/1 masks (same dtypes/shapes as `tensors`) keeping the global top-k |w|.

    Exactly min(k, total size) entries are kept (ties are broken by position,
    so the count never exceeds k). Cost: one top_k over the concatenated
    magnitudes, O(N log k); no N x N or N x K intermediates.
    """
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    flat = _flat_abs(tensors)
    n = tf.size(flat)
    k = tf.minimum(tf.cast(k, tf.int32), n)
    _, idx = tf.math.top_k(flat, k=k, sorted=False)
    return _masks_from_indices(tensors, idx, n)


def project_l0(tensors, k):
    """Nearest point (Euclidean) with at most k nonzeros in total."""
    masks = topk_masks(tensors, k)
    return [tf.convert_to_tensor(t) * m for t, m in zip(tensors, masks)]


def _masks_from_indices(tensors, idx, n):
    keep = tf.scatter_nd(idx[:, None], tf.ones_like(idx, dtype=tf.bool), [n])
    masks, offset = [], 0
    for t in tensors:
        size = tf.size(t)
        masks.append(tf.cast(tf.reshape(keep[offset:offset + size], tf.shape(t)), t.dtype))
        offset += size
    return masks


def project_l0_hinted(tensors, k, threshold_hint, margin=0.5):
    """project_l0 with a warm start; returns (projected tensors, k-th largest |w|).

    Between two training steps the support barely moves, so the previous step's
    k-th magnitude `threshold_hint` bounds the new one from below up to a small
    drift. Only the entries with |w| >= (1 - margin) * hint are candidates; when
    there are at least k of them, every global top-k entry is among them (all
    others are smaller than every candidate), so a top_k over the candidates is
    an exact global top_k. Otherwise (first step, large drift) it falls back to
    the full top_k. For every hint the result is the Euclidean projection, equal
    to project_l0's (when magnitudes tie at the threshold, either may keep a
    different one of the tied entries); only the cost changes, from O(N log k)
    to O(N) + O(M log k) for M candidates.
    """
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    flat = _flat_abs(tensors)
    n = tf.size(flat)
    k = tf.minimum(tf.cast(k, tf.int32), n)
    low = tf.cast(threshold_hint, flat.dtype) * (1.0 - margin)
    cand = tf.cast(tf.reshape(tf.where(flat >= low), [-1]), tf.int32)

    def from_candidates():
        vals, local = tf.math.top_k(tf.gather(flat, cand), k=k, sorted=False)
        return vals, tf.gather(cand, local)

    def full():
        vals, idx = tf.math.top_k(flat, k=k, sorted=False)
        return vals, idx

    # No usable hint (0 before the first step, negative, NaN: low > 0 is false) or too few
    # candidates (an inf hint has none): the full top_k.
    vals, idx = tf.cond((low > 0) & (tf.size(cand) >= k), from_candidates, full)
    kth = tf.cond(k > 0, lambda: tf.reduce_min(vals), lambda: tf.zeros([], flat.dtype))
    masks = _masks_from_indices(tensors, idx, n)
    return [t * m for t, m in zip(tensors, masks)], kth


def apply_masks(tensors, masks):
    """Projection onto a fixed support (AP / NAP fine-tuning)."""
    return [tf.convert_to_tensor(t) * tf.cast(m, t.dtype) for t, m in zip(tensors, masks)]


def count_nonzero(tensors):
    """Total number of nonzero entries, as int64."""
    return tf.add_n([tf.math.count_nonzero(t, dtype=tf.int64) for t in tensors])
