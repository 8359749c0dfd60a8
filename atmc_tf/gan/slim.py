"""From a GS-trained generator to the smaller one: silence the pruned channels, then channel surgery.

A channel whose BN gamma and beta are 0 (BNChannelL1Prox leaves them so) outputs exactly 0 whatever
its Conv2D (or the project Dense's units of that channel) computes, so zeroing that kernel slice changes
no output; it lets surgery (atmc_tf.export.surgery, which reads constants from zero kernel slices) prove
the channel is 0 and cut it from the producer, the BN and the consumer (strict=False: a layer surgery
does not know keeps its channels).
"""
import keras
import numpy as np

from atmc_tf.export.surgery import count_macs, shrink_model
from atmc_tf.gan.models import channel_groups, projection, prunable_bns


def _dead_channels(bn, group):
    """Channels whose gammas and betas are all 0 (a channel is `group` of them: entries p*C + c)."""
    gamma, beta = (keras.ops.convert_to_numpy(v).reshape(group, -1) for v in (bn.gamma, bn.beta))
    return np.flatnonzero(np.all((gamma == 0) & (beta == 0), axis=0))


def _units(layer, channels, c):
    """The output units of `layer` that make `channels` of its c channels: units j with j % c in channels (the
    same indices for a Conv2D, whose units are its channels)."""
    return np.flatnonzero(np.isin(np.arange(int(layer.kernel.shape[-1])) % c, channels))


def silence_pruned(gen):
    """Zero the kernel slice (and bias) of every prunable channel whose BN gammas and betas are 0;
    returns how many channels are silent."""
    silent = 0
    for (layer, bn), group in zip(prunable_bns(gen, dense=True), channel_groups(gen, dense=True)):
        dead = _dead_channels(bn, group)
        if len(dead):
            units = _units(layer, dead, int(bn.gamma.shape[0]) // group)
            weights = layer.get_weights()
            weights[0][..., units] = 0.0
            if layer.use_bias:
                weights[1][units] = 0.0
            layer.set_weights(weights)
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


def channel_mac_model(gen, dense=False):
    """(linear, pairs, constant) over the prunable BNs (prunable_bns order) for
    atmc_tf.constraints.mac_masks / BNChannelL1Prox(mac_model=...): the exact MACs of the generator
    cut to k_i channels in the i-th prunable layer (prunable_bns(gen, dense);
    atmc_tf.training.structure.channel_mac_model for the hidden Conv2D layers; the output convolution is
    kept whole). The project Dense's channels (dense=True) live behind its Reshape, which structure does
    not trace: its MACs are linear in its k, and the first conv's MACs, which structure counts as linear
    in that conv's k alone, become the pair (project, first conv)."""
    from atmc_tf.export.surgery import layer_macs
    from atmc_tf.training.structure import channel_mac_model as model_of
    names = [layer.name for layer, _ in prunable_bns(gen, dense)]
    linear, pairs, constant = model_of(gen, names[1:] if dense else names)
    if dense:
        project, _, channels, first = projection(gen)
        macs = layer_macs(gen)
        constant -= macs[project.name]  # structure: kept whole, fed by nothing prunable
        linear[project.name] = macs[project.name] / channels
        if first.name in linear:
            linear[first.name] -= macs[first.name] / first.filters
            pairs[(project.name, first.name)] = macs[first.name] / (channels * first.filters)
        else:  # (a first conv that is not prunable scales with the project's k alone)
            constant -= macs[first.name]
            linear[project.name] += macs[first.name] / channels
    index = {n: i for i, n in enumerate(names)}
    return ([linear[n] for n in names], [(index[p], index[c], w) for (p, c), w in sorted(pairs.items())],
            float(constant))


def live_channels(gen, dense=False):
    """{BN name: (channels with a nonzero gamma, channels)} of the prunable BatchNorms (prunable_bns(gen,
    dense); a project channel is a group of gammas: channel_groups)."""
    out = {}
    for (_, bn), group in zip(prunable_bns(gen, dense), channel_groups(gen, dense)):
        gamma = keras.ops.convert_to_numpy(bn.gamma).reshape(group, -1)
        out[bn.name] = (int(np.count_nonzero(np.any(gamma != 0, axis=0))), int(gamma.shape[1]))
    return out
