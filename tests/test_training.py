"""ATMCTrainer under plain model.fit: constraints hold exactly, baselines are modes, strategies work."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from atmc_tf.attacks import PGDConfig, robust_accuracy
from atmc_tf.constraints import num_levels
from atmc_tf.layers import atmc_wrappers, strip_model, wrap_model
from atmc_tf.training import (ATMCConfig, ATMCTrainer, METHODS, dense_weight_count, method_config, model_size,
                              wrap_for_method)
from conftest import small_cnn

ATTACK = PGDConfig(eps=0.1, steps=3)


@pytest.fixture(scope="module")
def da_model(digits):
    """A dense adversarially trained small CNN (the warm start of every method)."""
    x_tr, y_tr, _, _ = digits
    plain = small_cnn()
    trainer = ATMCTrainer(wrap_model(plain), method_config("da", attack=ATTACK))
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    trainer.fit(x_tr, y_tr, epochs=6, batch_size=64, verbose=0)
    return strip_model(trainer.net)


def _levels(net, scheme):
    return [int(num_levels(v.value, scheme, w.channel_axes))
            for w in atmc_wrappers(net) for v in w.compressed_variables]


def _nnz(net):
    return sum(int(np.count_nonzero(v.numpy())) for w in atmc_wrappers(net) for v in w.compressed_variables)


@pytest.mark.slow
def test_atmc_fit_on_digits_satisfies_constraints_and_learns(digits, da_model, tmp_path):
    x_tr, y_tr, x_te, y_te = digits
    budget = dense_weight_count(da_model) // 10
    cfg = method_config("atmc", attack=ATTACK, nnz_budget=budget, bits=4, quant_scheme="codebook_int8")
    net = wrap_model(da_model)
    trainer = ATMCTrainer(net, cfg)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    log = tmp_path / "log.csv"
    hist = trainer.fit(x_tr, y_tr, epochs=6, batch_size=64, verbose=0, validation_data=(x_te, y_te),
                       callbacks=[keras.callbacks.CSVLogger(str(log))])
    assert _nnz(net) <= budget
    assert max(_levels(net, "codebook_int8")) <= 16
    for key in ("adv_acc", "clean_acc", "nnz", "budget", "w_z_dist", "val_adv_acc", "val_clean_acc"):
        assert key in hist.history, key
    assert hist.history["budget"][-1] == budget and log.read_text().count("\n") == 7
    clean = robust_accuracy(lambda z: net(z, training=False), x_te, y_te, PGDConfig(eps=0.0))
    robust = robust_accuracy(lambda z: net(z, training=False), x_te, y_te, PGDConfig(eps=0.1, steps=10))
    assert clean > 0.6, clean  # chance is 0.1
    assert robust < clean


@pytest.mark.parametrize("method,bits,scheme", [
    ("natural", None, None), ("da", None, None), ("nap", None, None), ("ap", None, None),
    ("al0", None, None), ("alr", None, None), ("atmc", None, None),
    ("atmc", 2, "codebook"), ("atmc", 3, "codebook_int8"), ("atmc", 4, "uniform_int8")])
def test_every_method_keeps_its_constraints(digits, da_model, method, bits, scheme):
    x_tr, y_tr, _, _ = digits
    n = dense_weight_count(da_model)
    budget = n // 8
    extra = {"quant_scheme": scheme, "quant_interval": 2} if bits else {}
    cfg = method_config(method, attack=ATTACK, nnz_budget=budget, bits=bits, **extra)
    net = wrap_for_method(da_model, cfg, param_budget=budget)
    trainer = ATMCTrainer(net, cfg)
    trainer.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9))
    trainer.prepare_constraints()
    support = [v.numpy() != 0 for w in atmc_wrappers(net) for v in w.compressed_variables]
    trainer.fit(x_tr[:256], y_tr[:256], epochs=1, batch_size=64, verbose=0)
    after = [v.numpy() != 0 for w in atmc_wrappers(net) for v in w.compressed_variables]
    if cfg.sparsity != "none":
        assert _nnz(net) <= budget
    if cfg.sparsity == "fixed":
        assert all(np.all(a <= s) for a, s in zip(after, support)), "support must not grow"
    if method == "alr":
        assert sum(w.rank * sum(w._matrix_shape) for w in atmc_wrappers(net)) <= max(budget, 0) + \
            sum(sum(w._matrix_shape) for w in atmc_wrappers(net))
    if bits:
        assert max(_levels(net, scheme)) <= 2 ** bits - 1  # zero counts among the 2^b values
    if method in ("natural", "nap"):
        assert cfg.attack is None
    assert method in METHODS


def test_ste_quantization_holds_the_set_after_every_step_inside_a_fixed_support(digits, da_model):
    """quant_method="ste" (the pipeline's --ste_epochs stage): the kernels satisfy the 2-bit set after every
    batch, not only when fit ends, and the support a fixed-support constraint chose never grows."""
    import dataclasses
    x_tr, y_tr, _, _ = digits
    budget = dense_weight_count(da_model) // 8
    cfg = dataclasses.replace(method_config("atmc", attack=ATTACK, nnz_budget=budget, bits=2),
                              quant_method="ste", sparsity="fixed")
    net = wrap_for_method(da_model, cfg)
    trainer = ATMCTrainer(net, cfg)
    assert [c.kind for c in trainer.constraints] == ["fixed_support", "quantize_ste"]
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.prepare_constraints()
    support = [v.numpy() != 0 for w in atmc_wrappers(net) for v in w.compressed_variables]
    seen = []
    check = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(
        (max(_levels(net, "codebook_int8")), _nnz(net))))
    hist = trainer.fit(x_tr[:256], y_tr[:256], epochs=1, batch_size=64, verbose=0, callbacks=[check])
    assert len(seen) == 4 and all(levels <= 3 and nnz <= budget for levels, nnz in seen), seen
    after = [v.numpy() != 0 for w in atmc_wrappers(net) for v in w.compressed_variables]
    assert all(np.all(a <= s) for a, s in zip(after, support)), "support must not grow"
    assert "shadow_dist" in hist.history and "w_z_dist" not in hist.history


def test_trainer_config_round_trip(da_model):
    cfg = method_config("atmc", attack=ATTACK, nnz_budget=100, bits=3, rho=0.2, quant_interval=7)
    trainer = ATMCTrainer(wrap_model(da_model), cfg)
    again = ATMCTrainer.from_config(trainer.get_config())
    assert again.config == cfg and again.config.method == "atmc"
    assert [repr(c) for c in again.constraints] == [repr(c) for c in trainer.constraints]
    assert ATMCConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.zero_in_levels and trainer.constraints[-1].zero_in_levels
    older = {k: v for k, v in cfg.to_dict().items() if k != "zero_in_levels"}  # saved before the field
    assert ATMCConfig.from_dict(older).zero_in_levels is False


@pytest.mark.parametrize("bad", [dict(sparsity="dynamic"), dict(bits=0), dict(bits=9),
                                 dict(sparsity="weird", nnz_budget=3), dict(quant_interval=0, bits=2),
                                 dict(bits=1, quant_scheme="uniform_int8"), dict(bits=1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ATMCConfig(**bad)


def test_constraints_need_a_wrapped_model(da_model):
    with pytest.raises(ValueError, match="wrap_model"):
        ATMCTrainer(da_model, method_config("atmc", attack=ATTACK, nnz_budget=10, bits=2))


@pytest.mark.slow
def test_mirrored_strategy_two_cpus_keeps_constraints():
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.join(here, "strategy_run.py")], capture_output=True,
                         text=True, timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    r = json.loads(line[0][7:])
    assert r["replicas"] == 2
    assert r["replicas_identical"]
    assert r["term_state"] == [16.0, 16.0]  # a term's state: 2 epochs x 8 steps, the same on both replicas
    assert r["nnz"] <= r["budget"]
    assert max(t["levels"] for t in r["tensors"]) <= 8


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(digits, da_model, tmp_path):
    from atmc_tf.training import TrainingDivergedError
    x_tr, y_tr, _, _ = digits
    trainer = ATMCTrainer(wrap_model(da_model), method_config("da", attack=ATTACK))
    trainer.compile(optimizer=keras.optimizers.SGD(0.01))
    backup = tmp_path / "backup"
    trainer.fit(x_tr[:128], y_tr[:128], epochs=1, batch_size=64, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)])
    saved = {p.name: p.read_bytes() for p in backup.rglob("*") if p.is_file()}
    assert saved, "the first fit must leave a checkpoint"
    good = [v.numpy().copy() for v in trainer.net.weights]
    last = atmc_wrappers(trainer.net)[-1].layer

    class Diverge(keras.callbacks.Callback):
        """Simulates a blow-up in the middle of epoch 2 (after BackupAndRestore restored)."""

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                last.bias.assign(np.full(last.bias.shape, np.nan, np.float32))

    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2, batch 3"):
        trainer.fit(x_tr[:512], y_tr[:512], epochs=3, batch_size=64, verbose=0,
                    callbacks=[keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False),
                               Diverge()])
    assert {p.name: p.read_bytes() for p in backup.rglob("*") if p.is_file()} == saved
    assert len(good) == len(trainer.net.weights)


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiworker_two_processes_end_identical_and_constrained():
    """Two MultiWorkerMirroredStrategy workers on 127.0.0.1 (TF_CONFIG), a few steps of ATMC-b."""
    here = os.path.dirname(os.path.abspath(__file__))
    ports = [str(_free_port()), str(_free_port())]
    procs = [subprocess.Popen([sys.executable, os.path.join(here, "strategy_run.py"), "multiworker",
                               str(i), *ports], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=600)
        finally:
            if p.poll() is None:
                p.kill()
        line = [l for l in out.splitlines() if l.startswith("RESULT ")]
        assert line, err[-3000:]
        outs.append(json.loads(line[0][7:]))
    a, b = outs
    assert a["replicas"] == b["replicas"] == 2
    assert a["weights_sha256"] == b["weights_sha256"], "workers must end with identical weights"
    for r in outs:
        assert r["term_state"] == [16.0]  # a term's state, updated in cross-replica context on each worker
        assert r["nnz"] <= r["budget"]
        assert max(t["levels"] for t in r["tensors"]) <= 8


@pytest.mark.parametrize("factorization,bits", [("abc", None), pytest.param("abc", 3, marks=pytest.mark.slow),
                                                ("lowrank", None), pytest.param("lowrank", 2, marks=pytest.mark.slow)])
def test_atmc_with_factorized_kernels(digits, da_model, factorization, bits):
    """W = B(A+I)+C (the reference's form) and W = UV+C: the budget covers every factor."""
    x_tr, y_tr, _, _ = digits
    budget = dense_weight_count(da_model) // 6
    cfg = method_config("atmc", attack=ATTACK, nnz_budget=budget, bits=bits, quant_scheme="codebook")
    net = wrap_model(da_model, factorization=factorization, ranks=4)
    trainer = ATMCTrainer(net, cfg)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(x_tr[:256], y_tr[:256], epochs=1, batch_size=64, verbose=0)
    factors = [v for w in atmc_wrappers(net) for v in w.compressed_variables]
    assert len(factors) == 3 * len(atmc_wrappers(net))  # A, B, C or U, V, C per layer
    assert _nnz(net) <= budget
    if bits:
        assert max(_levels(net, "codebook")) <= 2 ** bits - 1
    x = x_tr[:32]
    plain = strip_model(net)
    np.testing.assert_allclose(plain(x).numpy(), net(x, training=False).numpy(), rtol=1e-4, atol=1e-4)
    # The size report counts what deploys: the stripped kernels, not the factors.
    deployed = [l.kernel.numpy() for l in plain.layers if hasattr(l, "kernel")]
    size = model_size(net)
    assert size.nnz == sum(int(np.count_nonzero(k)) for k in deployed)
    assert [t.numel for t in size.tensors] == [k.size for k in deployed]


def test_sample_and_class_weights_reach_the_loss(digits, da_model):
    """fit(sample_weight=...) and fit(class_weight=...) change the training loss, as in plain Keras."""
    x_tr, y_tr, _, _ = digits
    losses = {}
    for kind in ("none", "sample", "class"):
        keras.utils.set_random_seed(0)
        trainer = ATMCTrainer(wrap_model(da_model), method_config("natural"))
        trainer.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: the loss is a pure function of weights
        kwargs = {"sample": {"sample_weight": (y_tr[:256] == 3).astype("float32") + 0.01},
                  "class": {"class_weight": {c: (10.0 if c == 3 else 0.1) for c in range(10)}}}.get(kind, {})
        hist = trainer.fit(x_tr[:256], y_tr[:256], epochs=1, batch_size=256, verbose=0, shuffle=False, **kwargs)
        losses[kind] = hist.history["loss"][-1]
    assert losses["sample"] != pytest.approx(losses["none"], rel=1e-3)
    assert losses["class"] != pytest.approx(losses["none"], rel=1e-3)
