"""Keras' contract on ATMCTrainer: compile(loss=, metrics=), mixed precision, train_on_batch and custom
loops keep the constraints; compositions of terms and constraints; a term's state checkpoints."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from atmc_tf.attacks import PGDConfig
from atmc_tf.constraints import GlobalL0, Quantization, num_levels
from atmc_tf.layers import atmc_wrappers, strip_model, wrap_model
from atmc_tf.training import TERMS, AdversarialLoss, ATMCTrainer, CleanLoss, dense_weight_count, method_config
from conftest import count_steps_term, small_cnn

ATTACK = PGDConfig(eps=0.1, steps=2)


def _nnz(net):
    return sum(int(np.count_nonzero(v.numpy())) for w in atmc_wrappers(net) for v in w.compressed_variables)


def _levels(net, scheme="codebook_int8"):
    return max(int(num_levels(v.value, scheme, w.channel_axes)) for w in atmc_wrappers(net)
               for v in w.compressed_variables)


def test_compile_metrics_on_clean_and_adversarial_predictions(digits):
    x, y, xv, yv = digits
    trainer = ATMCTrainer(wrap_model(small_cnn()), method_config("da", attack=ATTACK))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3),
                    metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")])
    hist = trainer.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0, validation_data=(xv, yv)).history
    for key in ("accuracy", "top3", "adv_accuracy", "adv_top3", "val_accuracy", "val_adv_top3"):
        assert key in hist, sorted(hist)
    assert hist["accuracy"] == hist["clean_acc"] and hist["adv_accuracy"] == hist["adv_acc"]
    assert hist["top3"][0] >= hist["accuracy"][0]


def test_compile_loss_is_the_loss_every_term_uses(digits):
    """A user's loss (here twice the cross-entropy) is what the clean and adversarial terms compute."""
    x, y, _, _ = digits
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    plain = small_cnn()
    losses = {}
    for name, loss in (("default", None), ("double", lambda yt, yp: 2.0 * xent(yt, yp))):
        trainer = ATMCTrainer(wrap_model(plain), method_config("natural"))
        trainer.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)  # lr 0: the loss is a function of W
        losses[name] = trainer.fit(x[:128], y[:128], epochs=1, batch_size=128, verbose=0,
                                   shuffle=False).history["clean_loss"][0]
    assert losses["double"] == pytest.approx(2 * losses["default"], rel=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss="sparse_categorical_crossentropy"), "logits"),
    (dict(loss_weights=[1.0]), "loss_weights"),
    (dict(weighted_metrics=["accuracy"]), "weighted_metrics"),
])
def test_compile_refuses_what_cannot_apply(kwargs, match):
    trainer = ATMCTrainer(wrap_model(small_cnn()), method_config("da", attack=ATTACK))
    with pytest.raises(ValueError, match=match):
        trainer.compile(optimizer="adam", **kwargs)


def _movement(policy, digits, budget_div=8, bits=3):
    x, y, _, _ = digits
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        plain = small_cnn()
        budget = dense_weight_count(plain) // budget_div
        net = wrap_model(plain)
        trainer = ATMCTrainer(net, method_config("atmc", attack=ATTACK, nnz_budget=budget, bits=bits))
        trainer.compile(optimizer=keras.optimizers.SGD(0.05))
        before = [v.numpy().copy() for v in trainer.net.trainable_weights]
        hist = trainer.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0, shuffle=False).history
        moved = sum(float(np.abs(v.numpy() - b).sum()) for v, b in zip(trainer.net.trainable_weights, before))
        return trainer, net, budget, moved, hist
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_scales_the_loss_and_ends_constrained(digits):
    """Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer; without
    optimizer.scale_loss every gradient would be divided by the loss scale (2**15) and the
    weights would barely move."""
    trainer, net, budget, moved16, hist = _movement("mixed_float16", digits)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.net.layers[1].compute_dtype == "float16"
    assert all(np.isfinite(hist["loss"]))
    assert _nnz(net) <= budget and _levels(net) <= 2 ** 3 - 1
    _, _, _, moved32, _ = _movement("float32", digits)
    assert 0.3 < moved16 / moved32 < 3, (moved16, moved32)


def test_train_on_batch_sets_up_and_keeps_the_constraints(digits):
    x, y, _, _ = digits
    plain = small_cnn()
    budget = dense_weight_count(plain) // 10
    net = wrap_model(plain)
    trainer = ATMCTrainer(net, method_config("al0", attack=ATTACK, nnz_budget=budget))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05))
    assert _nnz(net) > budget
    for i in range(3):
        logs = trainer.train_on_batch(x[64 * i:64 * (i + 1)], y[64 * i:64 * (i + 1)], return_dict=True)
        assert _nnz(net) <= budget and logs["nnz"] <= budget
    with pytest.raises(ValueError, match="never enforced"):
        strip_model(net)  # not finalized: refused for export
    trainer.finalize()
    strip_model(net)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_custom_loop_inside_custom_step_keeps_the_constraints(digits, compiled):
    x, y, _, _ = digits
    plain = small_cnn()
    budget = dense_weight_count(plain) // 10
    net = wrap_model(plain)
    trainer = ATMCTrainer(net, method_config("atmc", attack=ATTACK, nnz_budget=budget, bits=2, quant_interval=1))
    optimizer = keras.optimizers.SGD(0.05)
    optimizer.build(net.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(xb, yb):
        with trainer.custom_step():
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, net(xb, training=True))
            optimizer.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
        return loss

    step = tf.function(step) if compiled else step
    trainer.prepare_constraints()
    for i in range(3):
        step(tf.constant(x[64 * i:64 * (i + 1)]), tf.constant(y[64 * i:64 * (i + 1)]))
        assert _nnz(net) <= budget
    trainer.finalize()
    assert _nnz(net) <= budget and _levels(net) <= 4
    strip_model(net)


def test_a_composition_of_terms_and_constraints_trains_and_round_trips(digits):
    x, y, _, _ = digits
    plain = small_cnn()
    budget = dense_weight_count(plain) // 6
    terms = [AdversarialLoss(ATTACK, weight=1.0), CleanLoss(0.0)]
    constraints = [GlobalL0(budget), Quantization(bits=2, scheme="uniform_int8")]
    net = wrap_model(plain)
    trainer = ATMCTrainer(net, terms=terms, constraints=constraints)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    hist = trainer.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0).history
    assert {"adv_loss", "clean_acc", "w_z_dist", "nnz", "budget"} <= set(hist)
    assert _nnz(net) <= budget and _levels(net, "uniform_int8") <= 4
    again = ATMCTrainer.from_config(trainer.get_config())
    assert again.config is None
    assert [repr(t) for t in again.terms] == [repr(t) for t in trainer.terms]
    assert [repr(c) for c in again.constraints] == [repr(c) for c in trainer.constraints]
    assert set(TERMS) >= {"clean", "adversarial"}


def test_term_state_checkpoints_and_resumes(digits, tmp_path):
    """A term's variable is saved by BackupAndRestore and restored when fit resumes."""
    x, y, _, _ = digits
    backup = str(tmp_path / "backup")

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # a kill after epoch 2's checkpoint

    def make():
        keras.utils.set_random_seed(0)
        trainer = ATMCTrainer(wrap_model(small_cnn()), terms=[CleanLoss(1.0), count_steps_term()])
        trainer.compile(optimizer=keras.optimizers.SGD(0.01))
        return trainer

    first = make()
    callbacks = [keras.callbacks.BackupAndRestore(backup), StopAfter()]
    with pytest.raises(KeyboardInterrupt):
        first.fit(x[:128], y[:128], epochs=3, batch_size=64, verbose=0, callbacks=callbacks)
    resumed = make()
    resumed.fit(x[:128], y[:128], epochs=3, batch_size=64, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert float(resumed.terms[1].count.numpy()) == 3 * 2  # 3 epochs of 2 steps, across the restart
