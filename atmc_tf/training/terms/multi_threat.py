"""Adversarial loss over K threat models at once (e.g. L_inf, L2 and L1 PGD), four ways to weigh them.

    avg     sum_k L_k / K: the K adversarial losses with equal fixed weights.
    max     per example, the loss on the worst of the K attacks' examples (the one with the highest
            loss; Tramer and Boneh 2019, "Adversarial Training and Robustness for Multiple Perturbations").
    msd     the loss on ONE attack's examples, multi steepest descent (attacks/msd.py: per step and per
            example the steepest of the L_inf / L2 / L1 steps; Maini, Wong and Kolter 2020).
    minmax  sum_k w_k L_k with w on the probability simplex, updated after every step by projected
            gradient ascent on sum_k w_k L_k - gamma/2 ||w - 1/K||^2 (APGDA; Wang et al., arXiv 1906.03563,
            attacks/simplex.py): the threat with the higher loss gains weight, gamma pulls towards 1/K.

L_k is the compiled loss (default cross-entropy) on the net's predictions for attack k's examples, as
AdversarialLoss computes it; the term contributes weight * the weighted objective.

State: the domain weights w (shape [K], 1/K at the start) are a trainer weight, checkpointed and mirrored;
minmax updates them in after_step from the step's K losses averaged over replicas (all_reduce), so every
replica applies the same update, that of the global batch. The losses are those of the step's forward
passes, before its optimizer update.

Metrics: adv_loss / adv_acc on the per-example worst of the K examples (training: max, avg and minmax;
msd: on MSD's examples), adv_acc_<threat> per threat (training: not for msd, which crafts one batch),
and w_<threat> (avg and minmax: the domain weights, last value). Validation runs the K attacks for every
weighting, so runs compare: val_adv_acc_<threat>, and val_adv_acc on the worst example per input.
"""
import math

import keras
import tensorflow as tf

from atmc_tf.attacks import MSDConfig, PGDConfig, apgda_step, attack_from_dict, attack_to_dict
from atmc_tf.choices import DOMAIN_WEIGHTINGS, THREAT_NORMS
from atmc_tf.training.metrics import LastValue
from atmc_tf.training.terms.base import PredictionLoss

WEIGHTINGS = DOMAIN_WEIGHTINGS
PGD_NAMES = {norm: name for name, norm in THREAT_NORMS.items()}


def check_weighting(weighting, gamma, step):
    """ValueError unless the domain weighting and minmax's gamma (>= 0) and step (> 0) are usable."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"domain weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"minmax gamma must be a finite number >= 0, got {gamma}")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"minmax step must be a finite number > 0, got {step}")


def threat_names(attacks):
    """A short name per attack: linf / l2 / l1 for PGD, else its registry kind; "_2", ... on repeats."""
    names = []
    for a in attacks:
        base = PGD_NAMES[a.norm] if isinstance(a, PGDConfig) else attack_to_dict(a)["kind"]
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return tuple(names)


def msd_from_threats(attacks):
    """The MSD attack over the L_inf / L2 / L1 PGD attacks given (their eps and step sizes, the most steps)."""
    norms = [a.norm for a in attacks if isinstance(a, PGDConfig)]
    if len(norms) != len(attacks) or len(set(norms)) != len(norms):
        raise ValueError("msd weighting needs PGD attacks with distinct norms (inf, 2, 1), got "
                         f"{[attack_to_dict(a) for a in attacks]}")
    fields = {}
    for a in attacks:
        fields[f"eps_{a.norm}"], fields[f"step_{a.norm}"] = a.eps, a.alpha
    return MSDConfig(steps=max(a.steps for a in attacks), clip_min=min(a.clip_min for a in attacks),
                     clip_max=max(a.clip_max for a in attacks), **fields)


def _per_example(y, logits):
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=tf.cast(logits, tf.float32))


def _worst(y, logits_list):
    """Per example, the logits (of the K) with the highest cross-entropy, and the index k."""
    losses = tf.stack([_per_example(y, l) for l in logits_list], axis=1)  # [B, K]
    k = tf.argmax(losses, axis=1, output_type=tf.int32)
    stacked = tf.stack([tf.cast(l, tf.float32) for l in logits_list], axis=1)  # [B, K, C]
    return tf.gather(stacked, k, batch_dims=1), k


class MultiThreatLoss(PredictionLoss):
    """weight * (the K threats' adversarial losses, weighed by `weighting`; see the module)."""

    kind = "multi_threat"
    prediction = prefix = "adv"
    adv_user_metrics = True

    def __init__(self, attacks, weighting="minmax", weight=0.5, gamma=4.0, step=0.05, bn_training=False):
        attacks = tuple(attack_from_dict(a) if isinstance(a, dict) else a for a in attacks)
        if len(attacks) < 1:
            raise ValueError("MultiThreatLoss needs at least one attack")
        check_weighting(weighting, gamma, step)
        if not weight >= 0:
            raise ValueError(f"adversarial weight must be >= 0, got {weight}")
        self.attacks, self.weighting, self.weight = attacks, weighting, float(weight)
        self.gamma, self.step, self.bn_training = float(gamma), float(step), bool(bn_training)
        self.names = threat_names(attacks)
        self.msd = msd_from_threats(attacks) if weighting == "msd" else None

    @property
    def logs_weights(self):
        return self.weighting in ("avg", "minmax")

    def build(self, trainer):
        super().build(trainer)
        k = len(self.attacks)
        self.domain_weights = trainer.add_weight(name="domain_weights", shape=(k,), dtype="float32",
                                                 initializer=keras.initializers.Constant(1.0 / k), trainable=False)
        self.threat_acc = [keras.metrics.SparseCategoricalAccuracy(name=f"adv_acc_{n}") for n in self.names]
        self.weight_trackers = [LastValue(f"w_{n}") for n in self.names] if self.logs_weights else []

    @property
    def metrics(self):
        return super().metrics + self.threat_acc + self.weight_trackers

    def _weights(self):
        if self.weighting == "minmax":
            return tf.stop_gradient(tf.convert_to_tensor(self.domain_weights))
        return tf.fill([len(self.attacks)], 1.0 / len(self.attacks))

    def _craft(self, ctx, training, salt):
        model_fn = lambda z: ctx.net(z, training=training)  # noqa: E731
        return [a.attack(model_fn, ctx.x, ctx.y, seed=ctx.seed(salt + k)) for k, a in enumerate(self.attacks)]

    def prepare(self, ctx):
        if self.weighting == "msd":
            ctx.inputs["adv"] = self.msd.attack(lambda z: ctx.net(z, training=self.bn_training), ctx.x, ctx.y)
            return
        advs = self._craft(ctx, self.bn_training, salt=10)
        if self.weighting == "max":  # the worst example per input, judged by the net that crafted them
            logits = [ctx.net(a, training=self.bn_training) for a in advs]
            _, k = _worst(ctx.y, logits)
            shape = tf.concat([tf.shape(k), tf.ones([ctx.x.shape.rank - 1], tf.int32)], 0)
            chosen = advs[0]
            for i in range(1, len(advs)):
                chosen = tf.where(tf.reshape(tf.equal(k, i), shape), advs[i], chosen)
            ctx.inputs["adv"] = chosen
            for name, l in zip(self.names, logits):
                ctx.logits[f"adv_{name}"] = l
        else:
            for name, a in zip(self.names, advs):
                ctx.inputs[f"adv_{name}"] = a

    def loss(self, ctx):
        if self.weighting in ("max", "msd"):
            logits = ctx.net(ctx.inputs["adv"], training=True)
            loss = ctx.loss_fn(logits, ctx.sample_weight)
            ctx.record("adv", logits, loss)
            return self.weight * loss
        logits = [ctx.net(ctx.inputs[f"adv_{n}"], training=True) for n in self.names]
        losses = tf.stack([ctx.loss_fn(l, ctx.sample_weight) for l in logits])
        for name, l in zip(self.names, logits):
            ctx.logits[f"adv_{name}"] = l
        objective = tf.reduce_sum(self._weights() * losses)
        ctx.record("adv", _worst(ctx.y, logits)[0], objective)
        ctx.inputs["threat_losses"] = losses
        return self.weight * objective

    def _track_threats(self, ctx):
        for name, metric in zip(self.names, self.threat_acc):
            if f"adv_{name}" in ctx.logits:
                metric.update_state(ctx.y, ctx.logits[f"adv_{name}"])

    def _track_weights(self, w):
        for i, tracker in enumerate(self.weight_trackers):
            tracker.update_state(w[i])

    def after_step(self, ctx):
        self.track(ctx)
        self._track_threats(ctx)
        if self.weighting != "minmax":
            self._track_weights(self._weights())
            return
        losses = tf.cast(tf.stop_gradient(ctx.inputs["threat_losses"]), tf.float32)
        replica = tf.distribute.get_replica_context()
        if replica is not None:  # the global batch's losses: every replica applies the same update
            losses = replica.all_reduce("mean", losses)
        w = apgda_step(self.domain_weights.value, losses, self.step, self.gamma)
        ctx.assign(self.domain_weights, w)
        self._track_weights(w)

    def evaluate(self, ctx):
        advs = self._craft(ctx, False, salt=20)
        logits = [ctx.net(a, training=False) for a in advs]
        for name, l in zip(self.names, logits):
            ctx.logits[f"adv_{name}"] = l
        worst, _ = _worst(ctx.y, logits)
        if self.weighting in ("max", "msd"):
            objective = ctx.loss_fn(worst)
        else:
            objective = tf.reduce_sum(self._weights() * tf.stack([ctx.loss_fn(l) for l in logits]))
        ctx.record("adv", worst, objective)
        self.track(ctx)
        self._track_threats(ctx)
        self._track_weights(self._weights())
        return self.weight * objective

    def get_config(self):
        return {"attacks": [attack_to_dict(a) for a in self.attacks], "weighting": self.weighting,
                "weight": self.weight, "gamma": self.gamma, "step": self.step, "bn_training": self.bn_training}
