"""The loss on the clean batch (the natural term of the min-max objective)."""
from atmc_tf.training.terms.base import PredictionLoss


class CleanLoss(PredictionLoss):
    """weight * loss(y, net(x)). With weight 0 it is only measured: after the step, in
    inference mode (so BatchNorm statistics see adversarial batches only), unweighted."""

    kind = "clean"
    prediction = prefix = "clean"

    def __init__(self, weight=1.0):
        if not weight >= 0:
            raise ValueError(f"clean weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def loss(self, ctx):
        if self.weight == 0:
            return None
        logits = ctx.net(ctx.x, training=True)
        loss = ctx.loss_fn(logits, ctx.sample_weight)
        ctx.record("clean", logits, loss)
        return self.weight * loss

    def after_step(self, ctx):
        if "clean" not in ctx.logits:
            logits = ctx.net(ctx.x, training=False)
            ctx.record("clean", logits, ctx.loss_fn(logits))
        self.track(ctx)

    def evaluate(self, ctx):
        logits = ctx.net(ctx.x, training=False)
        ctx.record("clean", logits, ctx.loss_fn(logits))
        self.track(ctx)
        return self.weight * ctx.losses["clean"]

    def get_config(self):
        return {"weight": self.weight}
