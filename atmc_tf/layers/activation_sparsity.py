"""Activation sparsity: winners-take-all (DASNet) and activation thresholds (JPnet).

WinnersTakeAll(density) keeps, per sample, the k = ceil(density * n) units with the largest
scores and zeroes the rest, in training and inference alike (DASNet, Yang et al. 2019,
arXiv 1909.06964). A unit is the last axis: a neuron of a Dense output, a whole channel of an
NHWC conv map (so the sparsity is structured: a zeroed channel is a skipped feature map). The
score of a unit is its largest value over every axis but batch and units (for a conv map the
channel's peak over H, W; for a Dense output x itself; after a ReLU, the largest magnitude).
Not the channel's mean: in the int8 .tflite a quantized MEAN rounds differently on LiteRT and
TFLite Micro, which moved near-tied channels across the cut and the two runtimes' logits apart
by 2 int8 steps (measured on small_cnn, digits); a max of int8 values is exact on both.

Exactly k per sample, whatever the ties: a unit's rank is the number of units that beat it,
where a larger score beats a smaller one and, between equal scores, the LOWER index wins;
ranks are then a permutation of 0..n-1 and the units of rank < k are kept. Keras computes the
mask with top_k and a cumulative count of the ties (topk_winners_mask, O(n log k)); the int8
export, where TOPK_V2 and CUMSUM are not TFLite Micro builtins, uses an n x n pairwise
comparison for narrow layers (winners_mask, the same mask) and, wider than PAIRWISE_MAX_UNITS,
an O(n) threshold search (grid_winners_mask, atmc_tf.export.winners): every unit whose int8
score is >= the k-th largest is kept, so units tied in int8 are all kept there. Convert with
atmc_tf.export.to_int8_tflite: a converter called directly sees the top_k form.

k = ceil(density * n - 1e-3), at least 1: a density * n within 1e-3 above an integer counts as
that integer (0.3 * 10 in float32 is 3.0000001, and is 3 units, not 4).

`density` lives in a non-trainable variable, so a schedule (ActivationDensitySchedule) can go
from dense (1.0) to the target during training; the constructor's `density` is the target
and the initial value.

ActivationThreshold(threshold) zeroes activations whose magnitude is not above a threshold
(JPnet, Yang et al. 2019, arXiv 1906.07875). The threshold is SCHEDULED, not learned: a
non-trainable variable that ActivationDensitySchedule ramps from 0 to the target.

Both have no trainable variables. Their backward pass lets gradients through the kept units
only; `straight_through=True` makes it the identity instead (BPDA, Athalye et al. 2018), the
surrogate an honest attack differentiates through (atmc_tf.layers.straight_through_copy).
"""
import math

import keras
from keras import ops

# A density * n this close above an integer counts as that integer (float32 rounding).
_K_SLACK = 1e-3


def winners_count(density, n):
    """k for `n` units at `density` (plain Python, the rule the layer applies in-graph)."""
    return max(1, min(n, math.ceil(float(density) * n - _K_SLACK)))


def unit_scores(x):
    """(batch, units) scores: the largest value over every axis but the first and the last."""
    axes = tuple(range(1, len(x.shape) - 1))
    return ops.max(x, axis=axes) if axes else x


def winners_mask(scores, k):
    """bool (batch, n): True for the k units of each row with the largest scores; between equal
    scores the lower index wins, so every row has exactly k Trues (k a scalar tensor or int)."""
    n = scores.shape[-1]
    s_i = ops.expand_dims(scores, -1)   # (b, n, 1): the unit being ranked
    s_j = ops.expand_dims(scores, -2)   # (b, 1, n): its competitors
    idx = ops.arange(n)
    earlier = ops.expand_dims(idx, -1) > ops.expand_dims(idx, 0)    # [i, j]: j < i
    beats = ops.logical_or(ops.greater(s_j, s_i), ops.logical_and(ops.equal(s_j, s_i), earlier))
    # counted in float32 (exact below 2^24): TFLite Micro's SUM takes float32 / int8 / int16, not
    # int32, and the int8 converter turns this into CAST -> QUANTIZE -> int8 SUM
    rank = ops.sum(ops.cast(beats, "float32"), axis=-1)
    return ops.less(rank, ops.cast(k, "float32"))


def topk_winners_mask(scores, k):
    """winners_mask's result (exactly k per row, the lower index wins ties) in O(n log k): the k-th largest
    score t by top_k, every unit above t, and of the units equal to t the first k - count(above t) by index.
    The form Keras trains and predicts with; TOPK_V2 and CUMSUM are not TFLite Micro builtins, so the int8
    export uses winners_mask or grid_winners_mask instead (atmc_tf.export.winners)."""
    import tensorflow as tf
    t = tf.math.top_k(scores, ops.cast(k, "int32")).values[:, -1:]
    above = ops.greater(scores, t)
    tied = ops.cast(ops.equal(scores, t), "float32")
    room = ops.cast(k, "float32") - ops.sum(ops.cast(above, "float32"), axis=-1, keepdims=True)
    return ops.logical_or(above, ops.logical_and(tied > 0, ops.cumsum(tied, axis=-1) <= room))


PAIRWISE = "pairwise"  # WinnersTakeAll._deployed: the export form of narrow layers
# Units above which the deployed (int8 .tflite) form is the threshold search: the pairwise form stores an
# n x n constant and computes an (n, n) comparison per sample, cheap only for narrow layers.
PAIRWISE_MAX_UNITS = 32
# The threshold search's radix: log_16(256) = 2 levels of 15 thresholds each (30 counting passes over n
# units). Radix 4 (4 levels of 3, 12 passes) computes less but has twice the ops, and each op costs a
# microcontroller's flash: on the Fashion-MNIST LeNet with WTA after every activation, TFLM file (names
# stripped) 240,432 B with radix 16 against 249,184 B with radix 4 (ATMC-8 without WTA: 222,640 B), LiteRT
# batch-1 latency 0.152 against 0.142 ms (2026-12-03, loaded 2-core machine).
_RADIX = 16
LEVELS = {2: 8, 4: 4, 16: 2}[_RADIX]  # levels of the search (radix ** levels = 256 table entries)


def grid_winners_mask(scores, k, grid):
    """bool (batch, n): True for every unit whose score is >= the k-th largest score of its row, ties with it
    all kept (>= k Trues). The deployed form of winners_mask for int8 scores, O(n) per sample: `grid` is the
    (256,) float table of the values the scores' int8 tensor can hold (its scale and zero point), and a radix-16
    search finds the largest table index t with count(scores >= grid[t]) >= k, two levels of fifteen candidate
    thresholds each. TFLite builtins that TFLite Micro runs: GATHER (the table, int32 indices), GREATER_EQUAL,
    SELECT_V2, FULLY_CONNECTED (the counts: all-ones weights, bias [-k, -(n + 1), +1], clipped to [-1, 1], so
    its int8 output range is exactly [-1, 1] whatever calibration saw and the sign of count - k survives
    quantization), CONCATENATION, ARG_MIN / ARG_MAX, int32 MUL / ADD. Every GATHER also fetches entries 0 and
    255 so that the converter quantizes the gathered thresholds with the table's own range; the table must
    carry the scores' scale and zero point exactly for the comparisons to be exact (the exporter checks).
    tf.gather / tf.math.argmin, not keras.ops.take / argmin (their conversions need ops TFLite Micro lacks)."""
    import numpy as np
    import tensorflow as tf
    levels, m = LEVELS, _RADIX - 1
    n = scores.shape[-1]
    ones = np.ones((n, 3), "float32")
    bias = np.array([-float(k), -(n + 1.0), 1.0], "float32")    # units 2, 3 pin the output range to [-1, 1]
    pick = np.array([[1] * m + [0, 0]], "int32")
    # a zero the converter cannot fold (ARG_MAX over one unit): the first level's thresholds are gathered too
    idx = tf.expand_dims(tf.math.argmax(scores[:, :1], axis=1, output_type=tf.int32), 1)
    for level in range(levels):
        stride = _RADIX ** (levels - 1 - level)
        offsets = np.array([[stride * c for c in range(1, _RADIX)] + [0, 255]], "int32")
        cand = tf.gather(grid, idx * pick + offsets)[:, :m]                                  # (b, m)
        ind = ops.where(ops.greater_equal(scores[:, None, :], cand[:, :, None]), 1.0, 0.0)   # (b, m, n)
        # on 2-D rows, so that the converter fuses the bias and the clip into the FULLY_CONNECTED with a
        # dynamic batch too (a 3-D matmul becomes FC -> RESHAPE -> ADD, whose count loses its unit steps)
        d = ops.clip(ops.matmul(ops.reshape(ind, (-1, n)), ones) + bias, -1.0, 1.0)
        d = ops.reshape(d, (-1, m, 3))                               # [sign(count - k), -1, +1]
        d = ops.concatenate([d[:, :, 0], d[:, :1, 1]], axis=1)      # (b, m + 1): the anchor -1 as a sentinel
        # the goods come first (thresholds ascend): the digit is the number of them
        idx = idx + tf.expand_dims(tf.math.argmin(d, axis=1, output_type=tf.int32), 1) * stride
    t = tf.gather(grid, idx * np.array([[1, 0, 0]], "int32") + np.array([[0, 0, 255]], "int32"))[:, :1]
    return ops.greater_equal(scores, t)


def _apply(x, keep, straight_through):
    """x where keep, else 0; the gradient through kept entries only, or everywhere if straight_through."""
    # a scalar 0 broadcast by SELECT_V2: no ZEROS_LIKE / BROADCAST_TO on a dynamic shape in a .tflite
    kept = ops.where(keep, x, ops.cast(0, x.dtype))
    if straight_through:
        return x + ops.stop_gradient(kept - x)
    return kept


@keras.saving.register_keras_serializable(package="atmc_tf")
class WinnersTakeAll(keras.layers.Layer):
    """Per sample, keep the top-k units (neurons, or whole channels of a conv map); see the module."""

    def __init__(self, density, straight_through=False, **kwargs):
        super().__init__(**kwargs)
        density = float(density)
        if not 0.0 < density <= 1.0:
            raise ValueError(f"WinnersTakeAll density must be in (0, 1], got {density!r}")
        self.target_density = density
        self.straight_through = bool(straight_through)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"WinnersTakeAll needs a known last (unit) axis, got input shape {input_shape}")
        self.units = int(input_shape[-1])
        self.density = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.target_density),
                                       trainable=False, name="density")

    def winners(self):
        """k at the variable's current density, a tensor."""
        k = ops.ceil(ops.cast(self.density, "float32") * self.units - _K_SLACK)
        return ops.clip(k, 1, self.units)

    # Set by atmc_tf.export while it converts to int8: PAIRWISE switches call() to winners_mask, (k, grid) to
    # grid_winners_mask. A plain attribute, never saved: weights, configs and checkpoints are unchanged.
    _deployed = None

    def call(self, inputs):
        scores = unit_scores(inputs)
        if self._deployed is None:  # training and Keras inference: exactly k, the lower index wins ties
            keep = topk_winners_mask(scores, self.winners())                 # (b, units)
        elif self._deployed == PAIRWISE:
            keep = winners_mask(scores, self.winners())
        else:
            keep = grid_winners_mask(scores, *self._deployed)
        for _ in range(len(inputs.shape) - 2):
            keep = ops.expand_dims(keep, 1)                                 # (b, 1, .., units)
        return _apply(inputs, ops.stop_gradient(keep), self.straight_through)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "density": self.target_density, "straight_through": self.straight_through}


@keras.saving.register_keras_serializable(package="atmc_tf")
class ActivationThreshold(keras.layers.Layer):
    """Zero activations with |x| <= threshold; the threshold a scheduled non-trainable variable."""

    def __init__(self, threshold, straight_through=False, **kwargs):
        super().__init__(**kwargs)
        threshold = float(threshold)
        if not threshold >= 0.0 or math.isinf(threshold):
            raise ValueError(f"ActivationThreshold threshold must be a finite number >= 0, got {threshold!r}")
        self.target_threshold = threshold
        self.straight_through = bool(straight_through)

    def build(self, input_shape):
        self.threshold = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.target_threshold),
                                         trainable=False, name="threshold")

    def call(self, inputs):
        keep = ops.greater(ops.abs(inputs), ops.cast(self.threshold, inputs.dtype))
        return _apply(inputs, keep, self.straight_through)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "threshold": self.target_threshold,
                "straight_through": self.straight_through}


SPARSITY_LAYERS = (WinnersTakeAll, ActivationThreshold)


def sparsity_layers(model):
    """The model's WinnersTakeAll and ActivationThreshold layers, in model.layers order."""
    return [layer for layer in model.layers if isinstance(layer, SPARSITY_LAYERS)]


# --- inserting the layers into a user's model ---------------------------------------------------

MODES = ("wta", "threshold")
ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU, keras.layers.ELU,
                     keras.layers.PReLU)


def _activates(layer):
    """True for an activation layer or a layer with a fused (non-linear) activation."""
    if isinstance(layer, ACTIVATION_LAYERS):
        return True
    fn = getattr(layer, "activation", None)
    return fn is not None and getattr(fn, "__name__", "") != "linear"


def _sparsifier(layer, mode, density, threshold):
    if mode == "wta":
        return WinnersTakeAll(density, name=f"{layer.name}_wta")
    return ActivationThreshold(threshold, name=f"{layer.name}_threshold")


def insert_activation_sparsity(model, mode="wta", density=0.5, threshold=0.0):
    """Copy of a built Sequential / Functional `model` (weights kept) with a WinnersTakeAll
    (mode "wta", at `density`) or an ActivationThreshold (mode "threshold", at `threshold`) after
    every activation: ReLU / Activation / LeakyReLU / ELU / PReLU layers and layers with a fused
    activation. Never after a layer whose output is a model output (the logits, or a softmax on
    them). Call it on the plain model, before atmc_tf.wrap_model."""
    from atmc_tf import compat
    from atmc_tf.layers.wrappers import ATMCWrapper

    if mode not in MODES:
        raise ValueError(f"activation sparsity mode must be one of {MODES}, got {mode!r}")
    if mode == "wta":
        WinnersTakeAll(density)  # validates
    else:
        ActivationThreshold(threshold)
    if not isinstance(model, keras.Model) or not model.built or not compat.is_graph_model(model):
        raise ValueError("insert_activation_sparsity needs a built Sequential or Functional model")
    for layer in model.layers:
        if isinstance(layer, ATMCWrapper):
            raise ValueError(f"model '{model.name}' is wrapped; insert activation sparsity before wrap_model")
        if isinstance(layer, SPARSITY_LAYERS):
            raise ValueError(f"model '{model.name}' already has activation sparsity layer '{layer.name}'")
    # the layers that produce a model output (KerasTensor._keras_history: the public way Keras
    # names a symbolic tensor's producing operation)
    last = {t._keras_history[0].name for t in model.outputs}
    copies = {}

    def clone(layer):
        new = layer.__class__.from_config(layer.get_config())
        copies[layer.name] = (layer, new)
        return new

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if _activates(layer) and layer.name not in last:
            out = _sparsifier(layer, mode, density, threshold)(out)
        return out

    if isinstance(model, keras.Sequential):
        (spec,) = model.inputs
        layers = [keras.Input(batch_shape=spec.shape, dtype=spec.dtype)]
        for layer in model.layers:
            new = clone(layer)
            layers.append(new)
            if _activates(layer) and layer.name not in last:
                layers.append(_sparsifier(layer, mode, density, threshold))
        out = keras.Sequential(layers, name=model.name)
    else:
        out = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for old, new in copies.values():
        new.set_weights(old.get_weights())
    return out


def straight_through_copy(model):
    """The BPDA surrogate of `model`: the same layers and weights (shared, not copied), except that
    each WinnersTakeAll / ActivationThreshold is a copy with straight_through=True (same forward,
    identity backward), for attacks that see through the gradient masking of top-k and thresholds."""
    copies = []

    def clone(layer):
        if isinstance(layer, SPARSITY_LAYERS):
            new = layer.__class__.from_config({**layer.get_config(), "straight_through": True})
            copies.append((layer, new))
            return new
        return layer

    surrogate = keras.models.clone_model(model, clone_function=clone)
    for old, new in copies:
        new.set_weights(old.get_weights())
    return surrogate


def without_activation_sparsity(model):
    """`model` with its WinnersTakeAll / ActivationThreshold layers skipped (every other layer shared, not
    copied): the same network computing densely, to compare what the sparsification costs or saves."""
    if isinstance(model, keras.Sequential):
        (spec,) = model.inputs
        return keras.Sequential([keras.Input(batch_shape=spec.shape, dtype=spec.dtype)]
                                + [layer for layer in model.layers if not isinstance(layer, SPARSITY_LAYERS)])

    def call(layer, *args, **kwargs):
        return args[0] if isinstance(layer, SPARSITY_LAYERS) else layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
