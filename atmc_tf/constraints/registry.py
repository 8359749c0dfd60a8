"""Constraint sets by name. A new constraint: a module with a `Constraint` subclass, one entry here."""
from atmc_tf import components
from atmc_tf.constraints.admm_quantization import Quantization
from atmc_tf.constraints.group_l0 import FixedGroupSupport, GroupL0
from atmc_tf.constraints.l0 import FixedSupport, GlobalL0
from atmc_tf.constraints.l1_prox import BNChannelL1Prox
from atmc_tf.constraints.lattice_ste import QuantizedShadow

CONSTRAINTS = {cls.kind: cls for cls in (GlobalL0, FixedSupport, GroupL0, FixedGroupSupport, Quantization,
                                          BNChannelL1Prox, QuantizedShadow)}

constraint_to_config = components.to_config


def constraint_from_config(config):
    return components.from_config(config, CONSTRAINTS, "constraint")
