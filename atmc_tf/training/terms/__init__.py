"""Loss terms of the training objective (base.LossTerm); registry.py names them."""
from atmc_tf.training.terms.activation_l1 import ActivationL1
from atmc_tf.training.terms.activation_schedule import ActivationBudgetSchedule
from atmc_tf.training.terms.adversarial import AdversarialLoss
from atmc_tf.training.terms.base import LossTerm, StepContext
from atmc_tf.training.terms.class_feedback import ClassBalancedAdversarialLoss
from atmc_tf.training.terms.clean import CleanLoss
from atmc_tf.training.terms.cost_sensitive import CostSensitiveAdversarialLoss, pack_costs
from atmc_tf.training.terms.distill import RobustDistillation
from atmc_tf.training.terms.free import FreeAdversarialLoss
from atmc_tf.training.terms.geco import CleanTarget
from atmc_tf.training.terms.multi_threat import MultiThreatLoss
from atmc_tf.training.terms.registry import TERMS, term_from_config, term_to_config

__all__ = ["ActivationBudgetSchedule", "ActivationL1", "AdversarialLoss", "ClassBalancedAdversarialLoss", "CleanLoss",
           "CleanTarget", "CostSensitiveAdversarialLoss", "FreeAdversarialLoss",
           "LossTerm", "MultiThreatLoss", "RobustDistillation", "StepContext", "TERMS", "term_from_config",
           "term_to_config", "pack_costs"]
