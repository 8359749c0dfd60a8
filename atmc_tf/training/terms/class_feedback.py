"""Class-balanced adversarial generation: per-class weights fed back from per-class robust error.

Robustness is unequal across classes (feedback learning for robustness, Song, Wang and Li 2019;
FRL, Xu et al. 2021, "To be Robust or to be Fair", code hannxu123/fair_robust). Both measure per-class errors on a validation split once per
epoch and give the weak classes more of the adversarial training.

State: one weight per class (a trainer weight, so BackupAndRestore / ResumableCheckpoint carry it and
tf.distribute mirrors it), normalised to mean 1 over the classes, and the count of updates. Modes:

- "reweight": the adversarial loss is the per-example weighted mean sum_i w[y_i] l_i / sum_i w[y_i], as
  FRL-Reweight's (its loss divides by the sum of the weights): the compiled loss with sample weight
  w[y_i] / mean_batch(w[y]) (times fit's sample_weight, treated as AdversarialLoss treats it); all
  weights 1 gives AdversarialLoss exactly.
- "resample": the share of the batch that is adversarial follows the weights, as in Song et al.'s
  proportions of adversarial examples per class. Each example is attacked with probability
  p_i = min(1, share * w[y_i] / mean_batch(w[y])), a Bernoulli draw from the step's stateless seed;
  an example not drawn enters the "adversarial" batch as its clean input. The division by the
  batch's mean weight keeps the expected adversarial share of every batch at `share` whatever its
  class mix (up to the clip at 1). Chosen over FRL's per-class eps margins (FRL-Remargin) because
  it changes what the issue asks for (the proportion of adversarial examples per class) without
  changing the threat model the model is evaluated at (a larger eps for a weak class trains it
  against a different ball), and it keeps shapes static: PGD runs on the whole batch (its cost does
  not change) and a tf.where picks per example. With uniform weights it is mixed-batch adversarial
  training with a `share` of the batch attacked.

Update (once per epoch, by training.class_feedback.ClassFeedback, from the per-class robust error
err_c on the validation split, the error of PGD examples = FRL's clean + boundary error):

    w_c <- w_c * exp(rate * (err_c - mean_c err)),  then normalised to mean 1,
           clipped to [1 / bound, bound] and normalised to mean 1 again

FRL (hannxu123/fair_robust, utils_frl.py: frl_train / normalize_lambda / cost_sensitive) does
projected gradient ascent on additive Lagrange multipliers, lambda_c += rate1 * (err_c - mean err -
tau), clamped at 0 and rescaled onto {sum lambda <= lim}, and weights 1/C + lambda_c - mean(lambda).
The multiplicative form is that ascent in log space (exponentiated gradient): weights stay positive
without the clamp, the mean-1 normalisation plays the simplex's role, and `bound` plays lim's (with
C = 10 and lim = 0.5 FRL's relative weights lie in about [0.5, 5.5]). The last normalisation can
move a clipped weight past its bound by the normalising factor; the mean is exactly 1. The default
rate 0.5 is FRL's step: its relative weight C * (1/C + lambda_c - mean lambda) moves by C * rate1 =
10 * 0.05 = 0.5 per unit of error gap and epoch, as exp(0.5 * gap) does to first order.

Validation (test_step) measures the plain adversarial loss on every example (val_adv_* stay
comparable with AdversarialLoss's); metrics: adv_share (the share of the batch attacked, 1 for
reweight) next to adv_loss / adv_acc (on the batch the term trained on).
"""
import math

import keras
import numpy as np
import tensorflow as tf

from atmc_tf.choices import CLASS_FEEDBACK_MODES
from atmc_tf.training.terms.adversarial import AdversarialLoss

MODES = CLASS_FEEDBACK_MODES


def check_feedback(rate, bound, share):
    """ValueError unless the feedback's settings are usable."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"the class feedback rate must be > 0, got {rate}")
    if not (math.isfinite(bound) and bound >= 1):
        raise ValueError(f"the class weight bound must be >= 1 (weights in [1/bound, bound]), got {bound}")
    if not 0 < share <= 1:
        raise ValueError(f"the adversarial share of resample must be in (0, 1], got {share}")


def feedback_update(weights, errors, rate, bound):
    """The next class weights (NumPy, float64) from per-class errors; see the module's rule.
    NaN errors (a class absent from the validation split) count as the mean: that class's weight
    moves only with the normalisation."""
    w = np.asarray(weights, np.float64)
    err = np.asarray(errors, np.float64)
    mean = np.nanmean(err) if np.isfinite(err).any() else 0.0
    err = np.where(np.isfinite(err), err, mean)
    w = w * np.exp(rate * (err - mean))
    w = w / w.mean()
    w = np.clip(w, 1.0 / bound, bound)
    return w / w.mean()


def num_classes(net):
    """The classes of a logits model: its output's last dimension."""
    shape = net.outputs[0].shape if getattr(net, "outputs", None) else net.compute_output_shape((None,) + tuple(
        net.inputs[0].shape[1:]))
    n = shape[-1]
    if n is None or int(n) < 2:
        raise ValueError(f"class feedback needs a classifier with >= 2 logits, got output shape {tuple(shape)}")
    return int(n)


class ClassBalancedAdversarialLoss(AdversarialLoss):
    """AdversarialLoss whose per-class weights (reweight) or per-class adversarial share (resample)
    follow per-class robust error; see the module."""

    kind = "class_feedback"

    def __init__(self, attack, weight=0.5, bn_training=False, mode="reweight", rate=0.5, bound=5.0, share=0.5):
        super().__init__(attack, weight, bn_training)
        if mode not in MODES:
            raise ValueError(f"class feedback mode must be one of {MODES}, got {mode!r}")
        check_feedback(rate, bound, share)
        self.mode, self.rate, self.bound, self.share = mode, float(rate), float(bound), float(share)

    def build(self, trainer):
        super().build(trainer)
        self.num_classes = num_classes(trainer.net)
        self.class_weights = trainer.add_weight(name="feedback_class_weights", shape=(self.num_classes,),
                                                dtype="float32", initializer="ones", trainable=False)
        self.updates = trainer.add_weight(name="feedback_updates", shape=(), dtype="int64", initializer="zeros",
                                          trainable=False)
        self.share_tracker = keras.metrics.Mean(name="adv_share")
        self._trainer = trainer

    @property
    def metrics(self):
        return super().metrics + [self.share_tracker]

    def _label_weights(self, ctx):
        y = tf.cast(tf.reshape(ctx.y, [-1]), tf.int32)
        return tf.gather(tf.convert_to_tensor(self.class_weights), y)

    def attack_probabilities(self, ctx):
        """resample: each example's probability of being attacked (see the module)."""
        w = self._label_weights(ctx)
        return tf.minimum(1.0, self.share * tf.math.divide_no_nan(w, tf.reduce_mean(w)))

    def prepare(self, ctx):
        super().prepare(ctx)
        if self.mode == "resample":
            p = self.attack_probabilities(ctx)
            draw = tf.random.stateless_uniform(tf.shape(p), seed=ctx.seed(4))
            attacked = draw < p
            mask = tf.reshape(attacked, [-1] + [1] * (len(ctx.x.shape) - 1))
            ctx.inputs["adv"] = tf.where(mask, ctx.inputs["adv"], tf.cast(ctx.x, ctx.inputs["adv"].dtype))
            ctx.inputs["adv_share"] = tf.reduce_mean(tf.cast(attacked, tf.float32))
        else:
            ctx.inputs["adv_share"] = tf.constant(1.0)

    def loss(self, ctx):
        if self.mode != "reweight":
            return super().loss(ctx)
        logits = ctx.net(ctx.inputs["adv"], training=True)
        w = self._label_weights(ctx)
        w = tf.math.divide_no_nan(w, tf.reduce_mean(w))  # sum w = batch size: the mean reduction is sum(w l) / sum(w)
        if ctx.sample_weight is not None:
            w = w * tf.cast(tf.reshape(ctx.sample_weight, tf.shape(w)), w.dtype)
        loss = ctx.loss_fn(logits, w)
        ctx.record("adv", logits, loss)
        return self.weight * loss

    def after_step(self, ctx):
        super().after_step(ctx)
        self.share_tracker.update_state(ctx.inputs["adv_share"])

    def evaluate(self, ctx):
        self.share_tracker.update_state(1.0)  # validation attacks every example
        return super().evaluate(ctx)

    def fit_callbacks(self, trainer, callbacks, fit_kwargs):
        """Its ClassFeedback callback: the one given (moved to the front, so it updates the weights before a
        checkpoint callback saves the epoch) or one made from fit's validation_data (arrays); refused without
        either, since the weights would never move (a balanced run must not pass for one silently)."""
        from atmc_tf.training.class_feedback import ClassFeedback
        given = [c for c in callbacks if isinstance(c, ClassFeedback)]
        rest = [c for c in callbacks if not isinstance(c, ClassFeedback)]
        if given:
            return given, rest
        data = fit_kwargs.get("validation_data")
        if not (isinstance(data, (tuple, list)) and len(data) >= 2):
            raise ValueError("class feedback measures per-class robust error on a validation split: pass "
                             "fit(validation_data=(x_val, y_val)) or a ClassFeedback(x_val, y_val) callback")
        return [ClassFeedback(data[0], data[1], seed=trainer._seed)], rest

    def set_from_errors(self, errors):
        """One feedback update from per-class errors (length num_classes); returns the new weights.
        Outside a step (a callback): written on every replica, in the trainer's strategy scope."""
        new = feedback_update(self.class_weights.numpy(), errors, self.rate, self.bound)
        with self._trainer.distribute_strategy.scope():
            self.class_weights.assign(new.astype(np.float32))
            self.updates.assign(self.updates.numpy() + 1)
        return new

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "rate": self.rate, "bound": self.bound,
                "share": self.share}
