"""Callbacks the trainer relies on (everything else is Keras' own)."""
import math

import keras


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint was left in place."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise TrainingDivergedError at the first batch whose loss is NaN/Inf.

    It raises instead of setting stop_training (as keras.callbacks.TerminateOnNaN
    does) because Keras still ends the epoch after stop_training, and
    BackupAndRestore would then overwrite the last good checkpoint with the
    diverged weights. Raising skips on_epoch_end and on_train_end entirely.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDivergedError(
                f"loss became {float(loss)} at epoch {getattr(self, '_epoch', 0) + 1}, batch {batch + 1}; "
                "training stopped and the last good checkpoint was kept; lower the learning rate "
                "or rho and run again")
