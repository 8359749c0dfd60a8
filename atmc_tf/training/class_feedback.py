"""The Keras callback that feeds per-class robust error on the validation split back into the class
weights of terms.ClassBalancedAdversarialLoss, once per epoch (FRL's loop: measure on validation,
update the multipliers, train the next epoch; see the term's module for the rule).

When: at the end of every epoch, from the model that epoch left, for the next epoch; and once at the
first epoch of a fresh run (the term's update count is 0), so a warm-started model's first epoch is
already balanced, as FRL's first epoch is. A resumed run finds the count and the weights in the
checkpoint and does not measure again. The update runs before the epoch's checkpoint is written
(ATMCTrainer.fit puts this callback before the user's), so the checkpoint holds the weights the
next epoch trains with.

The attack's random starts come from a stateless seed of (seed, epoch, batch), so every worker of a
distributed run computes the same errors and sets the same weights, and a resumed run the ones an
uninterrupted one would have set.

Logs per epoch (so History, ResumableCheckpoint's history and TensorBoard carry them):
class_weight_<c>, feedback_robust_acc_<c> (robust accuracy of class c on the validation split),
feedback_worst_class and feedback_worst_robust_acc.
"""
import keras
import numpy as np

from atmc_tf.attacks import correct_under_attack, per_class_accuracy


class ClassFeedback(keras.callbacks.Callback):
    """Sets the class weights of the trainer's ClassBalancedAdversarialLoss from per-class robust error
    on (x_val, y_val), under `attack` (default: the term's training attack, or for a fast one the PGD its
    validation_attack names)."""

    def __init__(self, x_val, y_val, attack=None, batch_size=256, seed=0):
        super().__init__()
        self.x_val, self.y_val = np.asarray(x_val), np.asarray(y_val).reshape(-1)
        if len(self.y_val) == 0:
            raise ValueError("class feedback needs a non-empty validation split")
        self.attack, self.batch_size, self.seed = attack, int(batch_size), int(seed)
        self.last = None  # {"robust_acc": per-class array, "weights": per-class array} of the last update

    def _term(self):
        from atmc_tf.training.terms.class_feedback import ClassBalancedAdversarialLoss
        terms = [t for t in getattr(self.model, "terms", []) if isinstance(t, ClassBalancedAdversarialLoss)]
        if len(terms) != 1:
            raise ValueError("ClassFeedback needs an ATMCTrainer with one ClassBalancedAdversarialLoss term "
                             f"(ATMCConfig(class_feedback=...)), found {len(terms)}")
        return terms[0]

    def measure(self, epoch):
        """Per-class robust accuracy of the trainer's net on the validation split (NaN: class absent)."""
        term = self._term()
        net = self.model.net
        correct = correct_under_attack(lambda z: net(z, training=False), self.x_val, self.y_val,
                                       self.attack or getattr(term.attack, "validation_attack", term.attack), self.batch_size,
                                       seed=self.seed * 1_000_003 + int(epoch))
        return per_class_accuracy(correct, self.y_val, term.num_classes)

    def update(self, epoch):
        acc = self.measure(epoch)
        weights = self._term().set_from_errors(1.0 - acc)
        self.last = {"robust_acc": acc, "weights": weights}
        return acc, weights

    def on_epoch_begin(self, epoch, logs=None):
        if int(self._term().updates.numpy()) == 0:
            self.update(epoch - 1)

    def on_epoch_end(self, epoch, logs=None):
        acc, weights = self.update(epoch)
        if logs is not None:
            logs.update(feedback_logs(acc, weights))


def feedback_logs(robust_acc, weights=None):
    """The per-epoch log entries of one measurement (see the module)."""
    out = {}
    if weights is not None:
        out.update({f"class_weight_{c}": float(w) for c, w in enumerate(weights)})
    out.update({f"feedback_robust_acc_{c}": float(a) for c, a in enumerate(robust_acc)})
    worst = int(np.nanargmin(robust_acc)) if np.isfinite(robust_acc).any() else -1
    out["feedback_worst_class"] = float(worst)
    out["feedback_worst_robust_acc"] = float(robust_acc[worst]) if worst >= 0 else float("nan")
    return out
