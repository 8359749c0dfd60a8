"""Single-step training attacks under L_inf, as pure tensor code: one gradient per batch instead of PGD-7's seven.

FGSM with random start (Wong, Rice and Kolter 2020, "Fast is better than free: revisiting adversarial
training", ICLR; locuslab/fast_adversarial, CIFAR10/train_fgsm.py): delta uniform in [-eps, eps], clipped so
x + delta lies in the data box; one signed step of alpha = 1.25 eps (their 10/255 at eps 8/255); delta clipped
back to [-eps, eps] and to the box. The result lies in the eps-ball and the box.

N-FGSM (de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez, Dokania 2022, "Make some noise: reliable and efficient
single-step adversarial training", NeurIPS; pdejorge/N-FGSM, train.py with its defaults --unif 2 --clip -1):
noise eta uniform in [-k eps, k eps] (k = 2), clipped to the box; one signed step of alpha = eps; the result
clipped to the data box only, NOT to the eps-ball: a training example may lie up to (k + 1) eps from x. That
larger, unclipped perturbation is what keeps single-step training from catastrophic overfitting in the paper.
These are training attacks: the pipeline evaluates with PGD, never with them, and so do the trainer's
validation metrics (adv_loss / adv_acc): `validation_attack` is PGD-7 (the default training attack, so the
curves of fast and PGD runs measure the same thing), since a single-step attack's own accuracy is what
rises when a model overfits catastrophically.

Both only call model_fn, so they run eagerly and inside a train_step's tf.function, and with a stateless
`seed` their noise is a function of the seed alone (a resumed run draws what an uninterrupted one drew).
"""
import dataclasses
import math

import tensorflow as tf

from atmc_tf.attacks.pgd import PGDConfig, _xent


def _check_box(config):
    if not (config.eps >= 0 and math.isfinite(config.eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {config.eps}")
    if config.step_size is not None and not (config.step_size > 0 and math.isfinite(config.step_size)):
        raise ValueError(f"step_size must be a finite number > 0, got {config.step_size}")
    if not config.clip_min < config.clip_max:
        raise ValueError("clip_min must be < clip_max")


def _validation_pgd(config):
    """What the trainer's validation metrics attack with in place of a training-only attack: PGD-7."""
    return PGDConfig(eps=config.eps, steps=7, clip_min=config.clip_min, clip_max=config.clip_max)


def _uniform(x, radius, seed):
    if seed is None:
        return tf.random.uniform(tf.shape(x), -radius, radius, dtype=x.dtype)
    return tf.random.stateless_uniform(tf.shape(x), tf.cast(seed, tf.int64), -radius, radius, dtype=x.dtype)


def signed_step(model_fn, x, y, noise_radius, alpha, ball, clip_min=0.0, clip_max=1.0, seed=None):
    """x + delta after one signed gradient step from uniform noise of `noise_radius` (clipped into the box).

    ball: the L_inf radius delta is clipped to after the step (FGSM-RS: eps), or None (N-FGSM: none). The
    result always lies in [clip_min, clip_max] and is gradient-stopped."""
    x = tf.convert_to_tensor(x)
    start = tf.clip_by_value(x + _uniform(x, tf.cast(noise_radius, x.dtype), seed), clip_min, clip_max)
    with tf.GradientTape() as tape:
        tape.watch(start)
        loss = tf.reduce_sum(_xent(y, model_fn(start)))
    x_adv = start + tf.cast(alpha, x.dtype) * tf.sign(tape.gradient(loss, start))
    if ball is not None:
        # Clip to the ball, then to the box that contains x: the box never moves a point away from x.
        x_adv = x + tf.clip_by_value(x_adv - x, -tf.cast(ball, x.dtype), tf.cast(ball, x.dtype))
    return tf.stop_gradient(tf.clip_by_value(x_adv, clip_min, clip_max))


@dataclasses.dataclass(frozen=True)
class FGSMRSConfig:
    """FGSM with random start (Wong et al. 2020). step_size None means 1.25 * eps (the paper's alpha)."""

    eps: float
    step_size: float | None = None
    clip_min: float = 0.0
    clip_max: float = 1.0

    def __post_init__(self):
        _check_box(self)

    @property
    def alpha(self):
        return self.step_size if self.step_size is not None else 1.25 * self.eps

    @property
    def validation_attack(self):
        return _validation_pgd(self)

    def attack(self, model_fn, x, y, seed=None):
        """x_adv for (x, y), in the eps-ball and the box; seed: a stateless seed (shape [2] integers) or None."""
        return signed_step(model_fn, x, y, self.eps, self.alpha, self.eps, self.clip_min, self.clip_max, seed)


@dataclasses.dataclass(frozen=True)
class NFGSMConfig:
    """N-FGSM (de Jorge et al. 2022): noise of radius noise_scale * eps (k, default 2), one step of
    step_size (None: eps), clipped to the box only: ||x_adv - x||_inf <= (noise_scale * eps + alpha)."""

    eps: float
    noise_scale: float = 2.0
    step_size: float | None = None
    clip_min: float = 0.0
    clip_max: float = 1.0

    def __post_init__(self):
        _check_box(self)
        if not (self.noise_scale >= 0 and math.isfinite(self.noise_scale)):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {self.noise_scale}")

    @property
    def alpha(self):
        return self.step_size if self.step_size is not None else self.eps

    @property
    def validation_attack(self):
        return _validation_pgd(self)

    def attack(self, model_fn, x, y, seed=None):
        """x_adv for (x, y), in the box and within (noise_scale * eps + alpha) of x; seed as FGSMRSConfig's."""
        return signed_step(model_fn, x, y, self.noise_scale * self.eps, self.alpha, None,
                           self.clip_min, self.clip_max, seed)
