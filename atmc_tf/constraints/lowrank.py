"""Low-rank math for the W = U V + C factorization option (pure tensor code).

Kernels of any layout are viewed as matrices (fan_in, fan_out): all axes but
the last are flattened into rows. project_rank is the Eckart-Young projection
(truncated SVD) onto {rank <= r}; allocate_ranks spreads one parameter budget
over many matrices by global singular-value magnitude ("global truncated SVD").
"""
import numpy as np
import tensorflow as tf


def kernel_as_matrix(kernel):
    kernel = tf.convert_to_tensor(kernel)
    return tf.reshape(kernel, [-1, kernel.shape[-1]])


def matrix_as_kernel(matrix, kernel_shape):
    return tf.reshape(matrix, kernel_shape)


def project_rank(matrix, rank):
    """Nearest matrix (Frobenius) of rank <= `rank`: truncated SVD."""
    matrix = tf.convert_to_tensor(matrix)
    s, u, v = tf.linalg.svd(matrix)
    r = min(int(rank), int(s.shape[0]))
    return tf.matmul(u[:, :r] * s[:r], v[:, :r], transpose_b=True)


def factorize(matrix, rank):
    """Balanced factors (U, V), U: (m, r), V: (r, n), with U V = project_rank(matrix, r)."""
    matrix = tf.convert_to_tensor(matrix)
    s, u, v = tf.linalg.svd(matrix)
    r = min(int(rank), int(s.shape[0]))
    root = tf.sqrt(s[:r])
    return u[:, :r] * root, tf.transpose(v[:, :r] * root)


def allocate_ranks(matrices, param_budget):
    """Per-matrix ranks for one global parameter budget.

    Singular values of all matrices are taken in decreasing order (largest
    first, as the reference's global truncated SVD does); each one kept costs
    m + n parameters (a column of U and a row of V). Stops before the budget
    is exceeded; every matrix keeps at least rank 1. Returns a list of ints.
    """
    entries = []
    for i, m in enumerate(matrices):
        m = np.asarray(m, dtype=np.float64)
        s = np.linalg.svd(m, compute_uv=False)
        cost = m.shape[0] + m.shape[1]
        entries.extend((float(sv), i, cost) for sv in s)
    ranks = [1] * len(matrices)
    used = sum((np.shape(m)[0] + np.shape(m)[1]) for m in matrices)
    seen = [0] * len(matrices)
    for _, i, cost in sorted(entries, key=lambda e: -e[0]):
        seen[i] += 1
        if seen[i] == 1:
            continue  # the first singular value of each matrix is already paid for
        if used + cost > param_budget:
            break
        used += cost
        ranks[i] = seen[i]
    return ranks
