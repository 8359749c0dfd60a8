"""Loss terms by name. A new term: a module with a `LossTerm` subclass, one entry here."""
from atmc_tf import components
from atmc_tf.training.terms.activation_l1 import ActivationL1
from atmc_tf.training.terms.activation_schedule import ActivationBudgetSchedule
from atmc_tf.training.terms.adversarial import AdversarialLoss
from atmc_tf.training.terms.class_feedback import ClassBalancedAdversarialLoss
from atmc_tf.training.terms.clean import CleanLoss
from atmc_tf.training.terms.cost_sensitive import CostSensitiveAdversarialLoss
from atmc_tf.training.terms.distill import RobustDistillation
from atmc_tf.training.terms.free import FreeAdversarialLoss
from atmc_tf.training.terms.geco import CleanTarget
from atmc_tf.training.terms.multi_threat import MultiThreatLoss

TERMS = {cls.kind: cls for cls in (CleanLoss, AdversarialLoss, RobustDistillation, CleanTarget,
                                   ClassBalancedAdversarialLoss, MultiThreatLoss, FreeAdversarialLoss,
                                   CostSensitiveAdversarialLoss, ActivationBudgetSchedule, ActivationL1)}

term_to_config = components.to_config


def term_from_config(config):
    return components.from_config(config, TERMS, "loss term")
