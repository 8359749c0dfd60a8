"""Constraint math: pure tensor functions, no Keras layers.

Every function here takes and returns tf tensors, runs inside tf.function on
any device, and is tested alone with property tests (tests/test_constraints_*).
"""
from atmc_tf.constraints.sparsity import topk_masks, project_l0, project_l0_hinted, apply_masks, count_nonzero
from atmc_tf.constraints.quantize import (
    QUANT_SCHEMES,
    fit_codebook,
    nearest_level,
    quantize,
    quantize_codebook,
    quantize_codebook_int8,
    quantize_uniform_int8,
    int8_codes,
    num_levels,
    channel_scales,
)
from atmc_tf.constraints.lowrank import (
    kernel_as_matrix,
    matrix_as_kernel,
    project_rank,
    factorize,
    allocate_ranks,
)
from atmc_tf.constraints.accounting import TensorSize, SizeReport, size_report

__all__ = [n for n in dir() if not n.startswith("_")]
