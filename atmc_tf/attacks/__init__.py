"""Functional attacks on tensors: usable in a tf.function train_step and in evaluation."""
from atmc_tf.attacks.pgd import pgd, fgsm, PGDConfig, robust_accuracy

__all__ = ["pgd", "fgsm", "PGDConfig", "robust_accuracy"]
