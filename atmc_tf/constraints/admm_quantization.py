"""Quantization to at most 2^b values per tensor, enforced by ADMM (ATMC's Q_b constraint).

With zero_in_levels (the default) 0 is one of the 2^b values, so every kernel needs
b-bit indices on the device; zero_in_levels=False is the paper's 2^b nonzero values + 0.

Each compressed tensor W gets a duplicate Z in the quantized set and a scaled dual U.
The loss carries rho/2 ||W - Z + U||^2; every `interval` steps
Z <- Q_b(support(W) * (W + U)) and U <- U + W - Z, where support(W) keeps the zeros
that a sparsity constraint made (Q_b maps 0 to 0, so the L0 budget still holds).
finalize() sets W <- Q_b(W): afterwards every tensor holds at most 2^b values.
"""
import tensorflow as tf

from atmc_tf.constraints.base import Constraint
from atmc_tf.constraints.quantize import QUANT_SCHEMES, check_codebook, quantize


class Quantization(Constraint):
    kind = "quantize"
    metric_names = ("w_z_dist",)

    def __init__(self, bits, scheme="codebook_int8", rho=0.1, interval=5, kmeans_iters=20, zero_in_levels=True):
        if int(bits) != bits or not 1 <= int(bits) <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits!r}")
        if scheme not in QUANT_SCHEMES:
            raise ValueError(f"quant_scheme must be one of {QUANT_SCHEMES}, got {scheme!r}")
        check_codebook(scheme, int(bits), bool(zero_in_levels))
        if not rho >= 0 or int(interval) < 1 or int(kmeans_iters) < 1:
            raise ValueError("rho must be >= 0, quant_interval >= 1 and kmeans_iters >= 1")
        self.bits, self.scheme, self.rho = int(bits), scheme, float(rho)
        self.interval, self.kmeans_iters = int(interval), int(kmeans_iters)
        self.zero_in_levels = bool(zero_in_levels)

    def build(self, tensors, make_variable):
        super().build(tensors, make_variable)
        self.z = [make_variable(f"admm_z_{i}", t.shape, "float32", "zeros") for i, t in enumerate(self.tensors)]
        self.u = [make_variable(f"admm_u_{i}", t.shape, "float32", "zeros") for i, t in enumerate(self.tensors)]

    def quantize(self, values):
        return [quantize(v, self.scheme, self.bits, t.channel_axes, self.kmeans_iters, self.zero_in_levels)
                for t, v in zip(self.tensors, values)]

    def initialize(self, values, assign):
        for z, u, q, v in zip(self.z, self.u, self.quantize(values), values):
            assign(z, q)
            assign(u, tf.zeros_like(v))
        return values

    def _residual(self, values, with_dual=True):
        total = []
        for z, u, v in zip(self.z, self.u, values):
            r = tf.cast(v, tf.float32) - z.value
            if with_dual:
                r = r + u.value
            total.append(tf.reduce_sum(tf.square(r)))
        return tf.add_n(total)

    def penalty(self, values):
        return 0.5 * self.rho * self._residual(values)

    def project(self, values, step, assign):
        def update():
            us = [tf.convert_to_tensor(u.value) for u in self.u]
            zs = self.quantize([(v + u) * tf.cast(tf.not_equal(v, 0), v.dtype) for v, u in zip(values, us)])
            for z_var, u_var, z, u, v in zip(self.z, self.u, zs, us, values):
                assign(z_var, z)
                assign(u_var, u + v - z)
            return tf.constant(True)

        # Every replica takes the same branch: `step` is a mirrored counter.
        tf.cond(tf.equal(step % self.interval, 0), update, lambda: tf.constant(False))
        return values

    def finalize(self, values, assign):
        values = self.quantize(values)  # Q_b keeps zeros at zero: a sparsity budget still holds
        for z, u, v in zip(self.z, self.u, values):
            assign(z, v)
            assign(u, tf.zeros_like(v))
        return values

    def metrics(self, values):
        return {"w_z_dist": tf.sqrt(self._residual(values, with_dual=False))}

    def get_config(self):
        return {"bits": self.bits, "scheme": self.scheme, "rho": self.rho, "interval": self.interval,
                "kmeans_iters": self.kmeans_iters, "zero_in_levels": self.zero_in_levels}
