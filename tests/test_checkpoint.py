"""ResumableCheckpoint: a resumed fit equals an uninterrupted one (weights and every epoch's logs),
a kill at any file operation of a save leaves an intact checkpoint, a full disk leaves the previous
one and one clear error, and the checkpoint outlives fit() until delete()."""
import errno
import os
import shutil

import keras
import numpy as np
import pytest

from atmc_tf.attacks import PGDConfig
from atmc_tf.checkpoint_files import CheckpointError, find_checkpoint, is_previous
from atmc_tf.layers import wrap_model
from atmc_tf.training import ATMCTrainer, method_config
from atmc_tf.training import checkpoint as ckpt
from atmc_tf.training.checkpoint import CheckpointWriteError, ResumableCheckpoint
from atmc_tf.training.data_order import resumable_batches
from conftest import Interrupt, interrupt_at, mobilenet_v2_style


def _trainer(seed=0):
    """A model the project never saw (BatchNorm, Dropout, Add skip), AL0 + PGD adversarial training."""
    keras.utils.set_random_seed(seed)
    net = wrap_model(mobilenet_v2_style(seed))
    config = method_config("al0", attack=PGDConfig(eps=0.1, steps=2), nnz_budget=2000)
    trainer = ATMCTrainer(net, config)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return trainer


def _fit(trainer, data, directory, epochs, first_epoch=0, callbacks=()):
    x, y, xv, yv = data
    checkpoint = ResumableCheckpoint(directory)
    batches, steps = resumable_batches(x, y, 64, seed=5, first_epoch=first_epoch)
    trainer.fit(batches, steps_per_epoch=steps, epochs=epochs, shuffle=False, validation_data=(xv, yv),
                callbacks=[checkpoint, *callbacks], verbose=0)
    return checkpoint


@pytest.fixture(scope="module")
def data(digits):
    x, y, xt, yt = digits
    return x[:192], y[:192], xt[:64], yt[:64]


def test_a_resumed_fit_equals_an_uninterrupted_one(tmp_path, data):
    whole = _trainer()
    done = _fit(whole, data, tmp_path / "whole", epochs=3)

    first = _trainer()
    with pytest.raises(Interrupt):
        _fit(first, data, tmp_path / "cut", epochs=3, callbacks=[interrupt_at(2)])
    assert find_checkpoint(str(tmp_path / "cut"))[1]["epoch"] == 2
    # A new process: the model built again from scratch, the data order from the checkpoint's epoch.
    again = _trainer()
    resumed = _fit(again, data, tmp_path / "cut", epochs=3, first_epoch=2)

    assert resumed.resumed_from == 2
    for a, b in zip(whole.net.weights, again.net.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert resumed.history == done.history  # every epoch's logs, the two before the cut included
    assert len(resumed.history["loss"]) == 3
    # the checkpoint outlives fit(): the owner deletes it once the result is saved
    assert find_checkpoint(str(tmp_path / "cut"))[1]["epoch"] == 3
    resumed.delete()
    assert not (tmp_path / "cut").exists()


def test_resumable_batches_order_depends_on_seed_and_epoch_only():
    x = np.arange(20, dtype="float32")[:, None]
    y = np.arange(20)
    full, steps = resumable_batches(x, y, 8, seed=1)
    order = [b[1].numpy().tolist() for b in full.take(3 * steps)]
    later, _ = resumable_batches(x, y, 8, seed=1, first_epoch=2)
    assert [b[1].numpy().tolist() for b in later.take(steps)] == order[2 * steps:]
    epochs = [sum(order[e * steps:(e + 1) * steps], []) for e in range(3)]
    assert all(sorted(e) == list(range(20)) for e in epochs)  # each epoch: every example once
    assert epochs[0] != epochs[1]  # reshuffled
    other, _ = resumable_batches(x, y, 8, seed=2)
    assert [b[1].numpy().tolist() for b in other.take(steps)] != order[:steps]


def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    i = keras.Input((4,))
    model = keras.Model(i, keras.layers.Dense(3)(i))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def _tiny_fit(model, directory, epochs, callbacks=()):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    cb = ResumableCheckpoint(str(directory))
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[cb, *callbacks])
    return cb


def test_a_kill_at_any_file_operation_of_a_save_leaves_an_intact_checkpoint(tmp_path, monkeypatch):
    """Every os.replace of the third epoch's save is a point where a kill can land: interrupt at
    each one, and the folder still holds epoch 2 or epoch 3, its weights matching its digest."""
    base = tmp_path / "base"
    _tiny_fit(_tiny(), base, epochs=2)
    real_replace = os.replace
    seen = set()
    for k in range(10):
        d = tmp_path / f"kill{k}"
        shutil.copytree(base, d)
        calls = []

        def replace(src, dst, calls=calls, k=k):
            if len(calls) == k:
                raise KeyboardInterrupt("killed")
            calls.append(dst)
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        model = _tiny()
        try:
            _tiny_fit(model, d, epochs=3)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        weights, meta = find_checkpoint(str(d))
        assert meta["epoch"] in (2, 3)
        seen.add(meta["epoch"])
        assert not [n for n in os.listdir(d) if ".tmp" in n], os.listdir(d)
        _tiny().load_weights(weights)  # loads: an intact file
        if finished:
            break
    assert seen == {2, 3} and finished, "the kills must cover the whole save, up to its end"


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    d = tmp_path / "ckpt"
    model = _tiny()
    _tiny_fit(model, d, epochs=1)
    before = find_checkpoint(str(d))

    def full(self, filepath, overwrite=True, **kw):
        with open(filepath, "wb") as fh:
            fh.write(b"\x89HDF\r\n")  # the start of a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", filepath)

    monkeypatch.setattr(keras.Model, "save_weights", full)
    with pytest.raises(CheckpointWriteError) as err:
        _tiny_fit(model, d, epochs=2)
    line = str(err.value)
    assert "\n" not in line and str(d) in line and "No space left on device" in line
    assert "MB needed" in line and "run the same command again" in line
    assert find_checkpoint(str(d)) == before  # the previous epoch, intact
    assert not [n for n in os.listdir(d) if ".tmp" in n]


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    d = tmp_path / "ckpt"
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        _tiny_fit(_tiny(), d, epochs=1)
    assert not d.exists() or not os.listdir(d)


def test_damaged_copies_are_refused_and_a_damaged_latest_falls_back(tmp_path):
    d = tmp_path / "ckpt"
    _tiny_fit(_tiny(), d, epochs=2)
    latest = d / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:500])  # truncated
    weights, meta = find_checkpoint(str(d))
    assert is_previous(weights) and meta["epoch"] == 1
    resumed = _tiny_fit(_tiny(), d, epochs=2)
    assert resumed.resumed_from == 1
    for name in os.listdir(d):
        if name.endswith(".h5"):
            (d / name).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no intact epoch checkpoint"):
        find_checkpoint(str(d))
    assert find_checkpoint(str(tmp_path / "nothing")) is None
