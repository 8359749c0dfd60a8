"""A clean-accuracy target held by a Lagrange multiplier (GECO: Rezende and Viola 2018, "Taming VAEs";
its use for compression "with distortion constrained optimization", van Rozendaal et al. 2020).

Instead of fixed clean / adversarial weights, training solves

    min_W  adv_loss(W)   subject to   C(W) <= kappa

with C the clean cross-entropy (form "xent", nats) or the clean error (form "error", a fraction) of the
batch, through the Lagrangian adv_loss + lambda * (C - kappa). The multiplier is updated after every
step from a moving average of the constraint's violation v = C - kappa (positive: violated, negative:
slack):

    ema <- v on the first step, then decay * ema + (1 - decay) * v
    log lambda <- clip(log lambda + rate * ema, log lambda_min, log lambda_max)

so lambda rises while the clean target is missed and falls while it is met with room to spare. The
term's training loss is lambda * clean cross-entropy: the gradient of lambda * (C - kappa) with the
cross-entropy as the differentiable surrogate of the error (the constant -lambda * kappa has no
gradient and is left out, so the logged loss stays a sum of losses). It replaces CleanLoss (it logs
clean_loss / clean_acc the same way) next to an adversarial term (AdversarialLoss or
RobustDistillation) of fixed weight a (`adv_weight`); lambda starts at `lambda_init` (ATMCConfig: the
clean_weight, so the first step is today's mix).

The Lagrangian is normalised: the terms' sum is multiplied by (a + lambda_init) / (a + lambda)
(StepContext.term_scale), i.e. the step minimises the convex combination of adversarial and clean
losses with the clean share lambda / (a + lambda), at the total weight of the first step. For a fixed
lambda this has the same minimiser as a * adv + lambda * clean, but the gradient's scale no longer
grows with lambda: unnormalised, lambda = 100 multiplied an SGD step by 200 and an ATMC-8 run on
Fashion-MNIST diverged to chance within an epoch (2026-12-03). The constraint penalties (ADMM) are
not scaled.

State: log lambda, the moving average and a step count are trainer weights (checkpointed by
BackupAndRestore / ResumableCheckpoint, mirrored under tf.distribute). The violation is averaged
over replicas (all_reduce) before the update, so every replica applies the same one: that of the
global batch. Metrics: geco_lambda (the multiplier) and geco_constraint (the moving average of C,
i.e. ema + kappa), both last values, in training and validation (val_geco_*: the values at the end
of the epoch's training).
"""
import math

import keras
import tensorflow as tf

from atmc_tf.choices import CLEAN_TARGET_FORMS
from atmc_tf.training.metrics import LastValue
from atmc_tf.training.terms.base import PredictionLoss

FORMS = CLEAN_TARGET_FORMS


def check_target(kappa, form):
    """ValueError unless `kappa` is a clean target of `form` (error: a fraction in (0, 1); xent: > 0)."""
    if form not in FORMS:
        raise ValueError(f"clean target form must be one of {FORMS}, got {form!r}")
    kappa = float(kappa)
    if form == "error" and not 0 < kappa < 1:
        raise ValueError(f"a clean error target must be in (0, 1) (a fraction of the batch), got {kappa:g}")
    if form == "xent" and not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"a clean cross-entropy target must be > 0 (nats), got {kappa:g}")
    return kappa


def check_multiplier(rate, decay, lambda_min, lambda_max):
    """ValueError unless the multiplier's update settings are usable."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"the multiplier's rate (geco_rate) must be > 0, got {rate}")
    if not 0 <= decay < 1:
        raise ValueError(f"the moving average's decay (geco_decay) must be in [0, 1), got {decay}")
    if not (math.isfinite(lambda_min) and math.isfinite(lambda_max) and 0 < lambda_min <= lambda_max):
        raise ValueError(f"lambda bounds must satisfy 0 < lambda_min <= lambda_max < inf, got "
                         f"[{lambda_min}, {lambda_max}]")


def _weighted_mean(per_example, sample_weight):
    per_example = tf.cast(per_example, tf.float32)
    if sample_weight is None:
        return tf.reduce_mean(per_example)
    w = tf.cast(tf.reshape(sample_weight, tf.shape(per_example)), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example * w), tf.reduce_sum(w))


class CleanTarget(PredictionLoss):
    """lambda * loss(y, net(x)) with lambda a multiplier holding C(clean batch) <= kappa (see the module)."""

    kind = "clean_target"
    prediction = prefix = "clean"

    def __init__(self, target, form="error", rate=1.0, decay=0.9, lambda_init=1.0, lambda_min=0.01,
                 lambda_max=100.0, adv_weight=0.5):
        self.target = check_target(target, form)
        self.form = form
        check_multiplier(rate, decay, lambda_min, lambda_max)
        if not (math.isfinite(lambda_init) and lambda_init >= 0):
            raise ValueError(f"lambda_init must be >= 0, got {lambda_init}")
        self.rate, self.decay = float(rate), float(decay)
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.lambda_init = float(min(max(lambda_init, lambda_min), lambda_max))
        if not (math.isfinite(adv_weight) and adv_weight >= 0):
            raise ValueError(f"adv_weight (the adversarial term's weight beside the target) must be >= 0, got "
                             f"{adv_weight}")
        self.adv_weight = float(adv_weight)

    def build(self, trainer):
        super().build(trainer)
        self.log_lambda = trainer.add_weight(name="geco_log_lambda", shape=(), dtype="float32", trainable=False,
                                             initializer=keras.initializers.Constant(math.log(self.lambda_init)))
        self.ema = trainer.add_weight(name="geco_violation_ema", shape=(), dtype="float32", initializer="zeros",
                                      trainable=False)
        self.steps = trainer.add_weight(name="geco_steps", shape=(), dtype="int64", initializer="zeros",
                                        trainable=False)
        self.lambda_tracker = LastValue("geco_lambda")
        self.constraint_tracker = LastValue("geco_constraint")

    @property
    def metrics(self):
        return super().metrics + [self.lambda_tracker, self.constraint_tracker]

    @property
    def multiplier(self):
        """lambda, as a tensor (no gradient: it is a state variable)."""
        return tf.exp(tf.convert_to_tensor(self.log_lambda))

    def scale(self):
        """(a + lambda_init) / (a + lambda): the factor on the terms' sum that keeps their total weight fixed."""
        return (self.adv_weight + self.lambda_init) / (self.adv_weight + self.multiplier)

    def constraint(self, ctx, logits, sample_weight=None):
        """C of a batch: its clean cross-entropy or its clean error."""
        if self.form == "xent":
            return ctx.loss_fn(logits, sample_weight)
        y = tf.cast(tf.reshape(ctx.y, [-1]), tf.int64)
        wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int64), y)
        return _weighted_mean(wrong, sample_weight)

    def loss(self, ctx):
        logits = ctx.net(ctx.x, training=True)
        loss = ctx.loss_fn(logits, ctx.sample_weight)
        ctx.record("clean", logits, loss)
        ctx.inputs["geco_constraint"] = loss if self.form == "xent" else self.constraint(ctx, logits, ctx.sample_weight)
        ctx.term_scale = ctx.term_scale * self.scale()
        return self.multiplier * loss

    def after_step(self, ctx):
        self.track(ctx)
        value = tf.cast(tf.stop_gradient(ctx.inputs["geco_constraint"]), tf.float32)
        replica = tf.distribute.get_replica_context()
        if replica is not None:  # the global batch's value, the same on every replica
            value = replica.all_reduce("mean", value)
        violation = value - self.target
        first = tf.equal(self.steps.value, 0)
        ema = tf.where(first, violation, self.decay * self.ema.value + (1.0 - self.decay) * violation)
        log_lambda = tf.clip_by_value(self.log_lambda.value + self.rate * ema, math.log(self.lambda_min),
                                      math.log(self.lambda_max))
        ctx.assign(self.ema, ema)
        ctx.assign(self.log_lambda, log_lambda)
        ctx.assign(self.steps, self.steps.value + 1)
        self.lambda_tracker.update_state(tf.exp(log_lambda))
        self.constraint_tracker.update_state(ema + self.target)

    def evaluate(self, ctx):
        logits = ctx.net(ctx.x, training=False)
        ctx.record("clean", logits, ctx.loss_fn(logits))
        self.track(ctx)
        self.lambda_tracker.update_state(self.multiplier)
        self.constraint_tracker.update_state(self.ema.value + self.target)
        ctx.term_scale = ctx.term_scale * self.scale()
        return self.multiplier * ctx.losses["clean"]

    def get_config(self):
        return {"target": self.target, "form": self.form, "rate": self.rate, "decay": self.decay,
                "lambda_init": self.lambda_init, "lambda_min": self.lambda_min, "lambda_max": self.lambda_max,
                "adv_weight": self.adv_weight}
