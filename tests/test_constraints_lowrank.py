"""Truncated SVD projection (Eckart-Young), factors and the global rank allocation."""
import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from atmc_tf.constraints import allocate_ranks, factorize, kernel_as_matrix, project_rank

matrices = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
                      elements=st.floats(-3, 3, allow_nan=False))


@given(matrices, st.integers(1, 8), st.integers(0, 999))
def test_rank_projection_properties(m, r, seed):
    p = project_rank(m, r).numpy()
    tol = 1e-8 * (1 + np.abs(m).max())
    assert np.linalg.matrix_rank(p, tol=1e-6 * (1 + np.abs(m).max())) <= r
    np.testing.assert_allclose(project_rank(p, r).numpy(), p, atol=1e-6 * (1 + np.abs(m).max()))
    # nearest: no random rank-r matrix is closer
    rng = np.random.default_rng(seed)
    other = rng.normal(size=(m.shape[0], r)) @ rng.normal(size=(r, m.shape[1]))
    assert np.linalg.norm(m - p) <= np.linalg.norm(m - other) + tol


@given(matrices, st.integers(1, 8))
def test_factors_multiply_to_projection(m, r):
    u, v = factorize(m, r)
    np.testing.assert_allclose((u @ v).numpy(), project_rank(m, r).numpy(), atol=1e-6 * (1 + np.abs(m).max()))


def test_kernel_as_matrix_keeps_output_channels():
    k = np.zeros((3, 3, 4, 5))
    assert kernel_as_matrix(k).shape == (36, 5)


def test_allocate_ranks_respects_budget_and_prefers_energy():
    rng = np.random.default_rng(0)
    strong = rng.normal(size=(20, 10)) * 10
    weak = rng.normal(size=(20, 10)) * 0.1
    ranks = allocate_ranks([strong, weak], param_budget=8 * 30)
    assert sum(r * 30 for r in ranks) <= 8 * 30
    assert ranks[0] > ranks[1] >= 1
