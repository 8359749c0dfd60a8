"""Free adversarial training as a loss term (Shafahi et al. 2019; the math: atmc_tf.attacks.free).

Design. The paper's inner loop, "replay each minibatch m times; every replay updates the weights and the
perturbation delta from ONE backward pass", is split along the composable trainer's seams instead of being a
training loop of its own:

- delta is term state: a non-trainable trainer weight of the batch's shape (created in build(), so
  checkpoints carry it and a resumed run continues with the delta it had), persistent across steps and
  minibatches as in the paper;
- prepare() crafts the input clip(x + delta[:n]) and asks the step for the loss's gradient with respect to
  it (StepContext.watch); the trainer computes it in the same tape.gradient call as the weights' gradients,
  so a replay costs one forward and one backward pass;
- the optimizer step and every constraint's projection run as in any step (ATMC's constraints hold after
  each replay, exactly as after a PGD step); after_step then moves delta by eps * sign(gradient);
- the m replays are the data pipeline's: atmc_tf.training.data_order.replay repeats each batch m times,
  and the caller divides the epochs by m (rounded up), so the number of optimizer steps, and the cost,
  are those of plain training for the same epochs.

So train_step stays one step of one batch, Keras' fit, callbacks, checkpoints and distribution apply
unchanged, and no term knows about the others. Under several replicas each replica keeps the delta of its
own share of the batch (the update writes each replica's value; a checkpoint holds replica 0's).
"""
import tensorflow as tf

from atmc_tf.attacks.free import FreeATConfig, free_update
from atmc_tf.training.terms.adversarial import AdversarialLoss


class FreeAdversarialLoss(AdversarialLoss):
    """weight * loss(y, net(clip(x + delta))), delta persistent and updated after every step (see the module).
    Its loss, logs (adv_loss / adv_acc), validation (attack.validation_attack: PGD-7) and config are
    AdversarialLoss's; only the crafted input and the update of delta differ."""

    kind = "free_adversarial"

    def __init__(self, attack, weight=0.5, bn_training=False):
        super().__init__(attack, weight, bn_training)
        if not isinstance(self.attack, FreeATConfig):
            raise ValueError(f"free adversarial training needs a FreeATConfig, got {type(self.attack).__name__}")

    def build(self, trainer):
        super().build(trainer)
        shape = tuple(trainer.net.inputs[0].shape[1:])
        if any(d is None for d in shape):
            raise ValueError(f"free adversarial training needs a fixed input shape, the net's is {shape}")
        self.delta = trainer.add_weight(name="free_delta", shape=(self.attack.batch_size,) + shape,
                                        dtype="float32", initializer="zeros", trainable=False)

    def _current(self, ctx):
        n = tf.shape(ctx.x)[0]
        tf.debugging.assert_less_equal(n, self.attack.batch_size,
                                       message="a batch is larger than the free perturbation's batch_size")
        return tf.cast(self.delta.value[:n], ctx.x.dtype)

    def prepare(self, ctx):
        a = self.attack
        x_adv = tf.clip_by_value(ctx.x + self._current(ctx), a.clip_min, a.clip_max)
        ctx.inputs["adv"] = x_adv
        ctx.watch("adv", x_adv)

    def after_step(self, ctx):
        super().after_step(ctx)
        a = self.attack
        grad = ctx.input_grads["adv"]
        new = free_update(self._current(ctx), grad, ctx.x, a.eps, a.clip_min, a.clip_max)
        n = tf.shape(new)[0]
        ctx.assign(self.delta, tf.concat([tf.cast(new, self.delta.dtype), self.delta.value[n:]], 0))
