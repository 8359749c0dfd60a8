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
    keep = tf.scatter_nd(idx[:, None], tf.ones_like(idx, dtype=tf.bool), [n])
    masks, offset = [], 0
    for t in tensors:
        size = tf.size(t)
        part = tf.reshape(keep[offset:offset + size], tf.shape(t))
        masks.append(tf.cast(part, t.dtype))
        offset += size
    return masks


def project_l0(tensors, k):
    """Nearest point (Euclidean) with at most k nonzeros in total."""
    masks = topk_masks(tensors, k)
    return [tf.convert_to_tensor(t) * m for t, m in zip(tensors, masks)]


def apply_masks(tensors, masks):
    """Projection onto a fixed support (AP / NAP fine-tuning)."""
    return [tf.convert_to_tensor(t) * tf.cast(m, t.dtype) for t, m in zip(tensors, masks)]


def count_nonzero(tensors):
    """Total number of nonzero entries, as int64."""
    return tf.add_n([tf.math.count_nonzero(t, dtype=tf.int64) for t in tensors])
