"""Metrics that are not averages: the last value seen (nnz, budget, ||W - Z||)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="atmc_tf")
class LastValue(keras.metrics.Metric):
    """Reports the most recent value passed to update_state."""

    def __init__(self, name, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        # Every replica sees the same value: read the first, never sum them.
        self.value = self.add_variable(shape=(), initializer="zeros", dtype=dtype,
                                       aggregation="only_first_replica", name="value")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)

    def reset_state(self):
        self.value.assign(0.0)
