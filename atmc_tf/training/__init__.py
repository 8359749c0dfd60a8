"""Training: ATMCTrainer (a composition of loss terms and constraint sets run by model.fit), ATMCConfig
and the method presets."""
from atmc_tf.training.callbacks import StopOnNonFiniteLoss, TrainingDivergedError
from atmc_tf.training.class_feedback import ClassFeedback
from atmc_tf.training.config import ATMCConfig, SPARSITY_MODES
from atmc_tf.training.methods import (
    METHODS,
    compressible_layers,
    dense_weight_count,
    method_config,
    output_layers,
    wrap_for_method,
)
from atmc_tf.training.metrics import LastValue
from atmc_tf.training.overfitting import CatastrophicOverfittingGuard
from atmc_tf.training.summary import model_size
from atmc_tf.training.terms import TERMS, AdversarialLoss, CleanLoss, LossTerm, MultiThreatLoss, StepContext
from atmc_tf.training.trainer import ATMCTrainer

__all__ = ["ATMCConfig", "SPARSITY_MODES", "METHODS", "compressible_layers", "dense_weight_count",
           "method_config", "output_layers", "wrap_for_method", "LastValue", "model_size", "ATMCTrainer",
           "StopOnNonFiniteLoss", "TrainingDivergedError", "ClassFeedback", "TERMS", "AdversarialLoss", "CleanLoss",
           "LossTerm", "MultiThreatLoss", "StepContext", "CatastrophicOverfittingGuard"]
