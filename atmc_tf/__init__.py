"""atmc_tf: adversarially trained model compression (ATMC) on TensorFlow / Keras 3."""
