"""A boosting round's weak-learner objective: adversarial training against per-example, per-class costs.

The labels fit() passes are packed: y[:, 0] the class, y[:, 1:] the round's cost row C[i, :] of
atmc_tf.boosting.costs.cost_matrix (off-label costs >= 0; pack_costs builds it). The term trains on
adversarial examples of the batch (crafted by `attack` against the learner with the cross-entropy of
the class, as AdversarialLoss does) with the cost-weighted pairwise logistic loss

    sum_{l != y_i} C[i, l] * softplus(z_l - z_{y_i}),

a smooth, convex surrogate of the cost a learner pays for ranking class l above y_i: an example and a
wrong class the ensemble already confuses (a high cost) weigh more, which is what raises the learner's
edge against the costs (AdaBoost.MM's weak-learning objective, Mukherjee and Schapire 2013). Per-example
sample weights alone would lose the per-class part of the costs. compile(metrics=...) is not for
this term (the packed labels are not classes); it logs cost_loss and adv_acc itself.
"""
import keras
import tensorflow as tf

from atmc_tf.attacks import attack_from_dict, attack_to_dict
from atmc_tf.training.terms.base import LossTerm


def pack_costs(y, costs, scale=None):
    """fit()'s labels for this term: [n, 1 + K] float32, the class then the cost row. The costs are
    scaled so that their off-label mass averages 1 per example (scale: n / total, unless given): the
    loss then has the size of a cross-entropy, whatever the normalisation of the cost matrix."""
    import numpy as np
    y = np.asarray(y).reshape(-1)
    off = np.maximum(np.asarray(costs, np.float64), 0.0)
    if scale is None:
        total = off.sum()
        scale = len(y) / total if total > 0 else 1.0
    return np.concatenate([y[:, None].astype(np.float32), (off * scale).astype(np.float32)], axis=1)


def unpack(y):
    return tf.cast(y[:, 0], tf.int32), tf.cast(y[:, 1:], tf.float32)


def pairwise_cost_loss(labels, costs, logits):
    """Per example sum_{l != y} costs[l] * softplus(z_l - z_y) (the label's own cost is ignored)."""
    logits = tf.cast(logits, tf.float32)
    true = tf.gather(logits, labels, axis=1, batch_dims=1)
    off = 1.0 - tf.one_hot(labels, tf.shape(logits)[-1])
    return tf.reduce_sum(costs * off * tf.nn.softplus(logits - true[:, None]), axis=-1)


class CostSensitiveAdversarialLoss(LossTerm):
    """weight * mean_i pairwise_cost_loss(y_i, C_i, net(attack(x_i))) on packed labels (pack_costs)."""

    kind = "cost_sensitive"

    def __init__(self, attack, weight=1.0, bn_training=False):
        if isinstance(attack, dict):
            attack = attack_from_dict(attack)
        if not weight >= 0:
            raise ValueError(f"cost-sensitive weight must be >= 0, got {weight}")
        self.attack, self.weight, self.bn_training = attack, float(weight), bool(bn_training)

    def build(self, trainer):
        self.loss_tracker = keras.metrics.Mean(name="cost_loss")
        self.acc_tracker = keras.metrics.SparseCategoricalAccuracy(name="adv_acc")

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker]

    def _loss(self, ctx, x_adv, training):
        labels, costs = unpack(ctx.y)
        logits = ctx.net(x_adv, training=training)
        per_example = pairwise_cost_loss(labels, costs, logits)
        if ctx.sample_weight is not None:
            w = tf.cast(tf.reshape(ctx.sample_weight, tf.shape(per_example)), tf.float32)
            loss = tf.math.divide_no_nan(tf.reduce_sum(per_example * w), tf.reduce_sum(w))
        else:
            loss = tf.reduce_mean(per_example)
        ctx.record("adv", logits, loss)
        return labels, loss

    def prepare(self, ctx):
        labels, _ = unpack(ctx.y)
        ctx.inputs["adv"] = self.attack.attack(lambda z: ctx.net(z, training=self.bn_training), ctx.x, labels,
                                               seed=ctx.seed(1))

    def loss(self, ctx):
        _, loss = self._loss(ctx, ctx.inputs["adv"], training=True)
        return self.weight * loss

    def after_step(self, ctx):
        self.loss_tracker.update_state(ctx.losses["adv"])
        self.acc_tracker.update_state(unpack(ctx.y)[0], ctx.logits["adv"])

    def evaluate(self, ctx):
        labels, _ = unpack(ctx.y)
        attack = getattr(self.attack, "validation_attack", self.attack)
        x_adv = attack.attack(lambda z: ctx.net(z, training=False), ctx.x, labels, seed=ctx.seed(2))
        labels, loss = self._loss(ctx, x_adv, training=False)
        self.loss_tracker.update_state(loss)
        self.acc_tracker.update_state(labels, ctx.logits["adv"])
        return self.weight * loss

    def get_config(self):
        return {"attack": attack_to_dict(self.attack), "weight": self.weight, "bn_training": self.bn_training}
