"""The L1 threat model's pieces for PGD (pure tensor code): exact projections and the sparse step.

- project_l1_ball(v, eps): the Euclidean projection of each example onto {||d||_1 <= eps}
  (Duchi et al. 2008: sort the magnitudes, one soft threshold).
- project_l1_box(v, eps, lo, hi): the Euclidean projection onto {||d||_1 <= eps, lo <= d <= hi}
  with lo <= 0 <= hi (the pixel box around x: lo = clip_min - x, hi = clip_max - x). Given a
  threshold t the problem separates into d_i = clip(soft(v_i, t), lo_i, hi_i); the L1 norm of
  that falls as t grows, so t is found by bisection (exact to float precision after 60 halvings).
  Projecting onto the ball and then clipping is feasible too but is not this projection.
- l1_step(grad, x_adv, lo, hi, sparsity): the steepest-ascent step of sparse L1 attacks (SLIDE,
  Tramer & Boneh 2019; MSD's L1 step, Maini et al. 2020): the sign of the gradient on its
  largest-magnitude coordinates only (the top (1 - sparsity) fraction per example, leaving out
  coordinates the box stops from moving that way), scaled to unit L1 norm.
- random_l1(x, eps, seed): a uniform point of the L1 ball (exponential magnitudes with random
  signs on the unit sphere, radius eps * U^(1/n)).
"""
import tensorflow as tf

BISECTION_STEPS = 60


def _flat(t):
    return tf.reshape(t, [tf.shape(t)[0], -1])


def _l1(t):
    return tf.reduce_sum(tf.abs(_flat(t)), axis=1)


def project_l1_ball(v, eps):
    """Each example of v projected onto the L1 ball of radius eps (examples inside are unchanged)."""
    v = tf.convert_to_tensor(v)
    flat = _flat(v)
    a = tf.abs(flat)
    mu = tf.sort(a, axis=1, direction="DESCENDING")
    csum = tf.cumsum(mu, axis=1)
    k = tf.cast(tf.range(1, tf.shape(flat)[1] + 1), v.dtype)
    eps = tf.cast(eps, v.dtype)
    # the largest k with mu_k > (csum_k - eps) / k gives the threshold (csum_k - eps) / k
    cond = mu * k > (csum - eps)
    rho = tf.reduce_sum(tf.cast(cond, tf.int32), axis=1) - 1
    rho = tf.maximum(rho, 0)
    theta = (tf.gather(csum, rho, batch_dims=1) - eps) / tf.cast(rho + 1, v.dtype)
    theta = tf.maximum(theta, 0.0)
    inside = tf.reduce_sum(a, axis=1) <= eps
    theta = tf.where(inside, tf.zeros_like(theta), theta)
    out = tf.sign(flat) * tf.maximum(a - theta[:, None], 0.0)
    return tf.reshape(out, tf.shape(v))


def project_l1_box(v, eps, lo, hi):
    """Each example of v projected onto {||d||_1 <= eps} intersected with the box [lo, hi] (lo <= 0 <= hi)."""
    v = tf.convert_to_tensor(v)
    lo, hi = tf.cast(lo, v.dtype), tf.cast(hi, v.dtype)
    eps = tf.cast(eps, v.dtype)

    def at(t):
        shape = tf.concat([tf.shape(v)[:1], tf.ones([v.shape.rank - 1], tf.int32)], 0)
        t = tf.reshape(t, shape)
        return tf.clip_by_value(tf.sign(v) * tf.maximum(tf.abs(v) - t, 0.0), lo, hi)

    zero = tf.zeros(tf.shape(v)[:1], v.dtype)
    feasible = _l1(at(zero)) <= eps
    low, high = zero, tf.reduce_max(tf.abs(_flat(v)), axis=1)

    def body(i, low, high):
        mid = (low + high) / 2
        too_big = _l1(at(mid)) > eps
        return i + 1, tf.where(too_big, mid, low), tf.where(too_big, high, mid)

    _, low, high = tf.while_loop(lambda i, *_: i < BISECTION_STEPS, body, (tf.constant(0), low, high))
    return at(tf.where(feasible, zero, high))


def l1_step(grad, x_adv, lo_x, hi_x, sparsity=0.99):
    """Unit-L1 ascent direction: sign(grad) on the top (1 - sparsity) fraction of |grad| per example
    (at least one coordinate), skipping coordinates at the box edge the gradient pushes against.
    lo_x / hi_x: the box itself (clip_min, clip_max), scalars or broadcastable."""
    g = tf.convert_to_tensor(grad)
    blocked = ((x_adv <= lo_x) & (g < 0)) | ((x_adv >= hi_x) & (g > 0))
    mag = tf.where(blocked, tf.zeros_like(g), tf.abs(g))
    flat = _flat(mag)
    n = tf.shape(flat)[1]
    k = tf.maximum(1, tf.cast(tf.math.floor((1.0 - sparsity) * tf.cast(n, tf.float32)), tf.int32))
    kth = tf.gather(tf.sort(flat, axis=1, direction="DESCENDING"), k - 1, axis=1)
    chosen = (flat >= kth[:, None]) & (flat > 0)
    count = tf.maximum(tf.reduce_sum(tf.cast(chosen, g.dtype), axis=1, keepdims=True), 1.0)
    step = tf.where(chosen, tf.sign(_flat(g)), tf.zeros_like(flat)) / count
    return tf.reshape(step, tf.shape(g))


def random_l1(x, eps, seed=None):
    """A uniform point of the L1 ball of radius eps per example (TF's global RNG, or stateless from seed)."""
    shape = tf.shape(x)
    ones = tf.ones([x.shape.rank - 1], tf.int32)
    if seed is None:
        draws = [lambda s, lo, hi: tf.random.uniform(s, lo, hi, dtype=x.dtype)] * 3
    else:
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
        # index, not iterate: inside a traced train_step `seeds` is a symbolic tensor
        draws = [lambda s, lo, hi, k=seeds[i]: tf.random.stateless_uniform(s, k, lo, hi, dtype=x.dtype)
                 for i in range(3)]
    e = -tf.math.log(draws[0](shape, 1e-12, 1.0))  # exponential magnitudes: uniform on the simplex once normalised
    signs = tf.sign(draws[1](shape, -1.0, 1.0))
    direction = signs * e / tf.reshape(_l1(e), tf.concat([shape[:1], ones], 0))
    n = tf.cast(tf.reduce_prod(shape[1:]), x.dtype)
    radius = tf.cast(eps, x.dtype) * draws[2](shape[:1], 0.0, 1.0) ** (1.0 / n)
    return direction * tf.reshape(radius, tf.concat([shape[:1], ones], 0))
