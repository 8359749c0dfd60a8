"""Keras wrappers marking the compressed kernels (and their factors) of a model."""
from atmc_tf.layers.activation_sparsity import (
    ActivationThreshold,
    WinnersTakeAll,
    insert_activation_sparsity,
    sparsity_layers,
    straight_through_copy,
    winners_count,
    without_activation_sparsity,
)
from atmc_tf.layers.wrappers import (
    ATMCWrapper,
    FACTORIZATIONS,
    SUPPORTED_LAYERS,
    UnconstrainedModelError,
    UnconstrainedTrainingError,
    UnsupportedLayerError,
    atmc_wrappers,
    constraint_scope,
    kernel_channel_axes,
    strip_model,
    wrap_model,
)

__all__ = ["ActivationThreshold", "WinnersTakeAll", "insert_activation_sparsity", "sparsity_layers",
           "straight_through_copy", "winners_count", "without_activation_sparsity", "ATMCWrapper", "FACTORIZATIONS", "SUPPORTED_LAYERS", "UnconstrainedModelError",
           "UnconstrainedTrainingError", "UnsupportedLayerError", "atmc_wrappers", "constraint_scope",
           "kernel_channel_axes", "strip_model", "wrap_model"]
