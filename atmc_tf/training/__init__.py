"""Training: ATMCConfig, the method presets and ATMCTrainer (a custom train_step for model.fit)."""
from atmc_tf.training.callbacks import StopOnNonFiniteLoss, TrainingDivergedError
from atmc_tf.training.config import ATMCConfig, SPARSITY_MODES
from atmc_tf.training.methods import (
    METHODS,
    compressible_layers,
    dense_weight_count,
    method_config,
    wrap_for_method,
)
from atmc_tf.training.metrics import LastValue
from atmc_tf.training.summary import model_size
from atmc_tf.training.trainer import ATMCTrainer

__all__ = ["ATMCConfig", "SPARSITY_MODES", "METHODS", "compressible_layers", "dense_weight_count",
           "method_config", "wrap_for_method", "LastValue", "model_size", "ATMCTrainer",
           "StopOnNonFiniteLoss", "TrainingDivergedError"]
