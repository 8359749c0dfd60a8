"""One global nonzero budget over all compressed tensors (ATMC's pruning constraint).

GlobalL0: at most k nonzeros over all tensors after every step (AL0, ATMC): the support
moves with the weights. FixedSupport: the top-k support is chosen once, when training
starts, and kept (AP, NAP: one-shot pruning, then fine-tuning). Both rank entries by
`scoring`: "magnitude" (the paper's: the exact Euclidean projection onto the L0 ball)
or "lamp" (layer-adaptive scores: layers of different sizes and scales compete fairly,
and none is emptied; sparsity.lamp_scores).
"""
import tensorflow as tf

from atmc_tf.constraints import sparsity
from atmc_tf.constraints.base import Constraint


def _check_budget(budget):
    if budget is None or int(budget) != budget or int(budget) < 1:
        raise ValueError(f"nnz budget must be an integer >= 1, got {budget!r}")
    return int(budget)


def cubic_budget(step, budget, total, ramp_steps):
    """Zhu and Gupta's cubic schedule, an int64 tensor: budget + floor((total - budget)(1 - t/T)^3)
    after `step` = t of T = `ramp_steps` steps (total at t = 0, budget from t = T on); `budget`
    itself when ramp_steps is 0 or the budget already covers `total`."""
    if ramp_steps == 0 or total <= budget:
        return tf.constant(budget, tf.int64)
    left = 1.0 - tf.minimum(tf.cast(step, tf.float64) / ramp_steps, 1.0)
    extra = tf.cast(tf.math.floor((total - budget) * left ** 3), tf.int64)
    return budget + extra


class GlobalL0(Constraint):
    """At most `budget` nonzeros over all compressed tensors, re-selected after every step.

    ramp_steps > 0 starts from the dense model and lowers the budget to `budget` over that many
    steps along Zhu and Gupta's cubic schedule, k_t = k + (N - k)(1 - t/T)^3, instead of cutting
    to k at once (a one-shot cut of a warm-started model can leave it at chance, to recover from
    scratch). finalize() always enforces `budget` itself.
    """

    kind = "l0"
    metric_names = ("budget",)
    sparsifying = True

    def __init__(self, budget, scoring="magnitude", ramp_steps=0):
        self.budget = _check_budget(budget)
        self.scoring = sparsity.check_scoring(scoring)
        if int(ramp_steps) != ramp_steps or ramp_steps < 0:
            raise ValueError(f"ramp_steps must be an integer >= 0, got {ramp_steps!r}")
        self.ramp_steps = int(ramp_steps)

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        self.size = sum(t.size for t in self.tensors)
        # The last k-th largest |w|: warm-starts the next projection (sparsity.project_l0_hinted,
        # exact for any hint; 0 = no hint yet).
        self.threshold = make_variable("l0_threshold", (), "float32", "zeros")
        self.current = make_variable("l0_budget_now", (), "float32", "zeros")

    def budget_at(self, step):
        """k_t: the budget after `step` enforcement steps (a tensor)."""
        return cubic_budget(step, self.budget, self.size, self.ramp_steps)

    def _select(self, values, k):
        return sparsity.select_l0(values, k, self.scoring)

    def initialize(self, values, assign):
        k = self.budget_at(0)
        assign(self.current, tf.cast(k, tf.float32))
        return self._select(values, k)

    def project(self, values, step, assign):
        k = self.budget_at(step)
        assign(self.current, tf.cast(k, tf.float32))
        if self.scoring != "magnitude":
            return self._select(values, k)
        projected, kth = sparsity.project_l0_hinted(values, k, self.threshold.value)
        assign(self.threshold, kth)
        return projected

    def finalize(self, values, assign):
        assign(self.current, tf.constant(float(self.budget)))
        return self._select(values, self.budget)

    def metrics(self, values):
        return {"budget": tf.convert_to_tensor(self.current.value)}

    def get_config(self):
        return {"budget": self.budget, "scoring": self.scoring, "ramp_steps": self.ramp_steps}


class FixedSupport(Constraint):
    """The top-`budget` support of the weights when training starts, kept for the whole run."""

    kind = "fixed_support"
    metric_names = ("budget",)
    sparsifying = True

    def __init__(self, budget, scoring="magnitude"):
        self.budget = _check_budget(budget)
        self.scoring = sparsity.check_scoring(scoring)

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        self.masks = [make_variable(f"support_mask_{i}", t.shape, "float32", "ones")
                      for i, t in enumerate(self.tensors)]

    def initialize(self, values, assign):
        masks = sparsity.l0_masks(values, self.budget, self.scoring)
        for var, m in zip(self.masks, masks):
            assign(var, m)
        return sparsity.apply_masks(values, masks)

    def _apply(self, values):
        return sparsity.apply_masks(values, [tf.convert_to_tensor(m.value) for m in self.masks])

    def project(self, values, step, assign):
        return self._apply(values)

    def finalize(self, values, assign):
        return self._apply(values)

    def metrics(self, values):
        return {"budget": tf.constant(float(self.budget))}

    def get_config(self):
        return {"budget": self.budget, "scoring": self.scoring}
