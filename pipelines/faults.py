"""Deterministic crash points for resilience tests: the process SIGKILLs itself.

Set ATMC_FAULT to one point and the pipeline kills itself there, exactly like
an out-of-memory kill or a pulled plug (no cleanup handlers run):
    ATMC_FAULT=da:2:3       stage "da", epoch 2, after batch 3 (1-based)
    ATMC_FAULT=export       after the .tflite is written, before the checks
and, where a program goes on past a failure, raises there instead (raise_at):
    ATMC_FAULT=cell:ap@0.01 the benchmark's cell ap@0.01 raises RuntimeError when it starts
Unset (the normal case) nothing happens.
"""
import os
import signal

import keras

ENV = "ATMC_FAULT"


def point(name):
    """Kill the process if ATMC_FAULT names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def raise_at(name):
    """Raise RuntimeError if ATMC_FAULT names this point: a failure the program is meant to survive."""
    if os.environ.get(ENV) == name:
        raise RuntimeError(f"{ENV}={name}: injected failure")


class KillAt(keras.callbacks.Callback):
    """Kill during training stage `stage` at the epoch/batch ATMC_FAULT names."""

    def __init__(self, stage):
        super().__init__()
        parts = os.environ.get(ENV, "").split(":")
        self.at = (int(parts[1]), int(parts[2])) if len(parts) == 3 and parts[0] == stage else None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.at == (self.epoch, batch + 1):
            os.kill(os.getpid(), signal.SIGKILL)
