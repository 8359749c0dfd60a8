"""Global L0 projection: feasible, idempotent, and the nearest feasible point."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from atmc_tf.constraints import apply_masks, count_nonzero, project_l0, project_l0_hinted, topk_masks

floats = st.floats(-10, 10, allow_nan=False, width=32)
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
tensor_lists = st.lists(hnp.arrays(np.float32, shapes, elements=floats), min_size=1, max_size=4)


@given(tensor_lists, st.integers(0, 200))
def test_feasible_and_idempotent(ws, k):
    p = project_l0(ws, k)
    assert int(count_nonzero(p)) <= k
    assert [t.shape for t in p] == [w.shape for w in ws]
    p2 = project_l0(p, k)
    for a, b in zip(p, p2):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@given(tensor_lists, st.integers(0, 200), st.integers(0, 2**31 - 1))
def test_nearest_point(ws, k, seed):
    """Distance equals the mass of the n-k smallest magnitudes, and beats any other support."""
    p = project_l0(ws, k)
    dist = sum(float(np.sum((w.astype(np.float64) - q.numpy()) ** 2)) for w, q in zip(ws, p))
    mags = np.sort(np.concatenate([np.abs(w).ravel() for w in ws]).astype(np.float64))
    n = mags.size
    best = float(np.sum(mags[: max(n - k, 0)] ** 2))
    assert np.isclose(dist, best, rtol=1e-5, atol=1e-5)
    # any other support of size k is no closer
    rng = np.random.default_rng(seed)
    flat = np.concatenate([w.ravel() for w in ws]).astype(np.float64)
    keep = rng.permutation(n)[: min(k, n)]
    other = np.zeros_like(flat)
    other[keep] = flat[keep]
    assert dist <= float(np.sum((flat - other) ** 2)) * (1 + 1e-9) + 1e-9


def test_budget_is_global_not_per_layer():
    big = np.full((10,), 5.0, np.float32)
    small = np.full((10,), 0.1, np.float32)
    p = project_l0([big, small], 10)
    assert int(tf.math.count_nonzero(p[0])) == 10
    assert int(tf.math.count_nonzero(p[1])) == 0


def test_ties_never_exceed_budget():
    ws = [np.ones((50,), np.float32), np.ones((7, 3), np.float32)]
    p = project_l0(ws, 13)
    assert int(count_nonzero(p)) == 13


def test_ties_at_the_threshold_keep_the_lowest_positions():
    ws = [np.array([3.0, 1.0, -2.0, 2.0], np.float32), np.array([[2.0, 5.0], [-2.0, 0.5]], np.float32)]
    expected = [[3.0, 0.0, -2.0, 2.0], [[0.0, 5.0], [0.0, 0.0]]]
    for p in (project_l0(ws, 4), project_l0_hinted(ws, 4, 2.0)[0], project_l0_hinted(ws, 4, 0.0)[0]):
        for q, e in zip(p, expected):
            np.testing.assert_array_equal(q.numpy(), e)


denormals = st.sampled_from([0.0, 1e-45, -1e-45, 3e-42, -1e-39, 1e-38, 2.0, -2.0])


@given(st.lists(denormals, min_size=1, max_size=30), st.integers(0, 30))
def test_denormal_magnitudes_are_ranked_exactly(values, k):
    """CPU kernels flush denormals to zero; the projection must still see 1e-45 > 0
    (else a second projection could swap it for a zero and not be idempotent)."""
    w = np.array(values, np.float32)
    (p,) = project_l0([w], k)
    order = sorted(range(w.size), key=lambda i: (-abs(float(w[i])), i))
    expected = np.zeros_like(w)
    expected[order[:k]] = w[order[:k]]
    np.testing.assert_array_equal(p.numpy().view(np.int32), expected.view(np.int32) * (expected != 0))
    np.testing.assert_array_equal(project_l0([p], k)[0].numpy(), p.numpy())


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(dtype):
    ws = [np.array([[0.5, -4.0], [1.5, 0.25]], dtype), np.array([-3.0, 0.75], dtype)]
    p, kth = project_l0_hinted(ws, 3, 1.0)
    assert p[0].dtype == dtype and kth.dtype == dtype and float(kth) == 1.5
    np.testing.assert_array_equal(p[0].numpy(), [[0, -4.0], [1.5, 0]])
    np.testing.assert_array_equal(p[1].numpy(), [-3.0, 0])


def test_mixed_dtypes_are_refused():
    with pytest.raises(ValueError, match="one float dtype"):
        project_l0([np.ones(3, np.float32), np.ones(3, np.float64)], 2)


def test_masks_and_fixed_support():
    ws = [np.arange(1, 7, dtype=np.float32).reshape(2, 3)]
    (m,) = topk_masks(ws, 2)
    np.testing.assert_array_equal(m.numpy(), [[0, 0, 0], [0, 1, 1]])
    moved = [ws[0] - 10.0]
    (q,) = apply_masks(moved, [m])
    np.testing.assert_array_equal(q.numpy() != 0, m.numpy() == 1)


def test_works_in_tf_function_with_large_tensors():
    f = tf.function(lambda t, k: project_l0([t], k)[0])
    w = tf.random.stateless_normal([1_000_000], seed=[1, 2])
    out = f(w, 1000)
    assert int(tf.math.count_nonzero(out)) == 1000
    assert float(tf.reduce_min(tf.abs(tf.boolean_mask(out, out != 0)))) >= float(
        tf.reduce_max(tf.abs(tf.boolean_mask(w, out == 0))))


hints = st.one_of(st.floats(-1, 20, allow_nan=False), st.just(float("nan")), st.just(float("inf")))


@given(tensor_lists, st.integers(0, 200), hints)
def test_hinted_projection_is_the_projection_for_any_hint(ws, k, hint):
    """Feasible and as close as project_l0, whatever (possibly useless) hint it gets;
    the returned threshold is the smallest kept magnitude."""
    p, kth = project_l0_hinted(ws, k, hint)
    ref = project_l0(ws, k)
    assert [t.shape for t in p] == [w.shape for w in ws]
    assert int(count_nonzero(p)) <= k
    dist = sum(float(np.sum((w.astype(np.float64) - q.numpy()) ** 2)) for w, q in zip(ws, p))
    best = sum(float(np.sum((w.astype(np.float64) - q.numpy()) ** 2)) for w, q in zip(ws, ref))
    assert np.isclose(dist, best, rtol=1e-6, atol=1e-6)
    for w, q, r in zip(ws, p, ref):  # kept entries are copies of w; the very set project_l0 keeps
        np.testing.assert_array_equal(q.numpy()[q.numpy() != 0], w[q.numpy() != 0])
        np.testing.assert_array_equal(q.numpy(), r.numpy())
    mags = np.sort(np.concatenate([np.abs(w).ravel() for w in ws]))[::-1]
    expected = mags[min(k, mags.size) - 1] if k > 0 else np.float32(0)
    # Bit for bit, denormals included (the selection compares bit patterns, never flushed floats).
    assert np.float32(kth.numpy()).tobytes() == np.float32(expected).tobytes()


@given(st.integers(1, 400), st.floats(0.0, 2.0), st.integers(0, 2**31 - 1))
def test_hinted_projection_equals_project_l0_on_distinct_magnitudes(k, hint_scale, seed):
    """With distinct magnitudes the top-k set is unique: the hinted and full projections agree
    exactly, both when the hint is useful (candidates suffice) and when it forces the fallback."""
    rng = np.random.default_rng(seed)
    ws = [rng.permutation(np.arange(1, 1201, dtype=np.float32))[:600].reshape(20, 30) / 100,
          -rng.permutation(np.arange(1201, 1801, dtype=np.float32)).reshape(600) / 100]
    kth_true = np.sort(np.abs(np.concatenate([w.ravel() for w in ws])))[::-1][k - 1]
    p, kth = project_l0_hinted(ws, k, kth_true * hint_scale)
    for a, b in zip(p, project_l0(ws, k)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(kth) == kth_true


def test_hinted_projection_in_tf_function_warm_start_chain():
    """The trainer's use: each step's threshold warm-starts the next, in one traced function."""
    f = tf.function(lambda t, k, h: project_l0_hinted([t], k, h))
    w = tf.random.stateless_normal([200_000], seed=[3, 4])
    hint = tf.constant(0.0)
    for step in range(4):
        (out,), hint = f(w, 5000, hint)
        (ref,) = project_l0([w], 5000)
        np.testing.assert_array_equal(out.numpy(), ref.numpy())
        w = out + 1e-3 * tf.random.stateless_normal([200_000], seed=[5, step])


# --- layer-adaptive scoring (LAMP) ----------------------------------------------------------

def _lamp_reference(w):
    """LAMP by its definition, in float64: w_u^2 / sum_{v: rank(v) >= rank(u)} w_v^2, ranks by
    ascending |w| with ties by position."""
    flat = np.square(w.astype(np.float64).ravel())
    order = np.argsort(flat, kind="stable")
    out = np.zeros_like(flat)
    for r, idx in enumerate(order):
        tail = flat[order[r:]].sum()
        out[idx] = flat[idx] / tail if tail > 0 else 0.0
    return out.reshape(w.shape)


# TensorFlow's CPU kernels flush float32 subnormals to zero (the cast to float64 included), so a
# subnormal weight scores 0, as a zero does; the reference would not, so they are left out here.
normal_floats = st.floats(-10, 10, allow_nan=False, width=32, allow_subnormal=False)


@given(hnp.arrays(np.float32, shapes, elements=normal_floats))
def test_lamp_scores_match_the_definition(w):
    from atmc_tf.constraints.sparsity import lamp_scores
    s = lamp_scores(w).numpy()
    np.testing.assert_allclose(s, _lamp_reference(w), rtol=1e-4, atol=1e-6)
    assert np.all((s >= 0) & (s <= 1 + 1e-6))
    if np.any(w != 0):
        assert np.isclose(s.max(), 1.0, atol=1e-6)  # the largest entry of a nonzero tensor scores 1


@given(tensor_lists, st.integers(0, 200), st.integers(0, 8))
def test_lamp_selection_feasible_idempotent_scale_invariant(ws, k, exponent):
    from atmc_tf.constraints.sparsity import select_l0
    p = select_l0(ws, k, "lamp")
    assert int(count_nonzero(p)) <= k
    for w, q in zip(ws, p):  # kept entries keep their values
        q = q.numpy()
        np.testing.assert_array_equal(q[q != 0], w[q != 0])
    again = select_l0(p, k, "lamp")
    for a, b in zip(p, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Rescaling one tensor changes nothing (LAMP is per-tensor scale invariant): with raw magnitudes
    # a layer with larger weights would win the budget. Powers of two scale float32 exactly.
    scaled = select_l0([ws[0] * np.float32(2.0 ** exponent)] + ws[1:], k, "lamp")
    for a, b in zip(p, scaled):
        np.testing.assert_array_equal(a.numpy() != 0, b.numpy() != 0)


def test_lamp_keeps_every_layer_where_magnitude_empties_small_ones():
    """A depthwise-like tensor of small weights next to a big dense one: magnitude top-k leaves it
    empty, LAMP keeps entries in both (every layer's largest weight scores 1)."""
    from atmc_tf.constraints.sparsity import select_l0
    rng = np.random.default_rng(0)
    big = rng.normal(0, 1.0, (64, 64)).astype(np.float32)
    small = rng.normal(0, 0.01, (3, 3, 16, 1)).astype(np.float32)
    k = 200
    mag = select_l0([big, small], k, "magnitude")
    lamp = select_l0([big, small], k, "lamp")
    assert int(tf.math.count_nonzero(mag[1])) == 0
    assert int(tf.math.count_nonzero(lamp[1])) > 0 and int(count_nonzero(lamp)) == k


def test_fixed_support_and_global_l0_take_the_scoring():
    from atmc_tf.constraints import FixedSupport, GlobalL0, constraint_from_config, constraint_to_config
    for cls in (GlobalL0, FixedSupport):
        c = cls(10, scoring="lamp")
        assert constraint_from_config(constraint_to_config(c)) == c
        with pytest.raises(ValueError, match="scoring"):
            cls(10, scoring="random")
