"""Robust distillation from a dense adversarially trained teacher (the inner max and the loss both
measured against the teacher's soft labels).

- "ard" (Goldblum et al. 2020, Adversarially Robust Distillation):
      weight * T^2 * KL(softmax(teacher(x) / T) || softmax(student(x_adv) / T)),
  composed with the clean cross-entropy term for ARD's (1 - alpha) CE(student(x), y).
- "rslad" (Zi et al. 2021, Revisiting Adversarial Robustness Distillation: robust soft labels only):
      weight * [5/6 KL(teacher(x) || student(x_adv)) + 1/6 KL(teacher(x) || student(x))]
  (RSLAD's alpha = 5/6; T = 1 in the paper), no hard labels at all.

In both, x_adv maximises KL(teacher(x) || student(x_adv)) by PGD (`attack`'s ball, steps and step
size) from the student in inference mode: the examples the student and its teacher disagree on
most. The term records its adversarial logits as "adv", so adv_loss / adv_acc are logged as with
AdversarialLoss (distill_kl: the distillation loss itself); evaluation (val_adv_*, and its share of
val_loss) uses the usual cross-entropy PGD, comparable across objectives.
The teacher is frozen (the trainer holds it, so checkpoints and saved trainers carry it).
"""
import keras
import tensorflow as tf

from atmc_tf.attacks import attack_from_dict, attack_to_dict
from atmc_tf.choices import DISTILL_MODES
from atmc_tf.attacks.pgd import pgd
from atmc_tf.training.terms.base import PredictionLoss

MODES = DISTILL_MODES
RSLAD_ADV_SHARE = 5.0 / 6.0


def soft_kl(p_teacher, logits, temperature=1.0):
    """Per-example KL(p_teacher || softmax(logits / T)) in float32; p_teacher already at T."""
    log_q = tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
    p = tf.cast(p_teacher, tf.float32)
    return tf.reduce_sum(p * (tf.math.log(tf.maximum(p, 1e-12)) - log_q), axis=-1)


class RobustDistillation(PredictionLoss):
    kind = "distill"
    prediction = prefix = "adv"

    def __init__(self, attack, weight=1.0, mode="ard", temperature=1.0):
        if isinstance(attack, dict):
            attack = attack_from_dict(attack)
        if mode not in MODES:
            raise ValueError(f"distillation mode must be one of {MODES}, got {mode!r}")
        if not weight >= 0:
            raise ValueError(f"distillation weight must be >= 0, got {weight}")
        if not temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.attack, self.weight, self.mode, self.temperature = attack, float(weight), mode, float(temperature)
        self.teacher = None

    def build(self, trainer):
        super().build(trainer)
        self.kl_tracker = keras.metrics.Mean(name="distill_kl")
        if trainer.teacher is None:
            raise ValueError("the distillation term needs a teacher: ATMCTrainer(net, config, teacher=dense_model)")
        self.teacher = trainer.teacher

    @property
    def metrics(self):
        return super().metrics + [self.kl_tracker]

    def _teacher_probs(self, x, temperature):
        return tf.nn.softmax(tf.cast(self.teacher(x, training=False), tf.float32) / temperature, axis=-1)

    def _craft(self, ctx, p_teacher, seed):
        a = self.attack
        return pgd(lambda z: ctx.net(z, training=False), ctx.x, p_teacher, eps=a.eps, step_size=a.alpha,
                   steps=a.steps, norm=a.norm, rand_init=a.rand_init, restarts=a.restarts, clip_min=a.clip_min,
                   clip_max=a.clip_max, loss_fn=lambda p, logits: soft_kl(p, logits), seed=seed)

    def prepare(self, ctx):
        p1 = tf.stop_gradient(self._teacher_probs(ctx.x, 1.0))
        ctx.inputs["distill_teacher"] = p1
        ctx.inputs["adv"] = tf.stop_gradient(self._craft(ctx, p1, ctx.seed(3)))

    def _weighted_mean(self, per_example, sample_weight):
        if sample_weight is None:
            return tf.reduce_mean(per_example)
        w = tf.cast(tf.reshape(sample_weight, tf.shape(per_example)), per_example.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(per_example * w), tf.reduce_sum(w))

    def loss(self, ctx):
        logits = ctx.net(ctx.inputs["adv"], training=True)
        if self.mode == "ard":
            t = self.temperature
            p_t = tf.stop_gradient(self._teacher_probs(ctx.x, t)) if t != 1.0 else ctx.inputs["distill_teacher"]
            per_example = t * t * soft_kl(p_t, logits, t)
        else:
            p = ctx.inputs["distill_teacher"]
            clean_logits = ctx.net(ctx.x, training=True)
            per_example = RSLAD_ADV_SHARE * soft_kl(p, logits) + (1 - RSLAD_ADV_SHARE) * soft_kl(p, clean_logits)
        loss = self._weighted_mean(per_example, ctx.sample_weight)
        ctx.record("adv", logits, ctx.loss_fn(logits, ctx.sample_weight))  # logged like AdversarialLoss's
        ctx.inputs["distill_kl"] = loss
        return self.weight * loss

    def after_step(self, ctx):
        self.track(ctx)
        self.kl_tracker.update_state(ctx.inputs["distill_kl"])

    def evaluate(self, ctx):
        x_adv = self.attack.attack(lambda z: ctx.net(z, training=False), ctx.x, ctx.y, seed=ctx.seed(2))
        logits = ctx.net(x_adv, training=False)
        ctx.record("adv", logits, ctx.loss_fn(logits))
        self.track(ctx)
        return self.weight * ctx.losses["adv"]  # validation: cross-entropy PGD, comparable across objectives

    def get_config(self):
        return {"attack": attack_to_dict(self.attack), "weight": self.weight, "mode": self.mode,
                "temperature": self.temperature}
