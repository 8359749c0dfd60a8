"""LSGAN training of a conditional generator: the dense teacher, and GAN Slimming's student, in one class.

Why not ATMCTrainer: its train_step is one player (one model, one optimizer, loss terms of that
model's predictions, constraints projected on its kernels). A GAN is two players updated in turn
with their own optimizers and losses; folding a second player into ATMCTrainer would be a branch in
its train_step. So GANTrainer is a small keras.Model with its own train_step that keeps Keras'
compile/fit contract (fit, callbacks, History, metrics) and composes the project's pieces: the
constraint objects of atmc_tf.constraints (BNChannelL1Prox on the BN gammas of the hidden Conv2D layers, and of
the project Dense's channels with prune_dense, or GroupL0 on the hidden Conv2D kernels, after each generator step) and its
quantizers (quantize_uniform_int8, through a straight-through estimator).

One step, batch (x, y) of real images and labels, codes c = [noise, one-hot y]:
  D:  0.5 E (D(x, y) - 1)^2 + 0.5 E D(G(c), y)^2                              (LSGAN, Mao et al. 2017)
  G:  gan_weight * 0.5 E (D(G(c), y) - 1)^2 + distill_weight * E ||G(c) - T(c)||^2   (GS; T frozen)
then the proximal step on the BN gammas (GS: soft threshold lr * rho, plus the channel budget,
ramped from every channel to the target over `ramp_steps`), or instead (kernel_constraint) the
project's GroupL0 projection of the hidden Conv2D kernels with their BN gammas and betas silenced. Quantization (bits): the generator's
Conv2D / Dense kernels are replaced by their b-bit per-channel int8-lattice projection for the
forward and backward pass, and the gradient is applied to the float kernels (straight-through,
BinaryConnect-style); finalize() leaves the projected kernels in place. The teacher is the same
class with teacher=None, distill_weight=0 and neither prox nor bits.
"""
import keras
import tensorflow as tf

from atmc_tf.constraints.base import TensorInfo
from atmc_tf.constraints.quantize import quantize_uniform_int8
from atmc_tf.gan.models import channel_groups, prunable_bns


class GANTrainer(keras.Model):
    def __init__(self, generator, discriminator, num_classes, z_dim, teacher=None, distill_weight=0.0,
                 gan_weight=1.0, prox=None, budget_start=None, ramp_steps=0, bits=None, seed=0,
                 kernel_constraint=None, prune_dense=False, **kwargs):
        super().__init__(**kwargs)
        if distill_weight > 0 and teacher is None:
            raise ValueError("distill_weight > 0 needs a teacher generator")
        if bits is not None and not 2 <= int(bits) <= 8:
            raise ValueError(f"bits must be in [2, 8] or None, got {bits}")
        self.generator, self.discriminator, self.teacher = generator, discriminator, teacher
        self.num_classes, self.z_dim = int(num_classes), int(z_dim)
        self.distill_weight, self.gan_weight = float(distill_weight), float(gan_weight)
        self.prox, self.bits = prox, bits
        self.ramp_steps = int(ramp_steps)
        self.seed_gen = keras.random.SeedGenerator(seed)
        # prune_dense: the prox prunes the project Dense's channels too (atmc_tf.gan.models)
        self.pairs = prunable_bns(generator, dense=prune_dense) if prox is not None else []
        self.prox_vars = [v for _, bn in self.pairs for v in (bn.gamma, bn.beta)]
        if prox is not None:
            # the project's BN has a group of gammas per channel: the prox must threshold and count groups
            groups = channel_groups(generator, dense=prune_dense)
            if prox.groups is None:
                prox.groups = groups
            elif prox.groups != groups:
                raise ValueError(f"prox groups {prox.groups} do not match the generator's channel groups {groups}")
            prox.build(self.prox_vars, None)
        # the ramp starts from every channel: their count, or their total cost for a cost budget
        self.budget_start = budget_start or (prox.full_budget() if prox is not None else 0)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("d_loss", "g_adv", "distill")}
        # The structured alternative: a constraint on the prunable Conv2D kernels (GroupL0, one global
        # channel budget), projected after each step; a channel whose kernel slice it zeroes gets its
        # BN gamma and beta zeroed too (as ATMCTrainer's ChannelSilencer does), so it outputs exactly 0.
        self.kernel_constraint = kernel_constraint
        # (the Conv2D channels only: GroupL0 groups a kernel's output units, and a project channel is many units)
        self.kernel_pairs = prunable_bns(generator, dense=False) if kernel_constraint is not None else []
        if kernel_constraint is not None:
            if prox is not None:
                raise ValueError("pass prox (L1 on BN gammas) or kernel_constraint (e.g. GroupL0), not both")
            infos = [TensorInfo(name=f"{conv.name}/kernel", shape=tuple(conv.kernel.shape), channel_axes=(-1,),
                                layer=conv.name, kind="Conv2D") for conv, _ in self.kernel_pairs]
            kernel_constraint.build(infos, lambda name, shape, dtype, initializer: self.add_weight(
                name=f"kc_{name}", shape=tuple(shape), dtype=dtype, initializer=initializer, trainable=False))
            self.trackers["live_channels"] = keras.metrics.Mean(name="live_channels")
        self.kernels = [layer.kernel for layer in generator.layers
                        if type(layer) in (keras.layers.Conv2D, keras.layers.Dense)] if bits else []
        if prox is not None:
            self.trackers["live_channels"] = keras.metrics.Mean(name="live_channels")

    def compile(self, g_optimizer, d_optimizer):
        super().compile()
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        # built now, so that a checkpoint (save_weights / load_weights) holds and restores their state
        g_optimizer.build(self.generator.trainable_variables)
        d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, codes, training=False):
        return self.generator(codes, training=training)

    def _quantized(self, kernel):
        return quantize_uniform_int8(kernel, self.bits)[0]

    def budget_now(self):
        """The channel budget of this step: ramped linearly from budget_start to prox.budget."""
        target = self.prox.budget if self.prox.budget is not None else self.budget_start
        if self.ramp_steps <= 0:
            return tf.constant(target, tf.float32)
        frac = tf.minimum(tf.cast(self.g_optimizer.iterations, tf.float32) / self.ramp_steps, 1.0)
        return tf.round(self.budget_start - (self.budget_start - target) * frac)

    def train_step(self, data):
        x, y = data
        onehot = tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), self.num_classes)
        noise = keras.random.normal((tf.shape(x)[0], self.z_dim), seed=self.seed_gen)
        codes = tf.concat([noise, onehot], axis=1)

        fake = self.generator(codes, training=True)
        with tf.GradientTape() as tape:
            d_real = self.discriminator([x, onehot], training=True)
            d_fake = self.discriminator([fake, onehot], training=True)
            d_loss = 0.5 * tf.reduce_mean(tf.square(d_real - 1.0)) + 0.5 * tf.reduce_mean(tf.square(d_fake))
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars))

        floats = [tf.identity(k) for k in self.kernels]
        for k, w in zip(self.kernels, floats):
            k.assign(self._quantized(w))
        with tf.GradientTape() as tape:
            fake = self.generator(codes, training=True)
            g_adv = 0.5 * tf.reduce_mean(tf.square(self.discriminator([fake, onehot], training=False) - 1.0))
            distill = tf.constant(0.0)
            if self.teacher is not None:
                distill = tf.reduce_mean(tf.square(fake - self.teacher(codes, training=False)))
            g_loss = self.gan_weight * g_adv + self.distill_weight * distill
        g_vars = self.generator.trainable_variables
        grads = tape.gradient(g_loss, g_vars)
        for k, w in zip(self.kernels, floats):  # straight-through: the step moves the float kernels
            k.assign(w)
        self.g_optimizer.apply_gradients(zip(grads, g_vars))

        logs = {"d_loss": d_loss, "g_adv": g_adv, "distill": distill}
        if self.prox is not None:
            new = self.prox.project([v.value for v in self.prox_vars], self.g_optimizer.iterations, None,
                                    budget=self.budget_now())
            for v, value in zip(self.prox_vars, new):
                v.assign(value)
            logs["live_channels"] = self.prox.metrics(new)["live_channels"]
        if self.kernel_constraint is not None:
            self._project_kernels(lambda values: self.kernel_constraint.project(
                values, self.g_optimizer.iterations, lambda var, value: var.assign(value)))
            logs["live_channels"] = tf.add_n([tf.math.count_nonzero(bn.gamma, dtype=tf.int32)
                                              for _, bn in self.kernel_pairs])
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}

    def _project_kernels(self, fn):
        new = fn([conv.kernel.value for conv, _ in self.kernel_pairs])
        for (conv, bn), kernel in zip(self.kernel_pairs, new):
            conv.kernel.assign(kernel)
            alive = tf.cast(tf.reduce_any(tf.not_equal(tf.reshape(kernel, [-1, kernel.shape[-1]]), 0), axis=0),
                            bn.gamma.dtype)
            bn.gamma.assign(bn.gamma * alive)
            bn.beta.assign(bn.beta * alive)

    def finalize(self):
        """After training: the budget holds exactly, and the kernels are on the b-bit lattice."""
        if self.kernel_constraint is not None:
            self._project_kernels(lambda values: self.kernel_constraint.finalize(
                values, lambda var, value: var.assign(value)))
        if self.prox is not None:
            new = self.prox.finalize([v.value for v in self.prox_vars], None)
            for v, value in zip(self.prox_vars, new):
                v.assign(value)
        for k in self.kernels:
            k.assign(self._quantized(k.value))
