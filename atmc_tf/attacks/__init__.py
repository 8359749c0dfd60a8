"""Functional attacks on tensors: usable in a tf.function train_step and in evaluation."""
from atmc_tf.attacks.apgd import APGDConfig, apgd, apgd_checkpoints, dlr_loss
from atmc_tf.attacks.evaluate import (WorstCase, correct_under_attack, per_class_accuracy, union_accuracy,
                                      worst_case_accuracy)
from atmc_tf.attacks.fast import FGSMRSConfig, NFGSMConfig
from atmc_tf.attacks.free import FreeATConfig, free_update
from atmc_tf.attacks.msd import MSDConfig, msd
from atmc_tf.attacks.pgd import PGDConfig, accuracy_curve, adversarial_examples, fgsm, pgd, robust_accuracy
from atmc_tf.attacks.registry import ATTACKS, attack_from_dict, attack_to_dict
from atmc_tf.attacks.simplex import apgda_step, project_simplex

__all__ = ["pgd", "fgsm", "PGDConfig", "adversarial_examples", "robust_accuracy", "accuracy_curve",
           "ATTACKS", "attack_from_dict", "attack_to_dict", "apgd", "APGDConfig", "apgd_checkpoints", "dlr_loss",
           "WorstCase", "correct_under_attack", "per_class_accuracy", "worst_case_accuracy", "MSDConfig", "msd",
           "project_simplex", "apgda_step", "union_accuracy", "FGSMRSConfig", "NFGSMConfig", "FreeATConfig",
           "free_update"]
