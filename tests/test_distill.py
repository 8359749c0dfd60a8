"""Robust distillation (terms.RobustDistillation): the loss, its inner max, and the trainer around it."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from atmc_tf.attacks import PGDConfig
from atmc_tf.layers import wrap_model
from atmc_tf.models import build_model
from atmc_tf.training import ATMCConfig, ATMCTrainer, method_config
from atmc_tf.training.terms import RobustDistillation, StepContext
from atmc_tf.training.terms.distill import soft_kl


def test_soft_kl_is_zero_on_its_own_distribution_and_positive_elsewhere():
    logits = tf.constant(np.random.default_rng(0).normal(size=(6, 10)), tf.float32)
    for t in (1.0, 4.0):
        p = tf.nn.softmax(logits / t)
        np.testing.assert_allclose(soft_kl(p, logits, t).numpy(), 0.0, atol=1e-6)
        assert np.all(soft_kl(p, logits[::-1], t).numpy() > 0)


@pytest.fixture(scope="module")
def teacher(digits):
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = build_model("mlp", x_train.shape[1:], 10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)  # no BatchNorm: a copy in training mode is the teacher
    return model


def _trainer(net, teacher, mode, eps=0.1, **kw):
    config = method_config("al0", attack=PGDConfig(eps, steps=3), nnz_budget=10 ** 6, distill=mode, **kw)
    trainer = ATMCTrainer(wrap_model(net), config, teacher=teacher)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05))
    return trainer


def _copy(model):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def _term_loss(trainer, x, y):
    ctx = StepContext(trainer, x, y)
    [term] = [t for t in trainer.terms if isinstance(t, RobustDistillation)]
    with trainer.custom_step():  # the term's loss runs the wrapped net in training mode
        term.prepare(ctx)
        return float(term.loss(ctx)), ctx


@pytest.mark.parametrize("mode", ["ard", "rslad"])
def test_the_loss_is_zero_when_the_student_is_its_teacher(digits, teacher, mode):
    x, y = digits[2][:32], digits[3][:32]
    loss, _ = _term_loss(_trainer(_copy(teacher), teacher, mode, eps=1e-7, distill_temperature=3.0), x, y)
    assert abs(loss) < 1e-5
    other = build_model("mlp", x.shape[1:], 10)
    far, _ = _term_loss(_trainer(other, teacher, mode, eps=1e-7), x, y)
    assert far > 0.1


def test_the_inner_max_raises_the_disagreement_with_the_teacher(digits, teacher):
    x, y = digits[2][:64], digits[3][:64]
    student = _copy(teacher)
    student.layers[-1].kernel.assign(student.layers[-1].kernel * 0.5)  # a student close to, not equal to, it
    trainer = _trainer(student, teacher, "ard", eps=0.2)
    _, ctx = _term_loss(trainer, x, y)
    p = tf.nn.softmax(teacher(x))
    at_x = soft_kl(p, trainer.net(x)).numpy()
    at_adv = soft_kl(p, trainer.net(ctx.inputs["adv"])).numpy()
    assert np.max(np.abs(ctx.inputs["adv"].numpy() - x)) <= 0.2 + 1e-6
    assert np.mean(at_adv) > 2 * np.mean(at_x)


def test_training_pulls_the_student_towards_the_teacher(digits, teacher):
    x, y = digits[0][:256], digits[1][:256]
    keras.utils.set_random_seed(1)
    trainer = _trainer(build_model("mlp", x.shape[1:], 10), teacher, "rslad", eps=0.05)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    p = tf.nn.softmax(teacher(x))
    before = float(tf.reduce_mean(soft_kl(p, trainer.net(x))))
    history = trainer.fit(x, y, epochs=5, batch_size=64, verbose=0).history
    after = float(tf.reduce_mean(soft_kl(p, trainer.net(x))))
    assert after < 0.7 * before, (before, after)
    assert history["distill_kl"][-1] < history["distill_kl"][0]
    assert {"adv_acc", "clean_acc", "distill_kl"} <= set(history)


def test_config_and_trainer_round_trip_and_refusals(teacher):
    config = method_config("atmc", attack=PGDConfig(0.1, steps=2), nnz_budget=100, bits=4, distill="ard",
                           distill_temperature=2.0)
    assert [type(t).__name__ for t in config.components()[0]] == ["CleanLoss", "RobustDistillation"]
    assert ATMCConfig.from_dict(config.to_dict()) == config
    trainer = ATMCTrainer(wrap_model(_copy(teacher)), config, teacher=teacher)
    again = ATMCTrainer.from_config(trainer.get_config())
    assert again.teacher is not None and not again.teacher.trainable
    assert [w.shape for w in again.teacher.weights] == [w.shape for w in teacher.weights]
    with pytest.raises(ValueError, match="needs a teacher"):
        ATMCTrainer(wrap_model(_copy(teacher)), config)
    with pytest.raises(ValueError, match="distill must be one of"):
        method_config("al0", attack=PGDConfig(0.1), nnz_budget=10, distill="kd")
    with pytest.raises(ValueError, match="needs an attack"):
        ATMCConfig(distill="ard")
    with pytest.raises(ValueError, match="temperature"):
        RobustDistillation(PGDConfig(0.1), temperature=0)
