"""ADMM quantization (atmc_tf.constraints.Quantization) on a separable quadratic: does W reach its b-bit copy Z?

    python tools/admm_probe.py --bits=2 [--growth=1.02] [--scheme=codebook_int8] [--steps=2000]

A 64x32 tensor, task loss 0.5 ||W - T||^2 (T ~ N(0, 0.1^2)), SGD lr 0.01 momentum 0.9 as in the pipeline, the
constraint's own penalty / project (every 5 steps) / quantize. --growth multiplies rho by that factor at every
Z update (the scaled dual U divided by it, Boyd et al. 2011, 3.4.1), up to rho 1000. Prints, at a few steps,
rho, ||W - Z|| (the metric the trainer logs as w_z_dist), ||U||, the task loss at W and at Q_b(W) (what the
final projection leaves); the first line is the task loss of projecting T itself (the optimum of this
separable problem, up to the choice of levels). docs/admm_low_bits.md has the measured output.
"""
import argparse

import keras
import numpy as np
import tensorflow as tf

from atmc_tf.constraints.admm_quantization import Quantization


class _Spec:
    def __init__(self, shape):
        self.shape, self.channel_axes = shape, (-1,)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--growth", type=float, default=1.0)
    ap.add_argument("--scheme", default="codebook_int8")
    ap.add_argument("--rho", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=2000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    target = tf.constant(rng.normal(0, 0.1, (64, 32)).astype("float32"))
    w = tf.Variable(target)
    q = Quantization(a.bits, scheme=a.scheme, rho=a.rho)
    q.build([_Spec((64, 32))], lambda name, shape, dtype, init: keras.Variable(tf.zeros(shape, dtype), trainable=False))
    assign = lambda v, x: v.assign(x)  # noqa: E731
    q.initialize([w.value()], assign)
    opt = keras.optimizers.SGD(0.01, momentum=0.9)

    def task(x):
        return float(0.5 * tf.reduce_sum(tf.square(x - target)))
    print(f"bits {a.bits} scheme {a.scheme} rho {a.rho} growth {a.growth}: task loss of Q_b(T) {task(q.quantize([target])[0]):.4f}")
    for step in range(1, a.steps + 1):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(tf.square(w - target)) + q.penalty([w])
        opt.apply([tape.gradient(loss, w)], [w])
        q.project([w.value()], tf.constant(step), assign)
        if step % q.interval == 0 and a.growth != 1.0 and q.rho < 1000:
            q.u[0].assign(q.u[0] / a.growth)
            q.rho *= a.growth
        if step in (10, 100, 500, 1000, 2000) or step == a.steps:
            print(f"step {step}: rho {q.rho:.3g} ||W-Z|| {float(q.metrics([w.value()])['w_z_dist']):.4g} "
                  f"||U|| {float(tf.norm(q.u[0])):.4g} task(W) {task(w):.4g} task(Q_b(W)) {task(q.quantize([w.value()])[0]):.4g}")


if __name__ == "__main__":
    main()
