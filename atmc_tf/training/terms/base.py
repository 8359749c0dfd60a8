"""The interface every loss term of the training objective implements, and the step context.

One training step of ATMCTrainer, for terms T and constraints C:

    for t in T: t.prepare(ctx)                # outside the tape: craft adversarial inputs, ...
    with tape: loss = ctx.term_scale * sum(t.loss(ctx)) + sum(c.penalty) + net.losses
    optimizer step; constraints project       # cross-replica; ctx.input_grads: d loss / d watched inputs
    for t in T: t.after_step(ctx)             # update a multiplier, measure what was skipped, ...

In evaluation (test_step) each term's evaluate(ctx) gives its contribution to the
logged loss. A term creates its state (a multiplier, domain weights, class weights)
in build(trainer) with trainer.add_weight, so it is checkpointed by BackupAndRestore
and mirrored under tf.distribute, and updates it in after_step through ctx.assign.
A new term is a new module with a LossTerm subclass plus one entry in registry.py.
"""
import keras
import tensorflow as tf

from atmc_tf.components import Component


class StepContext:
    """What one step knows: the batch, the net, the loss function, and what terms computed.

    inputs["clean"] is the batch; a term may add crafted batches (inputs["adv"]).
    logits[name] / losses[name]: the predictions on inputs[name] and their (unweighted) loss,
    filled by the terms that compute them; the trainer updates compile(metrics=...) from them.
    """

    def __init__(self, trainer, x, y, sample_weight=None, training=True):
        self.trainer, self.net = trainer, trainer.net
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.training = training
        self.inputs = {"clean": x}
        self.logits, self.losses = {}, {}
        self.watched, self.input_grads = {}, {}
        # A factor on the sum of the terms' losses (not on the constraints' penalties nor net.losses): 1, or
        # what a term that normalises the objective sets in loss() / evaluate() (CleanTarget: the Lagrangian
        # divided by its total weight, so a large multiplier cannot scale the optimizer's step with it).
        self.term_scale = 1.0

    def watch(self, name, tensor):
        """Ask the step for the gradient of its (scaled) loss with respect to `tensor`, an input a term crafted in
        prepare(): computed in the same backward pass as the weights' gradients, in ctx.input_grads[name] by
        after_step (free adversarial training's perturbation update). Scaled: only its direction is exact."""
        self.watched[name] = tensor

    def seed(self, salt=0):
        """A stateless seed (shape [2] int64) for this step's randomness: a function of the
        trainer's checkpointed seed, the optimizer's step count, the replica and `salt` (one per
        use) alone, so a resumed run draws what an uninterrupted one would have drawn."""
        trainer = self.trainer
        step = tf.cast(trainer.optimizer.iterations, tf.int64)
        base = tf.stack([tf.cast(trainer._rng_seed, tf.int64), step])
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        return tf.random.experimental.stateless_fold_in(base, tf.cast(replica_id, tf.int64) * 1000 + salt)

    def loss_fn(self, logits, sample_weight=None):
        """The compiled loss (compile(loss=...); default softmax cross-entropy on logits), in float32."""
        return self.trainer.compute_term_loss(self.y, tf.cast(logits, tf.float32), sample_weight)

    def record(self, name, logits, loss):
        self.logits[name], self.losses[name] = logits, loss

    def assign(self, variable, value):
        """Write a term's state variable on every replica (call it from after_step)."""
        self.trainer.assign_state(variable, value)


class LossTerm(Component):
    """Base class: a term that contributes nothing. `kind` is its name in registry.TERMS;
    get_config() its constructor's arguments. `adv_user_metrics`: the trainer also computes
    compile(metrics=...) on ctx.logits["adv"] (as adv_<name>), which the term records every step."""

    adv_user_metrics = False

    def build(self, trainer):
        """Create state (trainer.add_weight) and metrics; called once by the trainer, in its strategy scope."""

    @property
    def metrics(self):
        return []

    def prepare(self, ctx):
        """Before the gradient tape: craft inputs (ctx.inputs) the term's loss needs."""

    def loss(self, ctx):
        """The weighted contribution to the training loss (inside the tape), or None."""
        return None

    def after_step(self, ctx):
        """After the optimizer step and the projections: update state (ctx.assign), track metrics."""

    def evaluate(self, ctx):
        """The weighted contribution to the evaluation loss (test_step), or None."""
        return None

    def fit_callbacks(self, trainer, callbacks, fit_kwargs):
        """Callbacks the term needs in fit() (e.g. one that updates its state from a validation split once
        per epoch), given the user's `callbacks` and fit's keyword arguments: (callbacks to run before the
        user's, in that order; the user's callbacks, minus any taken into the first list)."""
        return [], callbacks


class PredictionLoss(LossTerm):
    """A term whose loss is on the net's predictions for one input batch (ctx.inputs[prediction]):
    it logs <prefix>_loss and <prefix>_acc from what it recorded in ctx."""

    prediction = "clean"
    prefix = "clean"

    def build(self, trainer):
        self.loss_tracker = keras.metrics.Mean(name=f"{self.prefix}_loss")
        self.acc_tracker = keras.metrics.SparseCategoricalAccuracy(name=f"{self.prefix}_acc")

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker]

    def track(self, ctx):
        self.loss_tracker.update_state(ctx.losses[self.prediction])
        self.acc_tracker.update_state(ctx.y, ctx.logits[self.prediction])
