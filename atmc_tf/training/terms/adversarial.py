"""The loss on adversarial examples of the batch (the inner max of the min-max objective)."""
from atmc_tf.attacks import attack_from_dict, attack_to_dict
from atmc_tf.training.terms.base import PredictionLoss


class AdversarialLoss(PredictionLoss):
    """weight * loss(y, net(attack(x))). The attack runs before the gradient tape, on the net in
    inference mode unless bn_training (then BatchNorm uses, and updates from, the batch). Validation
    (evaluate) attacks with attack.validation_attack where the attack names one (a training-only attack)."""

    kind = "adversarial"
    prediction = prefix = "adv"
    adv_user_metrics = True

    def __init__(self, attack, weight=0.5, bn_training=False):
        if isinstance(attack, dict):
            attack = attack_from_dict(attack)
        if not weight >= 0:
            raise ValueError(f"adversarial weight must be >= 0, got {weight}")
        self.attack, self.weight, self.bn_training = attack, float(weight), bool(bn_training)

    def prepare(self, ctx):
        ctx.inputs["adv"] = self.attack.attack(lambda z: ctx.net(z, training=self.bn_training), ctx.x, ctx.y,
                                               seed=ctx.seed(1))

    def loss(self, ctx):
        logits = ctx.net(ctx.inputs["adv"], training=True)
        loss = ctx.loss_fn(logits, ctx.sample_weight)
        ctx.record("adv", logits, loss)
        return self.weight * loss

    def after_step(self, ctx):
        self.track(ctx)

    def evaluate(self, ctx):
        # A training-only attack (FGSM-RS, N-FGSM) is validated with the PGD it names, never with itself.
        attack = getattr(self.attack, "validation_attack", self.attack)
        x_adv = attack.attack(lambda z: ctx.net(z, training=False), ctx.x, ctx.y, seed=ctx.seed(2))
        logits = ctx.net(x_adv, training=False)
        ctx.record("adv", logits, ctx.loss_fn(logits))
        self.track(ctx)
        return self.weight * ctx.losses["adv"]

    def get_config(self):
        return {"attack": attack_to_dict(self.attack), "weight": self.weight, "bn_training": self.bn_training}
