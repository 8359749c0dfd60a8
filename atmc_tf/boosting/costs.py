"""Multiclass boosting with cost matrices: the costs, a learner's edge, its weight. Pure NumPy.

What is implemented, and why. The issue asks for the robust boosting of Abernethy, Awasthi and Kale,
"A Multiclass Boosting Framework for Achieving Fast and Provable Adversarial Robustness" (arXiv
2103.01276, 2021). Its algorithm text could not be read here (only the abstract was reachable), so
this module implements the multiclass boosting with cost matrices that paper builds on, AdaBoost.MM
of Mukherjee and Schapire, "A Theory of Multiclass Boosting" (JMLR 14, 2013), with its robust
reading: the ensemble's scores are measured on adversarial examples crafted against the ensemble.

  scores      F[i, l] = sum_t alpha_t h_t(x_i)[l], the ensemble's score of class l on example i
              (in the robust loop: at x_i's adversarial example against the ensemble, so the margins
              F[i, y_i] - F[i, l] are robust margins).
  costs       C[i, l] = exp(F[i, l] - F[i, y_i]) for l != y_i,  C[i, y_i] = -sum_{l != y_i} C[i, l];
              normalised so that the off-label costs sum to 1 (a scale common to all entries changes
              neither the edge nor the weight; the normalisation keeps exp() in range).
  edge        delta = -sum_{i, l} C[i, l] h(x_i)[l] / sum_i sum_{l != y_i} C[i, l], in [-1, 1],
              for a learner whose output h(x) lies on the probability simplex (a one-hot prediction
              is AdaBoost.MM's discrete learner; a softmax is its confidence-rated form). In the
              robust loop h is evaluated at adversarial examples against the learner: its robust edge.
  weight      alpha = 1/2 ln((1 + delta) / (1 - delta)): positive iff delta > 0. It minimises the
              bound cosh(alpha) - delta sinh(alpha) on the factor by which the exponential loss
              sum_i sum_{l != y_i} exp(F[i, l] - F[i, y_i]) changes (e^{a z} <= cosh a + z sinh a for
              z = h_l - h_y in [-1, 1]), so a round with edge delta multiplies it by at most
              sqrt(1 - delta^2): it never rises when delta > 0.
  update      F <- F + alpha h(x).

A learner with edge <= 0 has weight <= 0; the loop (atmc_tf.boosting.loop) adds it with weight 0.
"""
import numpy as np

# |delta| is kept below 1 so that a perfect learner gets a large finite weight, not infinity.
EDGE_LIMIT = 1.0 - 1e-6


def _check(scores, y):
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be [n, classes] with one label per row, got {scores.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got [{y.min()}, {y.max()}]")
    return scores, y


def cost_matrix(scores, y):
    """AdaBoost.MM's cost matrix of the ensemble scores `scores` [n, K] for labels `y` [n], normalised:
    off-label entries >= 0 summing to 1 over the whole matrix, each row summing to 0."""
    scores, y = _check(scores, y)
    rows = np.arange(len(y))
    margins = scores - scores[rows, y][:, None]          # F[i, l] - F[i, y_i]; 0 on the label
    off = np.ones_like(margins, dtype=bool)
    off[rows, y] = False
    shifted = np.where(off, margins, -np.inf)
    shifted = shifted - shifted.max()                    # one common shift: exp() never overflows
    costs = np.where(off, np.exp(shifted), 0.0)
    costs /= costs.sum()
    costs[rows, y] = -costs.sum(axis=1)
    return costs


def example_weights(costs, y):
    """Each example's share of the off-label cost, sum_{l != y_i} C[i, l] (= -C[i, y_i])."""
    y = np.asarray(y).astype(np.int64).reshape(-1)
    return -np.asarray(costs)[np.arange(len(y)), y]


def edge(costs, predictions, y):
    """The edge of a learner whose outputs `predictions` [n, K] lie on the simplex, against `costs`."""
    costs, y = _check(costs, y)
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.shape != costs.shape:
        raise ValueError(f"predictions {predictions.shape} and costs {costs.shape} differ in shape")
    total = example_weights(costs, y).sum()
    if total <= 0:
        raise ValueError("the costs hold no off-label mass")
    return float(-(costs * predictions).sum() / total)


def learner_weight(delta):
    """alpha = 1/2 ln((1 + delta) / (1 - delta)), delta clipped to +-EDGE_LIMIT."""
    delta = float(np.clip(delta, -EDGE_LIMIT, EDGE_LIMIT))
    return 0.5 * float(np.log1p(delta) - np.log1p(-delta))


def update_scores(scores, predictions, alpha):
    """The ensemble's scores after adding a learner with outputs `predictions` and weight `alpha`."""
    return np.asarray(scores, dtype=np.float64) + float(alpha) * np.asarray(predictions, dtype=np.float64)


def exponential_loss(scores, y):
    """sum_i sum_{l != y_i} exp(F[i, l] - F[i, y_i]): the potential AdaBoost.MM drives down."""
    scores, y = _check(scores, y)
    rows = np.arange(len(y))
    margins = scores - scores[rows, y][:, None]
    margins[rows, y] = -np.inf
    return float(np.exp(margins).sum())
