"""JPnet's activation regulariser (Yang, Wen, Wang, Li 2019, arXiv 1906.07875): weight * the L1 of the
activations that the net's sparsity layers see, so that training pushes activations under the
ActivationThreshold's threshold (or out of WinnersTakeAll's top-k) and the weights and the
activations are pruned jointly (the weights by the constraint sets: GlobalL0, Quantization, ...).

    loss = weight * mean over the step's input batches (clean, and the adversarial ones another term
           crafted in prepare(): the min-max problem's inputs) of sum over sparsity layers of mean |a|

where a is the layer's INPUT (the activation before it is sparsified: the output is already zero
where the layer dropped it, and would give no gradient there). The activations come from a second
forward pass in inference mode (training=False), so BatchNorm's moving statistics are updated once
per step, by the other terms' passes, not again by this one; its gradient flows to the weights all
the same. Logs activation_l1: the unweighted sum.
"""
import keras
import tensorflow as tf

from atmc_tf.layers.activation_sparsity import sparsity_layers
from atmc_tf.training.metrics import LastValue
from atmc_tf.training.terms.base import LossTerm


class ActivationL1(LossTerm):
    """weight * L1 of the activations before the net's WinnersTakeAll / ActivationThreshold layers."""

    kind = "activation_l1"

    def __init__(self, weight=1e-4):
        if not (weight >= 0 and weight < float("inf")):
            raise ValueError(f"activation L1 weight must be a finite number >= 0, got {weight!r}")
        self.weight = float(weight)

    def build(self, trainer):
        layers = sparsity_layers(trainer.net)
        if not layers:
            raise ValueError("ActivationL1: the net has no WinnersTakeAll or ActivationThreshold layer "
                             "(atmc_tf.layers.insert_activation_sparsity inserts them)")
        self._probe = keras.Model(trainer.net.inputs, [layer.input for layer in layers])
        self.tracker = LastValue("activation_l1")

    @property
    def metrics(self):
        return [self.tracker]

    def l1(self, x):
        """sum over sparsity layers of mean |activation| on the batch x (a scalar tensor)."""
        outs = self._probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return tf.add_n([tf.reduce_mean(tf.abs(tf.cast(a, tf.float32))) for a in outs])

    def _value(self, ctx):
        batches = [ctx.inputs[name] for name in sorted(ctx.inputs)]
        return tf.add_n([self.l1(x) for x in batches]) / len(batches)

    def loss(self, ctx):
        value = self._value(ctx)
        self.tracker.update_state(tf.stop_gradient(value))
        return self.weight * value

    def evaluate(self, ctx):
        value = self.l1(ctx.x)
        self.tracker.update_state(value)
        return self.weight * value

    def get_config(self):
        return {"weight": self.weight}
