"""Properties of AdaBoost.MM's costs, edge and learner weight (atmc_tf.boosting.costs)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from atmc_tf.boosting import costs as B

K = 4


@st.composite
def problems(draw, n_min=2, n_max=8):
    """(scores, labels, learner outputs on the simplex) for n examples, K classes."""
    n = draw(st.integers(n_min, n_max))
    floats = st.floats(-3, 3, allow_nan=False, width=32)
    scores = np.array(draw(st.lists(st.lists(floats, min_size=K, max_size=K), min_size=n, max_size=n)))
    y = np.array(draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n)))
    logits = np.array(draw(st.lists(st.lists(floats, min_size=K, max_size=K), min_size=n, max_size=n)))
    h = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return scores, y, h


@settings(deadline=None)
@given(problems())
def test_costs_are_normalised(problem):
    scores, y, _ = problem
    c = B.cost_matrix(scores, y)
    rows = np.arange(len(y))
    off = np.ones_like(c, dtype=bool)
    off[rows, y] = False
    assert np.all(c[off] >= 0)
    assert np.isclose(c[off].sum(), 1.0)
    np.testing.assert_allclose(c.sum(axis=1), 0.0, atol=1e-12)
    assert np.isclose(B.example_weights(c, y).sum(), 1.0)


@settings(deadline=None)
@given(problems())
def test_edge_in_range_and_weight_positive_iff_edge_positive(problem):
    scores, y, h = problem
    c = B.cost_matrix(scores, y)
    delta = B.edge(c, h, y)
    assert -1 - 1e-9 <= delta <= 1 + 1e-9
    alpha = B.learner_weight(delta)
    assert (alpha > 0) == (delta > 0)
    assert (alpha < 0) == (delta < 0)


@settings(deadline=None)
@given(problems(), st.data())
def test_a_misclassified_example_gains_cost_when_the_new_learner_errs_on_it(problem, data):
    """A one-hot learner that errs on example i (and has a positive edge): i's cost, its share of the
    total and the cost of the class the learner chose all rise after the round."""
    scores, y, _ = problem
    n = len(y)
    i = data.draw(st.integers(0, n - 1))
    wrong = data.draw(st.sampled_from([l for l in range(K) if l != y[i]]))
    h = np.eye(K)[y]                       # right everywhere ...
    h[i] = np.eye(K)[wrong]                # ... but on example i
    c = B.cost_matrix(scores, y)
    delta = B.edge(c, h, y)
    if delta <= 0:                         # a learner worse than chance gets weight <= 0, no round
        return
    alpha = B.learner_weight(delta)
    after = B.update_scores(scores, h, alpha)
    raw_before = np.exp(scores[i, wrong] - scores[i, y[i]])
    raw_after = np.exp(after[i, wrong] - after[i, y[i]])
    assert raw_after > raw_before
    c_after = B.cost_matrix(after, y)
    assert B.example_weights(c_after, y)[i] >= B.example_weights(c, y)[i] - 1e-12
    assert c_after[i, wrong] >= c[i, wrong] - 1e-12


@settings(deadline=None)
@given(problems())
def test_a_round_never_raises_the_exponential_loss(problem):
    """The weight's guarantee: loss after <= sqrt(1 - delta^2) x loss before, for any simplex learner."""
    scores, y, h = problem
    delta = B.edge(B.cost_matrix(scores, y), h, y)
    after = B.update_scores(scores, h, B.learner_weight(delta))
    before = B.exponential_loss(scores, y)
    assert B.exponential_loss(after, y) <= np.sqrt(max(1 - delta ** 2, 0)) * before * (1 + 1e-9) + 1e-12


def test_a_perfect_learner_has_edge_one_and_its_opposite_minus_one():
    scores = np.array([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]])
    y = np.array([0, 1])
    c = B.cost_matrix(scores, y)
    assert np.isclose(B.edge(c, np.eye(3)[y], y), 1.0)
    # A learner that always picks the costliest wrong class has edge -(its share) <= 0.
    worst = np.eye(3)[np.where(np.eye(3)[y] > 0, -np.inf, c).argmax(axis=1)]
    assert B.edge(c, worst, y) < 0
    assert np.isfinite(B.learner_weight(1.0)) and B.learner_weight(1.0) > 5


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="labels"):
        B.cost_matrix(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        B.edge(B.cost_matrix(np.zeros((2, 3)), np.array([0, 1])), np.zeros((2, 4)), np.array([0, 1]))
