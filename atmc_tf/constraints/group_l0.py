"""One global budget of whole output channels (structured sparsity) over all compressed tensors.

GroupL0 is GlobalL0 with groups for entries (group_sparsity.py): after every step at most
`budget` groups stay nonzero, the support moving with the weights. The budget counts groups, or
parameters, or caller-given costs such as MACs (budget_unit), so one budget can be spent where a
channel is cheapest. It composes with the other constraints by order: [GroupL0, GlobalL0] prunes
unstructured inside the kept channels, [GroupL0, Quantization] quantizes them (both only keep
zeros at zero, so the channel budget still holds after their projections).

FixedGroupSupport is its one-shot form (structured AP): the same selection, made once when
training starts and kept, as FixedSupport is GlobalL0's.
"""
import math

import numpy as np
import tensorflow as tf

from atmc_tf.constraints import group_sparsity as gs
from atmc_tf.constraints.base import Constraint
from atmc_tf.constraints.l0 import cubic_budget
from atmc_tf.constraints.sparsity import apply_masks

BUDGET_UNITS = ("groups", "params", "macs", "costs")
_GIVEN = ("macs", "costs")  # units whose per-group costs the caller gives in full


def _check_costs(group_costs, budget_unit):
    """group_costs as {name: float or [float, ...]} (plain JSON values, so that get_config round-trips)."""
    if group_costs is None:
        if budget_unit in _GIVEN:
            raise ValueError(f"budget_unit={budget_unit!r} needs group_costs: the cost of every group of every tensor")
        return None
    if budget_unit == "groups":
        raise ValueError("group_costs apply to budget_unit 'params' or 'macs'; a 'groups' budget counts groups")
    if not isinstance(group_costs, dict):
        raise ValueError(f"group_costs must be a dict {{tensor or layer name: cost(s)}}, got {group_costs!r}")
    out = {}
    for name, cost in group_costs.items():
        values = [float(c) for c in cost] if isinstance(cost, (list, tuple, np.ndarray)) else [float(cost)]
        if not all(math.isfinite(c) and c >= 0 for c in values):
            raise ValueError(f"group_costs[{name!r}] must be finite and >= 0, got {cost!r}")
        out[str(name)] = values if isinstance(cost, (list, tuple, np.ndarray)) else values[0]
    return out


def _check_pairs(group_pairs, budget_unit):
    """group_pairs as a tuple of (name, name, w) with w finite and >= 0 (None or empty: no pairs)."""
    if not group_pairs:
        return ()
    if budget_unit == "groups":
        raise ValueError("group_pairs apply to budget_unit 'params', 'costs' or 'macs'; a 'groups' budget counts groups")
    out = []
    for pair in group_pairs:
        if isinstance(pair, (str, bytes)) or len(pair) != 3:
            raise ValueError(f"group_pairs entries must be [name, name, cost], got {pair!r}")
        a, b, w = pair
        w = float(w)
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"group_pairs cost must be finite and >= 0, got {pair!r}")
        out.append((str(a), str(b), w))
    return tuple(out)


class GroupL0(Constraint):
    """At most `budget` nonzero output channels over all compressed tensors, re-selected after every step.

    budget_unit:
      "groups": `budget` groups; the selection is exact (the Euclidean projection for scoring "l2").
      "params": each group costs its own weights, plus group_costs[name] (one number for every group
                of that tensor, or one per group): the weights removing it frees elsewhere, e.g. the
                consumer layer's input slice. Greedy by score per parameter (group_sparsity).
      "costs":  each group costs group_costs[name] (required for every tensor), in any unit the caller
                chooses (e.g. atmc_tf.training.structure.channel_cost_model's linear part, with its pairs
                as group_pairs: the exact parameters of the cut model). Greedy as "params".
      "macs":   each group costs group_costs[name] (required for every tensor): its MACs need the
                layer's output spatial size, which a constraint does not know. Greedy as "params".
    group_pairs: None, or [[a, b, w], ...] (names as group_costs' keys): every kept channel of a together
      with every kept channel of b costs w more (units "params", "costs", "macs"). With them the cost of a
      set of kept channels is exact where a weight joins two prunable channels (it stays only while both
      are kept: atmc_tf.training.structure.channel_cost_model gives group_costs and group_pairs so): the
      kept groups are the longest prefix of the order whose exact cost fits. The order is by score over
      each group's linear cost plus half of what its pairs would charge it with everything kept (its
      share of the weights it frees), so a layer whose channels only pair (cost 0 alone) still ranks.
    group_costs keys are TensorInfo names or, for a layer with one compressed tensor, its layer name.
    Only the compressed tensors count: biases and normalisation weights of a channel are not costed.
    They are not left behind either: ATMCTrainer zeroes a pruned channel's bias and the following
    BatchNorm's gamma / beta / moving mean with it (structured = True), so that it outputs exactly 0
    and surgery cuts it out whatever reads it (a nonzero constant does not fold into a 'same'-padded
    KxK consumer); the costs then bound what the export keeps.
    A DepthwiseConv2D channel and the channel it alone reads (TensorInfo.reads, set by ATMCTrainer)
    are one group here, scored and costed as the sum of the two, as surgery cuts them together.
    scoring: "l2" (squared group norm) or "lamp" (size-fair, never empties a nonzero tensor while
    the budget covers each tensor's strongest group); see group_sparsity.group_scores.
    ramp_steps: the budget falls from everything to `budget` along GlobalL0's cubic schedule.
    keep_layers: names of layers left out (never pruned, not in the budget): the classifier, whose
    output channels are the classes.
    finalize() always enforces `budget` itself.
    """

    kind = "group_l0"
    metric_names = ("group_budget", "kept_groups")
    sparsifying = True
    structured = True  # the trainer zeroes a pruned channel's bias and BatchNorm with its kernel slice

    def __init__(self, budget, scoring="l2", budget_unit="groups", group_costs=None, ramp_steps=0, keep_layers=(),
                 group_pairs=None):
        if budget is None or isinstance(budget, bool) or int(budget) != budget or int(budget) < 1:
            raise ValueError(f"group budget must be an integer >= 1, got {budget!r}")
        if budget_unit not in BUDGET_UNITS:
            raise ValueError(f"budget_unit must be one of {BUDGET_UNITS}, got {budget_unit!r}")
        if int(ramp_steps) != ramp_steps or ramp_steps < 0:
            raise ValueError(f"ramp_steps must be an integer >= 0, got {ramp_steps!r}")
        self.budget = int(budget)
        self.scoring = gs.check_group_scoring(scoring)
        self.budget_unit = budget_unit
        self.group_costs = _check_costs(group_costs, budget_unit)
        self.group_pairs = _check_pairs(group_pairs, budget_unit)
        self.ramp_steps = int(ramp_steps)
        if isinstance(keep_layers, str):
            raise ValueError(f"keep_layers must be a list of layer names, got the string {keep_layers!r}")
        self.keep_layers = tuple(str(n) for n in keep_layers)

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        unknown = set(self.keep_layers) - {t.layer for t in tensors}
        if unknown:
            raise ValueError(f"keep_layers names no compressed layer: {sorted(unknown)}; layers: "
                             f"{sorted({t.layer for t in tensors})}")
        # keep_layers (e.g. the classifier, whose output channels are the classes) take no part:
        # never pruned, not counted in the budget.
        self.active = [i for i, t in enumerate(tensors) if t.layer not in self.keep_layers]
        if not self.active:
            raise ValueError("keep_layers leaves no compressed tensor to prune")
        self.tensors = [tensors[i] for i in self.active]
        self.axes = [t.channel_axes for t in self.tensors]
        self.costs = self._group_costs()
        self.pairs = self._pairs()
        self.leaders = self._leaders()
        sizes = [gs.num_groups(t.shape, a) for t, a in zip(self.tensors, self.axes)]
        if self.costs is None:
            self.total = sum(sizes)
        else:
            self.total = float(sum(c.sum() for c in self.costs) + sum(w * sizes[i] * sizes[j] for i, j, w in self.pairs))
        # The order's costs: the linear ones, plus each pair's weights split between its two ends.
        self.rank_costs = None if self.costs is None else [c.copy() for c in self.costs]
        for i, j, w in self.pairs:
            self.rank_costs[i] += w * sizes[j] / 2
            self.rank_costs[j] += w * sizes[i] / 2
        for t, c in zip(self.tensors, self.rank_costs or []):  # a free group would rank first at any score
            if not np.all(c > 0):
                raise ValueError(f"every group of tensor {t.name!r} must cost > 0 (budget_unit={self.budget_unit!r}"
                                 f"{', with its group_pairs' if self.pairs else ''})")
        self.exact = (self.costs, self.pairs) if self.pairs else None
        self.current = make_variable("group_budget_now", (), "float32", "zeros")

    def _group_costs(self):
        """Per-tensor float64 arrays of per-group costs, or None for unit costs."""
        if self.budget_unit == "groups":
            return None
        given = dict(self.group_costs or {})
        by_layer = {}
        for t in self.tensors:
            by_layer.setdefault(t.layer, []).append(t)
        costs = []
        for t, axes in zip(self.tensors, self.axes):
            n = gs.num_groups(t.shape, axes)
            key = t.name if t.name in given else t.layer if len(by_layer[t.layer]) == 1 else None
            cost = np.asarray(given.pop(key, 0.0 if self.budget_unit == "params" else np.nan), np.float64)
            if self.budget_unit in _GIVEN and np.isnan(cost).any():
                raise ValueError(f"budget_unit={self.budget_unit!r}: group_costs has no entry for tensor {t.name!r} "
                                 f"(layer {t.layer!r})")
            if cost.ndim == 1 and cost.shape[0] != n:
                raise ValueError(f"group_costs for tensor {t.name!r} must be one number or {n} numbers (its groups), "
                                 f"got {cost.shape[0]}")
            cost = np.broadcast_to(cost, (n,))
            if self.budget_unit == "params":
                cost = cost + gs.group_size(t.shape, axes)
            costs.append(np.array(cost, np.float64))
        if given:  # a misspelt name must not silently leave its tensor uncosted
            raise ValueError(f"group_costs names no compressed tensor: {sorted(given)}; tensors: "
                             f"{[t.name for t in self.tensors]}, layers: {sorted(by_layer)}")
        return costs

    def _pairs(self):
        """group_pairs as [(tensor index, tensor index, w)] over self.tensors."""
        if not self.group_pairs:
            return []
        by_layer = {}
        for i, t in enumerate(self.tensors):
            by_layer.setdefault(t.layer, []).append(i)
        index = {t.name: i for i, t in enumerate(self.tensors)}
        index.update({layer: ids[0] for layer, ids in by_layer.items() if len(ids) == 1 and layer not in index})
        out = []
        for a, b, w in self.group_pairs:
            missing = [n for n in (a, b) if n not in index]
            if missing:
                raise ValueError(f"group_pairs names no pruned compressed tensor: {missing}; tensors: "
                                 f"{[t.name for t in self.tensors]}, layers: {sorted(by_layer)}")
            if index[a] == index[b]:
                raise ValueError(f"group_pairs pairs tensor {a!r} with itself")
            out.append((index[a], index[b], w))
        return out

    def _leaders(self):
        """One global index per group: a depthwise channel follows the channel it reads (TensorInfo.reads)
        when that layer is pruned here too (one tensor), so the two are kept or dropped together; None
        without such pairs."""
        sizes = [gs.num_groups(t.shape, a) for t, a in zip(self.tensors, self.axes)]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        by_layer = {}
        for i, t in enumerate(self.tensors):
            by_layer.setdefault(t.layer, []).append(i)
        leaders = np.arange(offsets[-1], dtype=np.int64)
        tied = False
        for i, t in enumerate(self.tensors):
            src = by_layer.get(t.reads, [])
            if not t.reads or len(src) != 1 or len(by_layer[t.layer]) != 1:
                continue
            (j,) = src
            mult = sizes[i] // sizes[j]
            if mult < 1 or mult * sizes[j] != sizes[i]:
                continue
            leaders[offsets[i]:offsets[i + 1]] = offsets[j] + np.arange(sizes[i]) // mult
            tied = True
        return leaders if tied else None

    def budget_at(self, step):
        """The budget after `step` enforcement steps (an int64 tensor)."""
        return cubic_budget(step, self.budget, self.total, self.ramp_steps)

    def _mine(self, values):
        return [values[i] for i in self.active]

    def _select(self, values, budget):
        chosen = gs.select_group_l0(self._mine(values), self.axes, budget, self.scoring, self.rank_costs, self.leaders,
                                    self.exact)
        out = list(values)
        for i, v in zip(self.active, chosen):
            out[i] = v
        return out

    def initialize(self, values, assign):
        return self.project(values, 0, assign)

    def project(self, values, step, assign):
        budget = self.budget_at(step)
        assign(self.current, tf.cast(budget, tf.float32))
        return self._select(values, budget)

    def finalize(self, values, assign):
        assign(self.current, tf.constant(float(self.budget)))
        return self._select(values, self.budget)

    def metrics(self, values):
        return {"group_budget": tf.convert_to_tensor(self.current.value),
                "kept_groups": tf.cast(gs.count_nonzero_groups(self._mine(values), self.axes), tf.float32)}

    def get_config(self):
        config = {"budget": self.budget, "scoring": self.scoring, "budget_unit": self.budget_unit,
                  "group_costs": self.group_costs, "ramp_steps": self.ramp_steps, "keep_layers": list(self.keep_layers)}
        if self.group_pairs:  # a record from before group_pairs reads back as it was written
            config["group_pairs"] = [list(p) for p in self.group_pairs]
        return config


class FixedGroupSupport(GroupL0):
    """Structured AP: the output channels GroupL0 would keep when training starts (the same global
    scoring, costs and budget), chosen once and kept for the whole run, as FixedSupport keeps a
    weight support: the chosen channels expanded to a 0/1 mask of every weight, stored in state
    variables (checkpointed with the trainer) and applied after every step. No ramp: the cut is
    one-shot, what is fine-tuned afterwards is exactly the channels chosen at the start."""

    kind = "fixed_group_support"

    def __init__(self, budget, scoring="l2", budget_unit="groups", group_costs=None, keep_layers=(), group_pairs=None):
        super().__init__(budget, scoring, budget_unit, group_costs, ramp_steps=0, keep_layers=keep_layers,
                         group_pairs=group_pairs)

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        self.masks = [make_variable(f"group_mask_{i}", t.shape, "float32", "ones") for i, t in enumerate(self.tensors)]

    def initialize(self, values, assign):
        assign(self.current, tf.constant(float(self.budget)))
        masks = gs.group_masks(self._mine(values), self.axes, self.budget, self.scoring, self.rank_costs, self.leaders,
                               self.exact)
        for var, m in zip(self.masks, masks):
            assign(var, tf.cast(m, tf.float32))
        return self._apply(values)

    def _apply(self, values):
        kept = apply_masks(self._mine(values), [tf.convert_to_tensor(m.value) for m in self.masks])
        out = list(values)
        for i, v in zip(self.active, kept):
            out[i] = v
        return out

    def project(self, values, step, assign):
        return self._apply(values)

    def finalize(self, values, assign):
        return self._apply(values)

    def get_config(self):
        config = super().get_config()
        del config["ramp_steps"]
        return config
