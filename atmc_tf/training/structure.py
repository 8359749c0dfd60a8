"""What kept output channels cost, in parameters or MACs, when channels compete for one budget.

Removing output channel c of a layer P frees its own weights AND the slice of every consumer
that reads channel c (the next convolution's input channel, the Dense rows a Flatten makes of
it). A weight w of a consumer C joins input channel i (a channel of P) to output channel o (a
channel of C); it stays in the cut model only while both are kept. So the cut model's weights are
not a sum of per-channel costs: with k_P channels kept in each layer P they are

    constant + sum_P linear[P] * k_P + sum_(P, C) pairs[(P, C)] * k_P * k_C

(channel_cost_model), the pairs being the consumers C that read a prunable P in place. A budget
on that exact count (GroupL0's group_costs + group_pairs) bounds the exported model's
compressible parameters. Producer -> consumer links are traced through layers that keep channel
c in place (BatchNormalization, activations, Dropout, pooling, padding, cropping, upsampling,
Flatten); a channel reaching an Add, a Concatenate or any other layer is not traced further
(surgery removes such channels only when every branch agrees).

In MACs (unit="macs") the same holds with every weight counted as the multiply-accumulates it
does per sample, the positions it is applied at (a Conv2D weight: the layer's output height x
width; a Dense weight: 1 per position of its input), so that the model gives
atmc_tf.export.count_macs(cut model). Channel removal never changes a spatial size, so these
multiplicities are those of the dense model.
"""
import keras

from atmc_tf.layers import SUPPORTED_LAYERS
from atmc_tf.training.diagnostics import inbound_graph

_PASS_THROUGH = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU,
                 keras.layers.ELU, keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise,
                 keras.layers.GaussianDropout, keras.layers.AlphaDropout, keras.layers.MaxPooling2D,
                 keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
                 keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.Flatten, keras.layers.Identity,
                 keras.layers.UpSampling2D)


def _children(graph):
    """{layer name: [names of the layers reading its output]} from inbound_graph's parents map."""
    children = {}
    for name, parents in graph.items():
        for p in parents:
            children.setdefault(p, []).append(name)
    return children


def _consumers(model):
    """{compressible layer name: [compressible layers reading its output channels in place]}."""
    graph, _, _ = inbound_graph(model)
    children = _children(graph)
    layers = {l.name: l for l in model.layers}
    out = {}
    for name, layer in layers.items():
        if not isinstance(layer, SUPPORTED_LAYERS):
            continue
        found, todo = [], list(children.get(name, []))
        while todo:
            child = layers.get(todo.pop())
            if child is None:
                continue
            if isinstance(child, SUPPORTED_LAYERS) and len(graph[child.name]) == 1:
                found.append(child)
            elif type(child) in _PASS_THROUGH and len(graph[child.name]) == 1:
                todo.extend(children.get(child.name, []))
        out[name] = found
    return out


def uncuttable_layers(model):
    """Names of the compressible layers whose output channels reach, in place (through the
    channel-preserving layers channel_cost_model traces), a model output or a layer other than a
    Conv2D / DepthwiseConv2D / Dense consumer (a Concatenate passes it on, at its offset): an Add (a
    residual stream), Multiply, Reshape, ... Surgery removes such a channel only where every branch of the merge drops it, or not
    at all, which a budget over single layers cannot promise; --structure=channel keeps these layers
    whole (with the classifier), so what the budget counts is what the cut model keeps. On a
    MobileNetV2-style model these are the stem and the 1x1 projections that feed the Add skips; the
    expansion channels of every block (their 1x1 expand, depthwise, and the projection's input
    slice) are what is pruned."""
    graph, _, outputs = inbound_graph(model)
    children = _children(graph)
    layers = {l.name: l for l in model.layers}
    out = []
    for name, layer in layers.items():
        if not isinstance(layer, SUPPORTED_LAYERS):
            continue
        todo, cuttable = [name], True
        while todo and cuttable:
            current = todo.pop()
            cuttable = current not in outputs
            for child in children.get(current, []):
                child_layer = layers.get(child)
                if isinstance(child_layer, SUPPORTED_LAYERS) and len(graph[child]) == 1:
                    continue
                if isinstance(child_layer, keras.layers.Concatenate) or (
                        type(child_layer) in _PASS_THROUGH and len(graph[child]) == 1):  # the channel goes on
                    todo.append(child)
                    continue
                cuttable = False
        if not cuttable:
            out.append(name)
    return out


COST_UNITS = ("params", "macs")


def channel_cost_model(model, prunable, unit="params"):
    """The exact parameters (unit="params") or MACs (unit="macs") of the compressible layers of `model`
    cut to k_P output channels in each layer P of `prunable` (names of Conv2D / DepthwiseConv2D / Dense
    layers), as (linear, pairs, constant):

        cost(k) = constant + sum_P linear[P] * k_P + sum_(P, C) pairs[(P, C)] * k_P * k_C

    A prunable Conv2D / Dense C reading a prunable P in place (through channel-preserving layers, as
    channel_costs traces them) costs in proportion to k_P * k_C: a pair. A layer whose input is not a
    prunable layer's output scales with its own k only, as does a DepthwiseConv2D (each of its channels
    reads one input channel: surgery cuts the two together); a layer kept whole that reads a prunable P
    scales with k_P; a layer kept whole reading nothing prunable is constant. Exact for every choice of
    kept channels whose cut the surgery makes (count of the cut model's kernel weights, or count_macs),
    unlike an additive attribution (each weight split between the two channels it joins), which
    over-counts the weights between a kept and a cut channel (at a quarter of every layer kept, a
    budget on it kept a sixteenth of LeNet's weights); so a
    budget can keep the longest prefix of a ranking whose cost fits (GroupL0's group_pairs,
    atmc_tf.constraints.mac_masks). A channel reaching an Add or a Concatenate is counted as cut: surgery
    removes it only where every branch agrees, so there the cost is a lower bound."""
    if unit not in COST_UNITS:
        raise ValueError(f"unit must be one of {COST_UNITS}, got {unit!r}")
    layers = {l.name: l for l in model.layers if isinstance(l, SUPPORTED_LAYERS)}
    prunable = list(prunable)
    bad = [n for n in prunable if n not in layers]
    if bad:
        raise ValueError(f"channel_cost_model prunes Conv2D / DepthwiseConv2D / Dense layers of the model only; "
                         f"got {bad}")
    if unit == "macs":
        from atmc_tf.export.surgery import layer_macs
        amount = layer_macs(model)
    else:
        amount = {n: int(l.kernel.shape.num_elements()) for n, l in layers.items()}
    producer = {}
    for p, cs in _consumers(model).items():
        for c in cs:
            producer[c.name] = p
    linear, pairs, constant = {n: 0.0 for n in prunable}, {}, 0.0
    for name, layer in layers.items():
        m = float(amount.get(name, 0))
        out = _out_channels(layer)
        src = producer.get(name) if producer.get(name) in linear else None
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        if name in linear and src is not None and not depthwise:
            pairs[(src, name)] = m / (_out_channels(layers[src]) * out)
        elif name in linear:
            linear[name] += m / out
        elif src is not None:
            linear[src] += m / _out_channels(layers[src])
        else:
            constant += m
    return linear, pairs, constant


def channel_mac_model(model, prunable):
    """channel_cost_model(model, prunable, unit="macs"): the exact MACs of the cut model."""
    return channel_cost_model(model, prunable, unit="macs")


def _out_channels(layer):
    shape = layer.kernel.shape
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return int(shape[2]) * int(shape[3])
    return int(shape[-1])


# --- a pruned channel outputs exactly zero ------------------------------------------------------
#
# A channel whose kernel slice is zero still outputs its bias, and the BatchNormalization after it
# turns even a zero into beta - gamma * mean / sqrt(var + eps): a constant that a 'same'-padded KxK
# consumer cannot fold into its bias (its border outputs see the zero padding), so surgery has to
# keep the channel. ChannelSilencer makes every channel a structured constraint pruned output exactly
# 0, which every consumer drops: with its kernel slice it zeroes the layer's bias and, for every
# BatchNormalization the channel reaches in place, gamma, beta and the moving mean (the channel's
# input is exactly 0, so its true mean is). BN then outputs gamma * (0 - 0) / sqrt(var + eps) + beta
# = 0 in training and in inference mode alike. A DepthwiseConv2D channel whose input channel is so
# silenced reads zeros and is silenced too (its bias and BNs), whatever its own kernel: surgery cuts
# the two together (they are one channel group there).

# Layers a zero channel passes through as a zero, in place (activations are checked at f(0) == 0).
_ZERO_PRESERVING = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                    keras.layers.Activation, keras.layers.Dropout, keras.layers.SpatialDropout2D,
                    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
                    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
                    keras.layers.GlobalMaxPooling2D, keras.layers.ZeroPadding2D, keras.layers.Cropping2D,
                    keras.layers.Identity, keras.layers.UpSampling2D)


def _zero_at_zero(fn):
    if fn is None:
        return True
    import numpy as np
    return float(np.asarray(keras.ops.convert_to_numpy(fn(keras.ops.zeros((1,), "float32"))))[0]) == 0.0


def _passes_zero(layer):
    if type(layer) not in _ZERO_PRESERVING:
        return False
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.axis in (-1, len(layer.input.shape) - 1)
    if isinstance(layer, keras.layers.Activation):
        return _zero_at_zero(layer.activation)
    return True  # ReLU, LeakyReLU, ELU (f(0) = 0), dropout, pooling, padding, cropping, upsampling: zeros stay zeros


class ChannelSilencer:
    """Makes the pruned output channels of a wrapped model's layers `layer_names` (the inner layers'
    names, as a constraint's TensorInfo.layer) output exactly 0 (see the comment above). A channel is
    pruned when its effective kernel slice is all zero; silence(assign) then zeroes its bias and the
    gamma / beta / moving mean of every BatchNormalization it reaches in place.

    A DepthwiseConv2D channel and the channel it reads (through BN, activations, pooling, padding)
    are one channel in the cut model: surgery removes them together when either is silenced. So that
    the constraint's budget counts what surgery removes, silence() prunes them together too: the
    depthwise channels reading a pruned channel lose their kernel slice, bias and BNs, and a channel
    read by nothing but depthwise channels that are all pruned loses its own (kernels only for
    factorization="none"). Built once (the graph walk); silence(assign) runs in a tf.function."""

    def __init__(self, net, layer_names):
        from atmc_tf.layers import atmc_wrappers
        names = set(layer_names)
        wrappers = atmc_wrappers(net)
        by_name = {w.name: w for w in wrappers}
        graph, _, outputs = inbound_graph(net)
        children = _children(graph)
        layers = {l.name: l for l in net.layers}
        self._wrappers = by_name
        # [(wrapper, own, source wrapper name or None, [companion variables], exclusive reader or None)]
        self.plan = []
        sources = {}        # depthwise wrapper name -> the silenced wrapper feeding it in place
        for w in wrappers:
            source = sources.get(w.name)
            if w.layer.name not in names and source is None:
                continue
            if not _zero_at_zero(w.layer.activation):
                continue  # a zero channel would output activation(0) != 0: nothing to silence
            companions = [w.layer.bias] if w.layer.use_bias else []
            readers, escapes = [], w.name in outputs
            todo = list(children.get(w.name, []))
            while todo:
                child = layers.get(todo.pop())
                if child is None or len(graph.get(child.name, [])) != 1:
                    escapes = True
                    continue
                if child.name in by_name:
                    readers.append(child.name)
                    if isinstance(child.layer, keras.layers.DepthwiseConv2D):
                        sources[child.name] = w.name
                    else:
                        escapes = True
                    continue
                if not _passes_zero(child):
                    escapes = True
                    continue
                if isinstance(child, keras.layers.BatchNormalization):
                    companions += [v for v in (child.gamma if child.scale else None,
                                               child.beta if child.center else None, child.moving_mean)
                                   if v is not None]
                escapes = escapes or child.name in outputs or not children.get(child.name)
                todo.extend(children.get(child.name, []))
            exclusive = readers[0] if len(readers) == 1 and not escapes and readers[0] in sources else None
            self.plan.append((w, w.layer.name in names, source, companions, exclusive))
        # The Conv2D / Dense kernels that read each silenced channel in place (a Dense through a Flatten reads
        # it at every position): their slice of a pruned channel only ever multiplies zeros.
        self.slice_readers = {w.name: _slice_readers(w, graph, children, layers, by_name)
                              for w, own, _, _, _ in self.plan if own and w.factorization == "none"}

    def pruned(self):
        """{wrapper name: bool tensor over its output channels}: what this step's silence() zeroes."""
        import tensorflow as tf
        from atmc_tf.layers import kernel_channel_axes
        own_dead, out = {}, {}
        for w, own, _, _, _ in self.plan:
            kernel = tf.convert_to_tensor(w.effective_kernel())
            rank = len(kernel.shape)
            axes = [a % rank for a in kernel_channel_axes(w.layer)]
            channels = 1
            for a in axes:
                channels *= int(kernel.shape[a])
            if own:  # pruned by the constraint: its kernel slice is zero
                own_dead[w.name] = tf.reshape(
                    tf.reduce_all(tf.equal(kernel, 0), axis=[a for a in range(rank) if a not in axes]), [channels])
            else:
                own_dead[w.name] = tf.zeros([channels], tf.bool)
        for w, _, source, _, exclusive in self.plan:
            dead = own_dead[w.name]
            if exclusive is not None and exclusive in own_dead:  # read only by depthwise channels, all pruned
                mult = int(self._wrappers[exclusive].layer.kernel.shape[-1])
                dead = tf.logical_or(dead, tf.reduce_all(tf.reshape(own_dead[exclusive], [-1, mult]), axis=1))
            if source in out:  # a depthwise channel reading a silenced channel reads zeros
                dead = tf.logical_or(dead, tf.repeat(out[source], int(w.layer.kernel.shape[-1])))
            out[w.name] = dead
        return out

    def zero_read_slices(self, variables, values):
        """`values` (of the trainer's compressed `variables`) with every reader's input slice of a pruned
        channel set to 0 (slice_readers). Those weights multiply an input that is exactly 0, so the outputs do
        not change; surgery removes them, and a codebook fitted after this (the trainer runs it right after a
        structured constraint) takes each channel's scale from the weights the cut model keeps. Otherwise the
        largest |w| of an output channel can sit in a removed slice, and the cut kernel's int8 scale, hence
        its codes, differ from the trained ones."""
        import tensorflow as tf
        from atmc_tf.layers import kernel_channel_axes
        index = {id(v): i for i, v in enumerate(variables)}
        where = {name: index.get(id(self._wrappers[name].layer.kernel)) for name in self._wrappers}
        values = list(values)
        for name, readers in self.slice_readers.items():
            if not readers or where.get(name) is None:
                continue
            kernel = values[where[name]]
            rank = len(kernel.shape)
            axes = [a % rank for a in kernel_channel_axes(self._wrappers[name].layer)]
            dead = tf.reshape(tf.reduce_all(tf.equal(kernel, 0), axis=[a for a in range(rank) if a not in axes]),
                              [-1])
            channels = int(dead.shape[0])
            for reader, flat in readers:
                i = where.get(reader)
                if i is None:
                    continue
                rk = values[i]
                if len(rk.shape) == 2:  # Dense: input rows; through a Flatten, row r reads channel r % channels
                    rows = int(rk.shape[0])
                    if rows % channels or (not flat and rows != channels):
                        continue
                    mask = tf.reshape(tf.tile(dead, [rows // channels]), [rows, 1])
                elif len(rk.shape) == 4 and int(rk.shape[2]) == channels:  # Conv2D: input channels
                    mask = tf.reshape(dead, [1, 1, channels, 1])
                else:
                    continue
                values[i] = tf.where(mask, tf.zeros_like(rk), rk)
        return values

    def silence(self, assign):
        """assign(variable, value): zero what every pruned channel still has (see the class docstring)."""
        import tensorflow as tf
        dead = self.pruned()
        for w, _, _, companions, _ in self.plan:
            for var in companions:
                value = tf.convert_to_tensor(var.value)
                assign(var, tf.where(dead[w.name], tf.zeros_like(value), value))
            if w.factorization == "none":
                kernel = tf.convert_to_tensor(w.layer.kernel.value)
                mask = tf.reshape(dead[w.name], kernel.shape[2:] if isinstance(w.layer, keras.layers.DepthwiseConv2D)
                                  else kernel.shape[-1:])
                assign(w.layer.kernel, tf.where(mask, tf.zeros_like(kernel), kernel))


def _slice_readers(w, graph, children, layers, by_name):
    """[(reader wrapper name, through a Flatten)] of the Conv2D / Dense wrappers (factorization "none") that read
    w's output channels in place, through zero-preserving layers and Flatten; any other path is not followed."""
    out, todo = [], [(c, False) for c in children.get(w.name, [])]
    while todo:
        name, flat = todo.pop()
        child = layers.get(name)
        if child is None or len(graph.get(name, [])) != 1:
            continue
        if name in by_name:
            r = by_name[name]
            if not isinstance(r.layer, keras.layers.DepthwiseConv2D) and r.factorization == "none" \
                    and int(getattr(r.layer, "groups", 1)) == 1:
                out.append((name, flat))
            continue
        if isinstance(child, keras.layers.Flatten) or _passes_zero(child):
            flat = flat or isinstance(child, keras.layers.Flatten)
            todo.extend((c, flat) for c in children.get(name, []))
    return out


def depthwise_ties(net):
    """{DepthwiseConv2D layer name: the layer whose output channels it alone reads} of a wrapped model
    (inner layer names): the pairs that are one channel of the cut model (TensorInfo.reads)."""
    silencer = ChannelSilencer(net, [w.layer.name for w in _wrappers(net)])
    return {silencer._wrappers[exclusive].layer.name: w.layer.name
            for w, _, _, _, exclusive in silencer.plan if exclusive is not None}


def _wrappers(net):
    from atmc_tf.layers import atmc_wrappers
    return atmc_wrappers(net)
