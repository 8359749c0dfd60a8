"""From a GS-trained generator to the smaller one: silence the pruned channels, then channel surgery.

A channel whose BN gamma and beta are 0 (BNChannelL1Prox leaves them so) outputs exactly 0 whatever
its Conv2D computes, so zeroing that Conv2D's kernel slice changes no output; it lets surgery
(atmc_tf.export.surgery, which reads constants from zero kernel slices) prove the channel is 0 and
cut it from the producer, the BN and the consumer. The Dense + Reshape block is kept whole
(strict=False: surgery cannot cut through a Reshape, and GS does not prune it here).
"""
import keras
import numpy as np

from atmc_tf.export.surgery import count_macs, shrink_model
from atmc_tf.gan.models import prunable_bns


def silence_pruned(gen):
    """Zero the kernel slice (and bias) of every hidden Conv2D channel whose BN gamma and beta are
    0; returns how many channels are silent."""
    silent = 0
    for conv, bn in prunable_bns(gen):
        gamma, beta = (keras.ops.convert_to_numpy(v) for v in (bn.gamma, bn.beta))
        dead = np.flatnonzero((gamma == 0) & (beta == 0))
        if len(dead):
            weights = conv.get_weights()
            weights[0][..., dead] = 0.0
            if conv.use_bias:
                weights[1][dead] = 0.0
            conv.set_weights(weights)
        silent += len(dead)
    return silent


def cut_generator(gen):
    """(smaller generator, facts): a copy of `gen` silenced and cut; shrink_model verifies that its
    outputs equal the silenced generator's on random inputs (SurgeryError otherwise)."""
    copy = keras.models.clone_model(gen)
    copy.set_weights(gen.get_weights())
    silent = silence_pruned(copy)
    small, report = shrink_model(copy, verify=True, strict=False)
    return small, {"silent_channels": silent, "macs_before": count_macs(copy), "macs_after": count_macs(small),
                   "params_before": int(copy.count_params()), "params_after": int(small.count_params())}


def channel_mac_model(gen):
    """(linear, pairs, constant) over the prunable BNs (prunable_bns order) for
    atmc_tf.constraints.mac_masks / BNChannelL1Prox(mac_model=...): the exact MACs of the generator
    cut to k_i channels in the i-th hidden Conv2D (atmc_tf.training.structure.channel_mac_model;
    the Dense block and the output convolution are kept whole)."""
    from atmc_tf.training.structure import channel_mac_model as model_of
    names = [conv.name for conv, _ in prunable_bns(gen)]
    linear, pairs, constant = model_of(gen, names)
    index = {n: i for i, n in enumerate(names)}
    return ([linear[n] for n in names], [(index[p], index[c], w) for (p, c), w in sorted(pairs.items())],
            float(constant))


def live_channels(gen):
    """{BN name: (nonzero gammas, channels)} of the prunable BatchNorms."""
    return {bn.name: (int(np.count_nonzero(keras.ops.convert_to_numpy(bn.gamma))), int(bn.gamma.shape[0]))
            for _, bn in prunable_bns(gen)}
