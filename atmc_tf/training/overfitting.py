"""Catastrophic overfitting: a single-step adversarially trained model suddenly stops resisting PGD.

With FGSM training the PGD accuracy can fall from its best to near 0 within an epoch while the accuracy on
the training attack's own examples rises (Wong, Rice and Kolter 2020, section 5: they stop when PGD accuracy
on a training minibatch drops by more than 0.2 from one epoch to the next and keep the previous epoch's
weights). CatastrophicOverfittingGuard measures PGD robust accuracy on one fixed small batch every
`every_steps` batches (0: at each epoch's end) and, when it collapses (`collapsed`: below `fraction` of
the best value seen, once the best reached `min_best`), stops training, restores the weights it held at
the best check, logs ONE line and keeps the event in `.event` for a report. The restored weights were
taken after a projected optimizer step, so they satisfy every constraint; ATMCTrainer.fit still ends
with its hard projection.
"""
import logging

import keras
import numpy as np
import tensorflow as tf

_LOG = logging.getLogger(__name__)


def collapsed(accuracy, best, fraction=0.5, min_best=0.2):
    """True when `accuracy` fell below fraction * best, best being at least min_best (a best that never
    reached it, e.g. at chance early in training, has nothing to collapse from)."""
    return best >= min_best and accuracy < fraction * best


class CatastrophicOverfittingGuard(keras.callbacks.Callback):
    """Stop, restore the best weights and say so when PGD accuracy on (x, y) collapses.

    x, y: a fixed small validation batch (a few hundred examples keep a check cheap);
    attack: the measuring attack (a PGDConfig; any registered attack config works);
    every_steps: check every this many training batches, 0 at each epoch's end;
    fraction, min_best: the collapse rule (`collapsed`). The model checked is the trainer's `net`
    (ATMCTrainer) or the model itself; the weights restored are the trainer's (net and term state).
    """

    def __init__(self, x, y, attack, every_steps=0, fraction=0.5, min_best=0.2, batch_size=256):
        super().__init__()
        if int(every_steps) < 0:
            raise ValueError(f"every_steps must be >= 0, got {every_steps}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y).reshape(-1)
        self.attack, self.every_steps = attack, int(every_steps)
        self.fraction, self.min_best, self.batch_size = float(fraction), float(min_best), int(batch_size)
        self.best, self.best_at, self.history, self.event = -1.0, None, [], None
        self._best_weights, self._correct, self._epoch, self._seen = None, None, 0, 0

    def robust_accuracy(self):
        """PGD accuracy of the current weights on the check batch (one traced function, built once)."""
        if self._correct is None:
            net = getattr(self.model, "net", self.model)
            fn = lambda z: net(z, training=False)  # noqa: E731

            @tf.function(reduce_retracing=True)
            def correct(xb, yb):
                pred = tf.argmax(fn(self.attack.attack(fn, xb, yb, seed=tf.constant([0, 0], tf.int64))), -1,
                                 output_type=tf.int32)
                return tf.reduce_sum(tf.cast(pred == tf.cast(yb, tf.int32), tf.int32))

            self._correct = correct
        hits = sum(int(self._correct(tf.constant(self.x[i:i + self.batch_size]),
                                     tf.constant(self.y[i:i + self.batch_size])))
                   for i in range(0, len(self.y), self.batch_size))
        return hits / max(len(self.y), 1)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self.every_steps and self._seen % self.every_steps == 0:
            self._check(f"epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if not self.every_steps and self.event is None:
            self._check(f"epoch {epoch + 1}")

    def _check(self, where):
        if self.event is not None:
            return
        acc = self.robust_accuracy()
        self.history.append((where, acc))
        if acc > self.best:
            self.best, self.best_at, self._best_weights = acc, where, self.model.get_weights()
        elif collapsed(acc, self.best, self.fraction, self.min_best):
            self.model.set_weights(self._best_weights)
            self.model.stop_training = True
            self.event = {"at": where, "accuracy": acc, "best": self.best, "best_at": self.best_at,
                          "checked_examples": len(self.y), "fraction": self.fraction}
            _LOG.warning(self.line())

    def line(self):
        """The one line that says what happened (None before a collapse)."""
        e = self.event
        if e is None:
            return None
        return (f"catastrophic overfitting at {e['at']}: PGD accuracy on {e['checked_examples']} check examples "
                f"fell to {e['accuracy']:.1%} (< {e['fraction']:g} x the best {e['best']:.1%} at {e['best_at']}); "
                f"training stopped and the weights of {e['best_at']} restored")
