"""Constraint math: pure tensor functions and constraint-set objects, no Keras.

Every function here takes and returns tf tensors, runs inside tf.function on
any device, and is tested alone with property tests (tests/test_constraints_*).
The constraint sets of the training problem (base.Constraint: GlobalL0,
FixedSupport, GroupL0, FixedGroupSupport, Quantization, ...) are built on these functions; registry.py
names them.
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
    nonzero_levels,
    check_codebook,
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
from atmc_tf.constraints.base import Constraint, TensorInfo
from atmc_tf.constraints.l0 import FixedSupport, GlobalL0
from atmc_tf.constraints.group_sparsity import (
    GROUP_SCORINGS,
    count_nonzero_groups,
    group_energies,
    group_masks,
    num_groups,
    select_group_l0,
    select_groups,
)
from atmc_tf.constraints.group_l0 import FixedGroupSupport, GroupL0
from atmc_tf.constraints.admm_quantization import Quantization
from atmc_tf.constraints.lattice_ste import QuantizedShadow
from atmc_tf.constraints.l1_prox import (BNChannelL1Prox, budget_masks, expand_channels, group_scales,
                                         group_soft_threshold, mac_masks, mac_model_macs, soft_threshold)
from atmc_tf.constraints.registry import CONSTRAINTS, constraint_from_config, constraint_to_config

__all__ = [n for n in dir() if not n.startswith("_")]
