"""Offline data sets (digits, Fashion-MNIST, MNIST npz) as validated NHWC arrays, and tf.data pipelines."""
from atmc_tf.data.datasets import (
    DATASETS,
    DataError,
    Dataset,
    from_arrays,
    load_dataset,
    read_idx,
    tf_dataset,
    validate_arrays,
)

__all__ = ["DATASETS", "DataError", "Dataset", "from_arrays", "load_dataset", "read_idx",
           "tf_dataset", "validate_arrays"]
