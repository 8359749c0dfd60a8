"""Callbacks the trainer relies on (everything else is Keras' own)."""
import math

import keras


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint was left in place."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first batch whose loss is NaN/Inf and remember where.

    Unlike keras.callbacks.TerminateOnNaN it lets ATMCTrainer.fit raise a clear
    TrainingDivergedError, and because training stops before the next epoch end,
    BackupAndRestore's last checkpoint (the last good epoch) is never overwritten.
    """

    def __init__(self):
        super().__init__()
        self.where = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (getattr(self, "_epoch", 0), batch, float(loss))
            self.model.stop_training = True
