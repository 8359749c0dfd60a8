"""The interface every constraint set of the min-max problem implements.

A constraint acts on the trainer's compressed tensors (kernels, or their factors) as
a list of tensors, in one fixed order. It is pure TensorFlow: state it needs between
steps (a fixed support, ADMM's Z and U, a warm-start threshold) is created through
the `make_variable` factory it is given, so the trainer owns, checkpoints (Keras
BackupAndRestore) and mirrors (tf.distribute) it without this module importing Keras.

The trainer calls, in cross-replica context where a strategy is active:

    build(tensors, make_variable)        once, when the trainer is made
    initialize(values, assign) -> values once per training run, before the first step
    penalty(values) -> scalar | None     inside the gradient tape, added to the loss
    project(values, step, assign) -> values   after every optimizer step
    finalize(values, assign) -> values   after training: the result satisfies the set exactly
    metrics(values) -> {name: scalar}    logged every step (names fixed by metric_names)

`values` are the current tensors; each method returns the (possibly) new tensors,
which the next constraint of the composition receives and the trainer finally
writes back. `assign(variable, value)` updates a state variable on every replica.
A new constraint is a new module with a subclass plus one entry in registry.py.
"""
import dataclasses

import tensorflow as tf

from atmc_tf.components import Component


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What a constraint may know of one compressed tensor.

    channel_axes: axes of TFLite's per-channel int8 scales (output channels).
    layer: the wrapped layer's name; kind: its class name (Dense, Conv2D, DepthwiseConv2D).
    reads: for a DepthwiseConv2D kernel, the layer whose output channel c its channels c * mult ..
    c * mult + mult - 1 read, when nothing else reads that channel (through BatchNorm, activations,
    pooling): the two are one channel of the cut model, which structured constraints prune together.
    """

    name: str
    shape: tuple
    channel_axes: tuple = (-1,)
    layer: str = ""
    kind: str = ""
    reads: str = ""

    @property
    def size(self):
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


class Constraint(Component):
    """Base class: a constraint that does nothing. Subclasses override what they need.
    `kind` is its name in registry.CONSTRAINTS; get_config() its constructor's arguments."""

    #: what metrics() returns, so that the trainer can make one tracker per name up front
    metric_names = ()
    #: True if the constraint zeroes weights (others, e.g. quantization, then keep those zeros)
    sparsifying = False
    #: True if it prunes whole output channels of the layers of self.tensors: the trainer then makes
    #: every channel whose kernel slice is zero output exactly 0 (its bias and the following
    #: BatchNormalization's gamma, beta and moving mean zeroed with it, after every projection;
    #: atmc_tf.training.structure.ChannelSilencer), so that surgery can cut it out
    structured = False

    def build(self, tensors, make_variable):
        self.tensors = list(tensors)

    def initialize(self, values, assign):
        return values

    def penalty(self, values):
        return None

    def project(self, values, step, assign):
        return values

    def finalize(self, values, assign):
        return values

    def metrics(self, values):
        return {}

    def report(self):
        """Plain-Python facts for reports (the budget, bits, ...)."""
        return {"kind": self.kind, **self.get_config()}
