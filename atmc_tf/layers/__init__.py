"""Keras wrappers marking the compressed kernels (and their factors) of a model."""
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

__all__ = ["ATMCWrapper", "FACTORIZATIONS", "SUPPORTED_LAYERS", "UnconstrainedModelError",
           "UnconstrainedTrainingError", "UnsupportedLayerError", "atmc_wrappers", "constraint_scope",
           "kernel_channel_axes", "strip_model", "wrap_model"]
