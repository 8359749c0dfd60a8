"""What a whole output channel costs, in parameters or MACs, when channels compete for one budget.

Removing output channel c of a layer P frees its own weights AND the slice of every consumer
that reads channel c (the next convolution's input channel, the Dense rows a Flatten makes of
it). A weight w of a consumer C joins input channel i (a channel of P) to output channel o (a
channel of C); it stays in the cut model only while both are kept. channel_costs attributes
each weight to the channels that can remove it:

    both i and o prunable   half to P's channel i, half to C's channel o
    only o prunable         all to C's channel o (i is a model input, or not traceable)
    only i prunable         all to P's channel i (C is kept whole: the classifier)
    neither                 a constant, paid up front

so that, for every set of kept channels, sum(costs of kept channels) + constant >= the weights
the cut model keeps (equality when a kept channel's neighbours are kept too): a budget on the
sum bounds the exported model's compressible parameters. Producer -> consumer links are traced
through layers that keep channel c in place (BatchNormalization, activations, Dropout, pooling,
padding, cropping, Flatten); a channel reaching an Add, a Concatenate or any other layer is not
traced further (the weights it would free there are not counted: surgery removes such channels
only when every branch agrees).

In MACs (unit="macs") the same attribution holds with every weight counted as the
multiply-accumulates it does per sample, the positions it is applied at (a Conv2D weight: the
layer's output height x width; a Dense weight: 1 per position of its input), so that
sum(costs of kept channels) + constant >= atmc_tf.export.count_macs(cut model): a budget on the
sum bounds the exported model's MACs. Channel removal never changes a spatial size, so these
multiplicities are those of the dense model.
"""
import keras

from atmc_tf.layers import SUPPORTED_LAYERS
from atmc_tf.training.diagnostics import inbound_graph

_PASS_THROUGH = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU,
                 keras.layers.ELU, keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise,
                 keras.layers.GaussianDropout, keras.layers.AlphaDropout, keras.layers.MaxPooling2D,
                 keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
                 keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.Flatten, keras.layers.Identity)


def _consumers(model):
    """{compressible layer name: [compressible layers reading its output channels in place]}."""
    graph, _, _ = inbound_graph(model)
    children = {}
    for name, parents in graph.items():
        for p in parents:
            children.setdefault(p, []).append(name)
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


COST_UNITS = ("params", "macs")


def channel_costs(model, keep_layers=(), unit="params"):
    """({layer name: cost of each of its output channels}, constant) for the compressible layers of a
    plain Keras model not in keep_layers, attributed as this module's docstring says, in parameters
    (unit="params") or multiply-accumulates per sample (unit="macs"); feed them to
    GroupL0(budget_unit="costs") with budget = parameter (or MAC) budget - constant."""
    if unit not in COST_UNITS:
        raise ValueError(f"unit must be one of {COST_UNITS}, got {unit!r}")
    consumers = _consumers(model)
    layers = [l for l in model.layers if isinstance(l, SUPPORTED_LAYERS)]
    if unit == "macs":
        from atmc_tf.export.surgery import layer_macs  # builds no TensorFlow graph at import
        macs = layer_macs(model)
        # Every layer here has macs = kernel weights x positions, so a weight's cost is its positions.
        weight = {l.name: macs.get(l.name, 0) / int(l.kernel.shape.num_elements()) for l in layers}
    else:
        weight = {l.name: 1.0 for l in layers}
    prunable = {l.name for l in layers if l.name not in keep_layers}
    fed_by_prunable = {c.name for p, cs in consumers.items() if p in prunable for c in cs}
    costs, constant = {}, 0.0
    for layer in layers:
        size = int(layer.kernel.shape.num_elements()) * weight[layer.name]
        channels = _out_channels(layer)
        if layer.name in prunable:
            per_channel = size / channels * (0.5 if layer.name in fed_by_prunable else 1.0)
            for consumer in consumers.get(layer.name, []):
                share = 0.5 if consumer.name in prunable else 1.0
                per_channel += int(consumer.kernel.shape.num_elements()) * weight[consumer.name] / channels * share
            costs[layer.name] = per_channel
        elif layer.name not in fed_by_prunable:
            constant += size  # kept whole and fed by nothing prunable: paid up front
        # else: kept whole, its weights are paid by the channels feeding it (share 1)
    return costs, constant


def _out_channels(layer):
    shape = layer.kernel.shape
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return int(shape[2]) * int(shape[3])
    return int(shape[-1])
