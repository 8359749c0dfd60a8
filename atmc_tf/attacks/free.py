"""Free adversarial training's perturbation (Shafahi et al. 2019, "Adversarial training for free!", NeurIPS;
the reference: locuslab/fast_adversarial, CIFAR10/train_free.py, which follows the paper's Algorithm 1).

Free training keeps ONE perturbation delta of the batch's shape across steps and minibatches: each batch is
replayed m times, and every replay takes the gradient of the loss on clip(x + delta) with respect to the
weights AND to the input in the same backward pass; the weights take their optimizer step, and delta takes
a signed step of eps, clipped to the eps-ball and so that x + delta stays in the data box. Its cost per
replay is one forward and one backward pass, that of plain training (the trainer's loss term:
atmc_tf.training.terms.FreeAdversarialLoss; the replays: atmc_tf.training.data_order.replay).

FreeATConfig records the setting in the attack registry (ATMCConfig.attack); its attack() is the
stand-in used where a functional attack is needed: PGD with `replays` steps of eps / 2, no random start,
about what the m replays of a batch spend on it. The trainer's validation metrics use `validation_attack`,
PGD-7, as for the single-step attacks (attacks/fast.py).
"""
import dataclasses
import math

import tensorflow as tf

from atmc_tf.attacks.pgd import PGDConfig, pgd


def free_update(delta, grad, x, eps, clip_min=0.0, clip_max=1.0):
    """delta after one free step: delta + eps * sign(grad), clipped to [-eps, eps] and so that x + delta lies in
    [clip_min, clip_max] (train_free.py's order: ball, then box)."""
    delta = tf.clip_by_value(delta + eps * tf.sign(grad), -eps, eps)
    return tf.clip_by_value(x + delta, clip_min, clip_max) - x


@dataclasses.dataclass(frozen=True)
class FreeATConfig:
    """Free adversarial training: eps (L_inf), replays m per batch, and batch_size, the persistent
    perturbation's first dimension (a batch may be smaller: the last of an epoch, a replica's share)."""

    eps: float
    replays: int = 4
    batch_size: int = 64
    clip_min: float = 0.0
    clip_max: float = 1.0

    def __post_init__(self):
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")
        if int(self.replays) < 1:
            raise ValueError(f"replays must be >= 1, got {self.replays}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.clip_min < self.clip_max:
            raise ValueError("clip_min must be < clip_max")

    @property
    def validation_attack(self):
        return PGDConfig(eps=self.eps, steps=7, clip_min=self.clip_min, clip_max=self.clip_max)

    def attack(self, model_fn, x, y, seed=None):
        """The functional stand-in (see the module): PGD, `replays` steps of eps / 2 from x, in the ball and box."""
        return pgd(model_fn, x, y, eps=self.eps, step_size=self.eps / 2, steps=int(self.replays), rand_init=False,
                   clip_min=self.clip_min, clip_max=self.clip_max)
