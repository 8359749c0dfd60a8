"""Functional attacks on tensors: usable in a tf.function train_step and in evaluation."""
from atmc_tf.attacks.pgd import PGDConfig, accuracy_curve, fgsm, pgd, robust_accuracy

__all__ = ["pgd", "fgsm", "PGDConfig", "robust_accuracy", "accuracy_curve"]
