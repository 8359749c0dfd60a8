"""Quantization sets Q_b and their projections (pure tensor code).

Three schemes, all keep an exact 0 (pruned weights stay pruned). How many
nonzero values a codebook gets is `nonzero_levels(bits, zero_in_levels)`:
with zero_in_levels (the default) 0 is one of the 2^b values, so a tensor
holds at most 2^b distinct values and a b-bit index addresses every one of
them on the device (TFLite Micro's LUT); without it, the paper's count:
2^b nonzero values plus 0, i.e. 2^b + 1 values and (b+1)-bit indices.

- "codebook": per-tensor codebook of float values fitted by 1-D Lloyd
  (k-means) on the nonzero weights, plus the fixed centre 0 (the paper's
  Q_b, with zero_in_levels=False: at most 2^b distinct nonzero values).
- "codebook_int8": the same codebook idea placed on TFLite's int8 lattice.
  Weights are scale_c * q with q an integer in [-127, 127], one scale per
  output channel (scale_c = max|W_c| / 127, zero point 0: exactly the scale
  the TFLite converter computes). The codes q of a tensor take the allowed
  number of distinct nonzero values, shared by all channels. Two of them are
  anchored at -127 and +127: every channel's largest magnitude maps to +-127,
  so the converter recomputes the same scale and stores the trained codes
  bit for bit (no re-rounding at export). Below 8 bits the scale is chosen:
  alpha * max|W_c| / 127 (alpha in CLIP_GRID, 1 first) whose projection is
  nearest, alternated with the codebook fit; the channel's largest weight
  still maps to +-127, so the converter's max|Q_c| / 127 is that scale. The
  result is never farther from W than the max-anchored one (clip=False).
- "uniform_int8": symmetric uniform b-bit grid on the same lattice: codes
  round(j * 127 / L), j in [-L, L], L = 2^(b-1) - 1. For b = 8 this is exactly
  TFLite's own per-channel int8 quantization. Its 2^b - 1 levels include 0
  whatever zero_in_levels says. Below 8 bits each channel's scale is the
  nearest of CLIP_GRID's, as above.

Given its levels, every projection maps each entry to its nearest level
(ties to the lower level), so it is the Euclidean projection onto the set of
tensors using those levels; all three are idempotent.
"""
import numpy as np
import tensorflow as tf

from atmc_tf.choices import QUANT_SCHEMES, check_codebook, nonzero_levels  # noqa: F401  (re-exported)

INT8_MAX = 127.0
# Below 8 bits the lattice schemes choose each channel's scale: alpha * max|W_c| / 127 for the alpha here
# whose projection is nearest (1 first). Anchoring the end codes at max|W_c| (alpha = 1) wastes levels on a
# channel's few largest weights: at 2 bits (codes -127, 0, one free, +127) most weights of a bell-shaped
# channel fall under 127 / 2 and become 0.
CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(17))  # 1.0 .. 0.2
CLIP_ROUNDS = 2


def nearest_level(values, levels):
    """Map every entry of `values` to the nearest entry of sorted 1-D `levels`.

    O(N log L) with searchsorted on the midpoints: no N x L distance matrix,
    so it scales to tens of millions of weights.
    """
    values = tf.convert_to_tensor(values)
    levels = tf.cast(levels, values.dtype)
    flat = tf.reshape(values, [-1])
    mids = (levels[1:] + levels[:-1]) / 2.0
    idx = tf.searchsorted(mids, flat, side="left")
    return tf.reshape(tf.gather(levels, idx), tf.shape(values))


def _keep_zeros(w, q):
    """Exact zeros (pruned weights) stay zero even when a level sits within
    float/denormal noise of 0, where midpoint arithmetic alone could move them."""
    return tf.where(tf.equal(w, 0), tf.zeros_like(q), q)


def _distinct_sorted(sorted_values):
    first = tf.ones([tf.minimum(tf.size(sorted_values), 1)], tf.bool)
    keep = tf.concat([first, sorted_values[1:] != sorted_values[:-1]], axis=0)
    return tf.boolean_mask(sorted_values, keep)


def fit_codebook(values, num_centers, fixed=(0.0,), iters=20):
    """1-D Lloyd fit of `num_centers` free centres to the 1-D tensor `values`.

    `fixed` centres (0 by default) take part in the assignment but never move,
    so values near them are not allowed to drag free centres. Initialisation
    is by quantiles of the sorted values. If the values already take at most
    `num_centers` distinct values (besides the fixed ones) those values are
    returned exactly, which makes quantize(quantize(w)) == quantize(w).
    Returns the sorted free centres, shape [num_centers] (duplicates possible
    when there are fewer distinct values than centres).
    """
    values = tf.reshape(tf.convert_to_tensor(values), [-1])
    dtype = values.dtype
    fixed = tf.constant(list(fixed), dtype=dtype)
    num_centers = int(num_centers)
    if num_centers <= 0:
        return tf.zeros([0], dtype)
    not_fixed = tf.reduce_all(values[:, None] != fixed[None, :], axis=1)
    free_values = tf.boolean_mask(values, not_fixed)
    sorted_v = tf.sort(free_values)
    n = tf.size(sorted_v)
    distinct = _distinct_sorted(sorted_v)

    def empty():
        return tf.zeros([num_centers], dtype)

    def exact():
        pad = num_centers - tf.size(distinct)
        return tf.concat([distinct, tf.fill([pad], distinct[-1])], axis=0)

    def lloyd():
        # The values are sorted, so every cluster is a contiguous run: each
        # iteration needs only K binary searches and prefix sums, O(K log N),
        # after the single O(N log N) sort.
        csum = tf.concat([tf.zeros([1], tf.float64), tf.cumsum(tf.cast(sorted_v, tf.float64))], 0)
        pos = (tf.range(num_centers, dtype=tf.float32) + 0.5) / num_centers
        qidx = tf.cast(pos * tf.cast(n, tf.float32), tf.int32)
        free = tf.gather(sorted_v, tf.minimum(qidx, n - 1))
        for _ in range(iters):
            centres = tf.concat([free, fixed], axis=0)
            order = tf.argsort(centres)
            levels = tf.gather(centres, order)
            mids = (levels[1:] + levels[:-1]) / 2.0
            # Same tie rule as nearest_level: a value equal to a midpoint goes down.
            ends = tf.searchsorted(sorted_v, mids, side="right")
            bounds = tf.concat([[0], ends, [n]], axis=0)
            sums = tf.gather(csum, bounds[1:]) - tf.gather(csum, bounds[:-1])
            counts = tf.cast(bounds[1:] - bounds[:-1], tf.float64)
            means = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), tf.cast(levels, tf.float64))
            updated = tf.scatter_nd(order[:, None], tf.cast(means, dtype), tf.shape(centres))
            free = updated[:num_centers]
        return tf.sort(free)

    return tf.cond(
        n == 0, empty,
        lambda: tf.cond(tf.size(distinct) <= num_centers, exact, lloyd))


def quantize_codebook(w, bits, iters=20, zero_in_levels=True):
    """Per-tensor float codebook (Lloyd) plus exact 0. Returns (w_q, centres)."""
    w = tf.convert_to_tensor(w)
    nonzero = tf.boolean_mask(tf.reshape(w, [-1]), tf.reshape(w != 0, [-1]))
    centres = fit_codebook(nonzero, nonzero_levels(bits, zero_in_levels), fixed=(0.0,), iters=iters)
    levels = tf.sort(tf.concat([centres, tf.zeros([1], w.dtype)], axis=0))
    return _keep_zeros(w, nearest_level(w, levels)), centres


def _channel_reduce_axes(rank, channel_axes):
    if channel_axes is None:
        return list(range(rank))
    chan = {a % rank for a in channel_axes}
    return [a for a in range(rank) if a not in chan]


def channel_scales(w, channel_axes=(-1,)):
    """TFLite's symmetric int8 scale, max|W_c| / 127, broadcastable to w.

    channel_axes=None gives one scale per tensor. All-zero channels get
    scale 1 (their codes are all 0 whatever the scale).
    """
    w = tf.convert_to_tensor(w)
    axes = _channel_reduce_axes(w.shape.rank, channel_axes)
    return _scale_of_max(tf.reduce_max(tf.abs(w), axis=axes, keepdims=True))


def _scale_of_max(m):
    """m / 127 where that is a normal float, else 1. Always a quotient by 127: for such a scale s the
    converter's round trip (127 s) / 127 gives s back exactly (for a scale from a product, alpha * s,
    it fails about once in 130 in float32, and a re-projection moved weights by one ulp)."""
    # m / 127 must be a normal float: a denormal scale is flushed to 0 on CPU and
    # w / 0 is inf. Channels that small are numerically zero and get scale 1.
    return tf.where(m >= _tiny_max(m.dtype), m / INT8_MAX, tf.ones_like(m))


def _tiny_max(dtype):
    """The smallest channel maximum whose scale, max / 127, is a normal float."""
    return tf.constant(np.finfo(dtype.as_numpy_dtype).tiny * INT8_MAX, dtype)


def int8_codes(w, channel_axes=(-1,)):
    """The int8 codes TFLite stores for w: round(w / scale_c), as float."""
    return tf.round(tf.convert_to_tensor(w) / channel_scales(w, channel_axes))


def quantize_codebook_int8(w, bits, channel_axes=(-1,), iters=20, zero_in_levels=True, clip=True):
    """nonzero_levels(bits, zero_in_levels) shared integer codes per tensor, on the
    int8 per-channel lattice. Returns (w_q, codes_used) where w_q = scale_c * code.
    """
    check_codebook("codebook_int8", bits, zero_in_levels)
    w = tf.convert_to_tensor(w)
    scale = channel_scales(w, channel_axes)
    u = w / scale
    k = nonzero_levels(bits, zero_in_levels)
    if k >= 254:  # every nonzero int8 code fits in the budget: plain rounding.
        codes = tf.clip_by_value(tf.round(u), -INT8_MAX, INT8_MAX)
        return _keep_zeros(w, codes * scale), tf.range(-INT8_MAX, INT8_MAX + 1.0, dtype=w.dtype)
    levels = _fit_int8_levels(u, k, iters)
    if not clip:
        return _keep_zeros(w, nearest_level(u, levels) * scale), levels
    axes = _channel_reduce_axes(w.shape.rank, channel_axes)
    best = (_project(w, scale, levels), scale, levels)
    for _ in range(CLIP_ROUNDS):  # alternate: per-channel scales for these codes, then codes for those scales
        s = _clipped_scales(w, scale, best[2], axes)
        lv = _fit_int8_levels(tf.clip_by_value(w / s, -INT8_MAX, INT8_MAX), k, iters)
        q = _project(w, s, lv)
        better = tf.reduce_sum(tf.square(w - q)) < tf.reduce_sum(tf.square(w - best[0]))
        best = tuple(tf.where(better, new, old) for new, old in zip((q, s, lv), best))
    return best[0], best[2]


def _fit_int8_levels(u, k, iters):
    """The 2^b-value code book on int8 codes u: anchors -127, 0, +127 and k - 2 free codes (Lloyd, rounded)."""
    anchors = (-INT8_MAX, 0.0, INT8_MAX)
    flat = tf.reshape(u, [-1])
    nonzero = tf.boolean_mask(flat, flat != 0)
    # Values within float noise of an integer are snapped before the fit so
    # that an already-quantized tensor is recognised as such (idempotence).
    snapped = tf.where(tf.abs(nonzero - tf.round(nonzero)) < 1e-3, tf.round(nonzero), nonzero)
    free = tf.round(fit_codebook(snapped, k - 2, fixed=anchors, iters=iters))
    return tf.sort(tf.concat([tf.constant(anchors, u.dtype), free], axis=0))


def _project(w, scale, levels):
    """w on the lattice scale_c * levels (codes beyond +-127 go to the end levels), zeros kept."""
    return _keep_zeros(w, nearest_level(w / scale, levels) * scale)


def _clipped_scales(w, scale, levels, axes):
    """Per channel, the scale (alpha max|W_c|) / 127 (alpha in CLIP_GRID, 1 first: ties keep the max-anchored
    scale `scale`) whose projection onto the codes `levels` is nearest to w. alpha < 1 clips the channel's
    largest weights to code +-127; the largest one still lands there (|w| / s >= 127), so the converter's
    max|Q_c| / 127 is that scale and the codes stay exact."""
    m = tf.reduce_max(tf.abs(w), axis=axes, keepdims=True)
    best_err = best_scale = None
    for alpha in CLIP_GRID:  # a running minimum: one candidate's temporaries alive at a time
        # a channel too small for a normal clipped scale keeps `scale` (_scale_of_max's test, on m * alpha)
        s = scale if alpha == 1.0 else tf.where(m * alpha >= _tiny_max(m.dtype), (m * alpha) / INT8_MAX, scale)
        err = tf.reduce_sum(tf.square(w - _project(w, s, levels)), axis=axes, keepdims=True)
        if best_err is None:
            best_err, best_scale = err, s
        else:
            take = err < best_err
            best_err, best_scale = tf.where(take, err, best_err), tf.where(take, s, best_scale)
    return best_scale


def uniform_levels(bits, dtype=tf.float32):
    """The 2^b - 1 codes of the symmetric uniform b-bit grid on int8, sorted."""
    bits = int(bits)
    if bits < 2:
        raise ValueError(f"uniform quantization needs bits >= 2, got {bits}")
    half = 2 ** (bits - 1) - 1
    j = tf.range(-half, half + 1, dtype=tf.float32)
    return tf.cast(tf.round(j * INT8_MAX / half), dtype)


def quantize_uniform_int8(w, bits, channel_axes=(-1,), clip=True):
    """Symmetric uniform per-channel b-bit quantization on the int8 lattice (below 8 bits, each channel's
    scale clipped to the nearest projection, as in quantize_codebook_int8)."""
    w = tf.convert_to_tensor(w)
    scale = channel_scales(w, channel_axes)
    levels = uniform_levels(bits, w.dtype)
    if clip and int(bits) < 8:
        scale = _clipped_scales(w, scale, levels, _channel_reduce_axes(w.shape.rank, channel_axes))
    return _project(w, scale, levels), levels


def quantize(w, scheme, bits, channel_axes=(-1,), iters=20, zero_in_levels=True):
    """Project w onto Q_b for `scheme` (see module docstring). Returns w_q."""
    if scheme == "codebook":
        return quantize_codebook(w, bits, iters, zero_in_levels)[0]
    if scheme == "codebook_int8":
        return quantize_codebook_int8(w, bits, channel_axes, iters, zero_in_levels)[0]
    if scheme == "uniform_int8":
        return quantize_uniform_int8(w, bits, channel_axes)[0]
    raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {QUANT_SCHEMES}")


def num_levels(w, scheme, channel_axes=(-1,)):
    """Distinct nonzero values of w in the representation `scheme` constrains.

    Float values for "codebook"; int8 codes for the lattice schemes (those
    are what the .tflite stores). Returns an int32 scalar tensor.
    """
    w = tf.convert_to_tensor(w)
    vals = tf.reshape(w if scheme == "codebook" else int8_codes(w, channel_axes), [-1])
    vals = tf.boolean_mask(vals, vals != 0)
    return tf.size(tf.unique(vals)[0])
