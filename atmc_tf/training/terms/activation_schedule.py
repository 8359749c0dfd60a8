"""The activation budget's schedule: WinnersTakeAll densities and ActivationThreshold thresholds
move from dense to their targets during training (DASNet's winner rate, JPnet's threshold).

At optimizer step t of T = ramp_steps, along Zhu and Gupta's cubic schedule (the one GlobalL0's
budget follows, atmc_tf.constraints.l0.cubic_budget):

    density_t   = target + (1 - target) (1 - t/T)^3          (1 at t = 0, the target from t = T on)
    threshold_t = target (1 - (1 - t/T)^3)                    (0 at t = 0, the target from t = T on)

where each layer's target is its constructor's argument (layer.target_density /
target_threshold). The step is the optimizer's own counter, so a resumed stage continues the
ramp where it stopped; ramp_steps = 0 puts every layer at its target at once. The term adds no
loss: it writes the layers' non-trainable variables in build() (the value at the current step)
(step 0's value) and in after_step (the next step's value), through ctx.assign, so every replica holds the same
one. It composes with every constraint set: constraints act on kernels, this on activations.

threshold_density (optional): thresholds set by a density instead of a value. After each step
every ActivationThreshold's threshold moves (a moving average, decay 0.9) towards the magnitude
above which a fraction density_t of its input activations lie on the step's clean batch, with
density_t ramped from 1 to threshold_density as above; the .tflite keeps the last value, a
fixed threshold.
"""
import tensorflow as tf

from atmc_tf.layers.activation_sparsity import ActivationThreshold, WinnersTakeAll, sparsity_layers
from atmc_tf.training.terms.base import LossTerm


def remaining(step, ramp_steps):
    """(1 - min(step / ramp_steps, 1))^3, a float32 tensor; 0 when ramp_steps is 0."""
    if ramp_steps == 0:
        return tf.constant(0.0, tf.float32)
    left = 1.0 - tf.minimum(tf.cast(step, tf.float32) / float(ramp_steps), 1.0)
    return left ** 3


class ActivationBudgetSchedule(LossTerm):
    """Ramp the net's activation sparsity layers from dense to their targets over `ramp_steps`."""

    kind = "activation_schedule"

    def __init__(self, ramp_steps=0, threshold_density=None):
        if int(ramp_steps) != ramp_steps or int(ramp_steps) < 0:
            raise ValueError(f"ramp_steps must be an integer >= 0, got {ramp_steps!r}")
        if threshold_density is not None and not 0 < float(threshold_density) <= 1:
            raise ValueError(f"threshold_density must be in (0, 1], got {threshold_density!r}")
        self.ramp_steps = int(ramp_steps)
        self.threshold_density = None if threshold_density is None else float(threshold_density)

    def _values(self, step):
        left = remaining(step, self.ramp_steps)
        for layer in self._layers:
            if isinstance(layer, WinnersTakeAll):
                yield layer.density, layer.target_density + (1.0 - layer.target_density) * left
            elif isinstance(layer, ActivationThreshold) and self.threshold_density is None:
                yield layer.threshold, layer.target_threshold * (1.0 - left)

    def build(self, trainer):
        self._layers = sparsity_layers(trainer.net)
        if not self._layers:
            raise ValueError("ActivationBudgetSchedule: the net has no WinnersTakeAll or ActivationThreshold "
                             "layer (atmc_tf.layers.insert_activation_sparsity inserts them)")
        # the trainer builds its terms before compile (no optimizer yet): the value of step 0; a resumed
        # run restores the layers' variables with the rest of the checkpoint, and after_step moves on
        for variable, value in self._values(0):
            trainer.assign_state(variable, value)
        self._gates = [layer for layer in self._layers if isinstance(layer, ActivationThreshold)]
        if self.threshold_density is not None and self._gates:
            import keras
            self._probe = keras.Model(trainer.net.inputs, [layer.input for layer in self._gates])

    def _calibrate(self, ctx, step):
        """Each threshold towards the magnitude that leaves density_t of its inputs above it."""
        density = self.threshold_density + (1.0 - self.threshold_density) * remaining(step, self.ramp_steps)
        outs = self._probe(ctx.x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for layer, a in zip(self._gates, outs):
            mags = tf.sort(tf.reshape(tf.abs(tf.cast(a, tf.float32)), [-1]))
            n = tf.cast(tf.size(mags), tf.float32)
            # the largest magnitude NOT kept: the floor((1 - density) n)-th smallest (1-based); 0 at density 1
            index = tf.cast(tf.floor((1.0 - density) * n), tf.int32)
            cut = tf.where(index > 0, tf.gather(mags, tf.maximum(index - 1, 0)), 0.0)
            replica = tf.distribute.get_replica_context()
            if replica is not None:
                cut = replica.all_reduce("mean", cut)
            ctx.assign(layer.threshold, 0.9 * layer.threshold.value + 0.1 * cut)

    def after_step(self, ctx):
        step = ctx.trainer.optimizer.iterations   # already counts the step just taken
        for variable, value in self._values(step):
            ctx.assign(variable, value)
        if self.threshold_density is not None and self._gates:
            self._calibrate(ctx, step)

    def get_config(self):
        return {"ramp_steps": self.ramp_steps, "threshold_density": self.threshold_density}
