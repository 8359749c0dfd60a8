"""Quantization held exactly at every step: the kernels ARE Q_b(S) of a float shadow S (straight-through).

ADMM (admm_quantization.Quantization) keeps W float and only pulls it towards its quantized copy Z; at 2 bits W
never gets there (docs/admm_low_bits.md: the final projection cost the digits main job 60 points of adversarial
accuracy). Here the forward and backward passes see the quantized kernel itself, so the network adapts to the
weights it will ship with, and the optimizer's step is accumulated in a float shadow S that Q_b rounds again
(BinaryConnect, Courbariaux et al. 2015; the "lazy projection" form of a straight-through estimator):

    after each optimizer step:  S <- S + (W - W_prev);  W <- Q_b(S);  W_prev <- W

W - W_prev is exactly the step the optimizer (and any constraint before this one in the composition) took from
the kernel it was given. Zeros are kept: a weight pruned before this constraint starts has S = 0 and a fixed
support before it in the composition (FixedSupport / FixedGroupSupport) keeps its steps at 0, so it stays
pruned. Q_b is atmc_tf.constraints.quantize's (codebook re-fitted and channel scales re-chosen every step), so
the kernels satisfy the set after every step, and finalize() has nothing left to move.
"""
import tensorflow as tf

from atmc_tf.constraints.base import Constraint
from atmc_tf.constraints.quantize import QUANT_SCHEMES, check_codebook, quantize


class QuantizedShadow(Constraint):
    kind = "quantize_ste"
    metric_names = ("shadow_dist",)

    def __init__(self, bits, scheme="codebook_int8", kmeans_iters=20, zero_in_levels=True):
        if int(bits) != bits or not 1 <= int(bits) <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits!r}")
        if scheme not in QUANT_SCHEMES:
            raise ValueError(f"quant_scheme must be one of {QUANT_SCHEMES}, got {scheme!r}")
        check_codebook(scheme, int(bits), bool(zero_in_levels))
        if int(kmeans_iters) < 1:
            raise ValueError("kmeans_iters must be >= 1")
        self.bits, self.scheme = int(bits), scheme
        self.kmeans_iters, self.zero_in_levels = int(kmeans_iters), bool(zero_in_levels)

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        self.shadow = [make_variable(f"ste_shadow_{i}", t.shape, "float32", "zeros") for i, t in enumerate(self.tensors)]
        self.written = [make_variable(f"ste_written_{i}", t.shape, "float32", "zeros")
                        for i, t in enumerate(self.tensors)]

    def quantize(self, values):
        return [quantize(v, self.scheme, self.bits, t.channel_axes, self.kmeans_iters, self.zero_in_levels)
                for t, v in zip(self.tensors, values)]

    def initialize(self, values, assign):
        """The shadow starts at the kernels as they are; the kernels start on the set."""
        qs = self.quantize([tf.cast(v, tf.float32) for v in values])
        for s, w, v, q in zip(self.shadow, self.written, values, qs):
            assign(s, tf.cast(v, tf.float32))
            assign(w, q)
        return [tf.cast(q, v.dtype) for q, v in zip(qs, values)]

    def project(self, values, step, assign):
        shadows = [tf.convert_to_tensor(s.value) + (tf.cast(v, tf.float32) - w.value)
                   for s, w, v in zip(self.shadow, self.written, values)]
        out = []
        for s_var, w_var, s, q, v in zip(self.shadow, self.written, shadows, self.quantize(shadows), values):
            assign(s_var, s)
            assign(w_var, q)
            out.append(tf.cast(q, v.dtype))
        return out

    def finalize(self, values, assign):
        values = self.quantize(values)  # already on the set after the last step: idempotent
        for s, w, v in zip(self.shadow, self.written, values):
            assign(s, tf.cast(v, tf.float32))
            assign(w, tf.cast(v, tf.float32))
        return values

    def metrics(self, values):
        """||S - W||: how far the float shadow is from the kernels the network uses."""
        return {"shadow_dist": tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(s.value - tf.cast(v, tf.float32)))
                                                 for s, v in zip(self.shadow, values)]))}

    def get_config(self):
        return {"bits": self.bits, "scheme": self.scheme, "kmeans_iters": self.kmeans_iters,
                "zero_in_levels": self.zero_in_levels}
