"""Keras wrappers carrying constraint state (mask, ADMM Z and U, factors)."""
from atmc_tf.layers.wrappers import (
    ATMCWrapper,
    FACTORIZATIONS,
    SUPPORTED_LAYERS,
    UnsupportedLayerError,
    atmc_wrappers,
    kernel_channel_axes,
    strip_model,
    wrap_model,
)

__all__ = ["ATMCWrapper", "FACTORIZATIONS", "SUPPORTED_LAYERS", "UnsupportedLayerError",
           "atmc_wrappers", "kernel_channel_axes", "strip_model", "wrap_model"]
