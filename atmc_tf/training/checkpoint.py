"""Epoch checkpoints that survive a kill at any moment, a full disk, and a resume.

`ResumableCheckpoint` is keras.callbacks.BackupAndRestore (same folder layout, same
contract: fit() restores the last finished epoch and continues from there) with what
Keras' own lacks:

- every file is written atomically (atomic_path: a temporary name, fsync, rename), so a
  kill, a SIGINT or a full disk in the middle of a save never leaves a half-written file
  under a checkpoint's name; Keras writes `latest.weights.h5` in place;
- the metadata names the SHA-256 of the weights it belongs to, and the previous epoch's
  pair is kept as `previous.*` (moved, not copied); on restore the newest pair whose digest
  matches wins, so a kill between the renames still finds a consistent epoch;
- free space is checked before writing (h5py can crash the process on ENOSPC) and a
  failed write raises CheckpointWriteError, one line naming the path and the space needed;
  the last good checkpoint is untouched and the next run resumes from it;
- the checkpoint keeps the full per-epoch history (logs of every finished epoch, over all
  runs) and the training seconds of the finished epochs;
- it is NOT deleted when fit() ends: the owner calls delete() after it has saved the
  stage's result, so a kill during that save still resumes (with nothing left to train).
"""
import contextlib
import json
import logging
import os
import shutil
import time

import keras
import numpy as np

from atmc_tf.checkpoint_files import (METADATA, PREVIOUS_METADATA, PREVIOUS_WEIGHTS, WEIGHTS, CheckpointError,
                                      find_checkpoint, is_previous, remove_temporaries, sha256)
from atmc_tf.export import atomic

_LOG = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """Writing an epoch checkpoint failed (disk full, read-only, ...); the previous one is intact."""


def _space_needed(model, previous):
    """Bytes a new checkpoint takes, with headroom: the previous file's size, else the variables'."""
    if previous and os.path.exists(previous):
        size = os.path.getsize(previous)
    else:
        size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.variables)
        if model.optimizer is not None:
            size += sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.optimizer.variables)
    return int(size * 1.25) + (1 << 20)


class ResumableCheckpoint(keras.callbacks.BackupAndRestore):
    """BackupAndRestore with atomic, verified files, full history, and an explicit delete().

    After fit(): `history` maps each logged name to its value per finished epoch, over every
    run of this training (a resumed run included); `seconds` is the training wall time of the
    finished epochs, over every run; `resumed_from` is the epoch restored (0: a fresh start).
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False, double_checkpoint=True)
        self.history, self.seconds, self.resumed_from = {}, 0.0, 0
        self._earlier = 0.0

    # --- restore ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(f"{type(self).__name__} needs a built model before fit()")
        remove_temporaries(self.backup_dir)
        found = find_checkpoint(self.backup_dir)
        if found is not None:
            weights, meta = found
            if is_previous(weights):
                _LOG.warning("%s: the latest epoch checkpoint is incomplete; resuming from the previous "
                             "epoch's checkpoint (epoch %d)", self.backup_dir, meta["epoch"])
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(weights)
            _restore_rng_states(self.model, meta.get("rng_states", []))
            self.model._initial_epoch = meta["epoch"]
            self.resumed_from = meta["epoch"]
            self.history = {k: list(v) for k, v in meta.get("history", {}).items()}
            self._earlier = float(meta.get("seconds", 0.0))
        self.seconds = self._earlier
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.seconds = self._earlier + time.time() - self._t0
        super().on_epoch_end(epoch, logs)

    # --- save ---------------------------------------------------------------------
    def _save_model(self):
        d = self.backup_dir
        weights, meta = os.path.join(d, WEIGHTS), os.path.join(d, METADATA)
        try:
            os.makedirs(d, exist_ok=True)
            # While the new file is written, the latest and the previous pair still stand.
            need = _space_needed(self.model, weights)
            free = shutil.disk_usage(d).free
            if free < need:
                raise OSError(28, "No space left on device (checked before writing)")
            previous = None
            with atomic.atomic_path(weights, ".tmp.weights.h5") as tmp:
                self.model.save_weights(tmp, overwrite=True)
                digest = sha256(tmp)
                record = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights_sha256": digest,
                          "history": self.history, "seconds": self.seconds,
                          "rng_states": [[int(i) for i in np.asarray(v.numpy()).reshape(-1)]
                                         for v in _rng_states(self.model)]}
                # The previous pair becomes previous.* (renames: nothing is copied, nothing is half there).
                with contextlib.suppress(CheckpointError):
                    previous = find_checkpoint(d)
                if previous is not None and not is_previous(previous[0]):
                    for f, old in ((weights, PREVIOUS_WEIGHTS), (meta, PREVIOUS_METADATA)):
                        if os.path.exists(f):
                            os.replace(f, os.path.join(d, old))
            atomic.write_text_atomic(meta, json.dumps(record, sort_keys=True))
        except OSError as err:
            remove_temporaries(d)
            raise CheckpointWriteError(_write_failure(d, weights, err, self.model)) from None

    def delete(self):
        """Remove the checkpoint folder; call it once the training's result is saved."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _rng_states(model):
    """The state variables of the model's random generators (Dropout's, GaussianNoise's, ...): they are
    in model.variables but not in save_weights' file, so the checkpoint's metadata keeps them."""
    return [v for v in model.variables if v.path.split("/")[-1] == "seed_generator_state"]


def _restore_rng_states(model, states):
    variables = _rng_states(model)
    if len(states) != len(variables):
        raise CheckpointError(f"the checkpoint holds {len(states)} random generator states, the model has "
                              f"{len(variables)}: it was written for another model")
    for var, values in zip(variables, states):
        var.assign(np.asarray(values, dtype=var.dtype).reshape(var.shape))


def _write_failure(directory, weights, err, model):
    """One line: which checkpoint could not be written, why, and the space it needs."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    need = _space_needed(model, weights)
    space = f"; about {need / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free there" if free is not None else ""
    reason = err.strerror or str(err)
    return (f"could not write the epoch checkpoint in {directory} ({reason}){space}; the previous checkpoint is "
            "intact: make room (or fix the permissions) and run the same command again to resume")
