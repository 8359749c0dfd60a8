"""Domain weights over K threat models (pure tensor code): the exact Euclidean projection onto the
probability simplex and the projected gradient ascent step of APGDA (Wang et al. 2019, "Towards A
Unified Min-Max Framework for Adversarial Exploration and Robustness", arXiv 1906.03563; the
authors' `proj_prob_simplex` in wangjksjtu/minmax-adv).

- project_simplex(v): argmin_w ||w - v||_2 over {w >= 0, sum w = 1}, along the last axis. Sort v
  in decreasing order (u), rho = the largest j with u_j - (sum_{i<=j} u_i - 1) / j > 0, theta =
  (sum_{i<=rho} u_i - 1) / rho, w = max(v - theta, 0) (Held et al. 1974; Duchi et al. 2008). Exact:
  one sort, O(K log K); ties in v give equal weights.
- apgda_step(w, losses, step, gamma): one ascent step on f(w) = sum_k w_k L_k - gamma/2 ||w - 1/K||^2,
  w <- project_simplex(w + step * (L - gamma (w - 1/K))). The threat with the higher loss gains weight;
  gamma pulls w back to the average (gamma large: AVG; gamma 0: all weight on the worst threat).
"""
import tensorflow as tf


def project_simplex(v):
    """Each vector of v (last axis) projected onto the probability simplex."""
    v = tf.convert_to_tensor(v)
    u = tf.sort(v, axis=-1, direction="DESCENDING")
    css = tf.cumsum(u, axis=-1) - 1.0
    j = tf.cast(tf.range(1, tf.shape(v)[-1] + 1), v.dtype)
    rho = tf.reduce_sum(tf.cast(u * j > css, tf.int32), axis=-1, keepdims=True)  # >= 1: j = 1 always holds
    theta = tf.gather(css, rho - 1, batch_dims=v.shape.rank - 1) / tf.cast(rho, v.dtype)
    return tf.maximum(v - theta, 0.0)


def apgda_step(w, losses, step, gamma):
    """w <- project_simplex(w + step * (losses - gamma * (w - 1/K))): the domain weights after one
    projected gradient ascent step of APGDA (w, losses: shape [K])."""
    w = tf.convert_to_tensor(w)
    losses = tf.cast(losses, w.dtype)
    k = tf.cast(tf.shape(w)[-1], w.dtype)
    return project_simplex(w + step * (losses - gamma * (w - 1.0 / k)))
