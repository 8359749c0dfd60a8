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

    def __init__(self, ramp_steps=0):
        if int(ramp_steps) != ramp_steps or int(ramp_steps) < 0:
            raise ValueError(f"ramp_steps must be an integer >= 0, got {ramp_steps!r}")
        self.ramp_steps = int(ramp_steps)

    def _values(self, step):
        left = remaining(step, self.ramp_steps)
        for layer in self._layers:
            if isinstance(layer, WinnersTakeAll):
                yield layer.density, layer.target_density + (1.0 - layer.target_density) * left
            elif isinstance(layer, ActivationThreshold):
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

    def after_step(self, ctx):
        step = ctx.trainer.optimizer.iterations   # already counts the step just taken
        for variable, value in self._values(step):
            ctx.assign(variable, value)

    def get_config(self):
        return {"ramp_steps": self.ramp_steps}
