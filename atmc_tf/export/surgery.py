"""Channel surgery: a genuinely smaller Keras model without the channels that do nothing.

    small, report = shrink_model(model)      # outputs equal (float32 round-off), fewer filters

Why here, in `atmc_tf.export`: surgery is a deployment step on a finished, plain Keras
model, like `to_int8_tflite` (whose input it prepares); it builds Keras layers, so it
does not belong in the pure-math `constraints` package, and it is not a wrapper of
`atmc_tf.layers`. A wrapped model goes through `strip_model` first (which refuses one
whose constraints were never enforced). Keras is imported inside the functions, so
importing `atmc_tf.export` still does not import TensorFlow.

THE RULE (exact, never approximate; inference mode: BatchNormalization uses its moving
statistics, Dropout is the identity).
A "channel" is one index of the last axis (channels_last). Channels are tied into groups
that can only go together:
- a per-channel layer ties its input channel k to its output channel k: BatchNormalization
  (axis -1; gamma/beta/moving_mean/moving_variance are sliced), ReLU, LeakyReLU, ELU,
  Activation with an elementwise function, Dropout and its kin, Identity,
  MaxPooling2D/AveragePooling2D, GlobalAveragePooling2D/GlobalMaxPooling2D,
  ZeroPadding2D, Cropping2D, UpSampling2D (nearest or bilinear: a constant channel stays that
  constant; atmc_tf.gan builds generators with UpSampling2D + Conv2D, so Conv2DTranspose is not
  handled);
- DepthwiseConv2D ties input channel i to its outputs i*mult .. i*mult+mult-1 (its kernel
  (kh, kw, in, mult) is sliced on axis 2): a depthwise channel goes only with its input
  channel and all `mult` outputs of it;
- Add / Subtract / Average tie channel k of every input and of the output (so a channel
  is removed only where it is removable in every branch);
- Concatenate (last axis) ties input j's channel k to output channel offset_j + k;
- Flatten (channels_last) ties channel k to its features p*C + k at every position p, and so does a
  Reshape to a flat vector (target_shape of one dimension);
- a Reshape of a flat vector (rank-2 input) into channels (target (..., C)) ties feature j to channel
  j % C (the inverse of Flatten: a generator's Dense "project" reshaped into its first feature map
  loses channel c's features j = p*C + c at every position p together).
Conv2D and Dense are the producers and consumers: a group starts at their output channels
and ends at their inputs, where the channels are mixed.

A group is removed when, at EVERY consumer (Conv2D or Dense) that reads it, each of its
channels either
  (a) meets all-zero consumer weights (the value does not matter), or
  (b) is a known constant c, the same for every input and position, that folds exactly into
      the consumer's bias (bias += c * sum of the kernel slice): c == 0 always folds
      (nothing to fold); c != 0 folds into a Dense and into a Conv2D whose every tap lies
      inside the input ('valid' padding, or 1x1 kernels). A nonzero constant read by a
      'same'-padded KxK Conv2D (K > 1) does NOT fold (its border outputs see zero padding):
      that group is kept.
The constants come from forward propagation: a Conv2D/Dense/DepthwiseConv2D output channel
is a constant when its kernel slice is zero on every non-constant input (then the value is
activation(bias + constant inputs' contributions), with the same padding rule); BN maps a
constant c to gamma*(c - mean)/sqrt(var + eps) + beta (so a zero, bias-less conv channel
followed by BN is the constant beta - gamma*mean/sqrt(var + eps), not zero); elementwise
layers map constants to constants; ZeroPadding2D keeps only zero constants; pooling keeps
constants (Keras/TF 'same' pooling ignores the padding), and so does UpSampling2D.

A group is KEPT (safe, never wrong) when it touches a model input or output, the output of
a Conv2D/Dense whose activation mixes channels (softmax), or a tensor whose channels would
all go (one group of it is kept so no layer gets zero channels). It is REFUSED with one
SurgeryError line naming the layer and its class when it would be removable but a layer
that surgery cannot cut through reads it (strict=False keeps it instead): any other Reshape and any other layer it does not know
(including subclasses of the known layers, nested models, Conv2D with groups > 1 or
channels_first, BN on another axis, broadcasting Add). Refused outright: subclassed models
and a layer called more than once. Multiple inputs and outputs are supported (their
channels are kept).

The result is a Functional model (a Sequential input comes back Functional) with the same
layer names; with verify=True (the default) shrink_model runs both models on random inputs
and raises SurgeryError if they differ, so a wrong model is never returned silently.
"""
import numpy as np

# Elementwise activation functions (by the function's __name__): they map constant channels to
# constant channels and never mix channels. softmax / log_softmax are not in it.
ELEMENTWISE_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "sigmoid",
    "hard_sigmoid", "tanh", "hard_tanh", "silu", "swish", "hard_silu", "hard_swish", "softplus",
    "softsign", "exponential", "mish", "log_sigmoid", "sparse_plus", "squareplus", "tanh_shrink",
    "soft_shrink", "hard_shrink", "threshold",
})


class SurgeryError(ValueError):
    """A model or layer that channel surgery cannot cut safely; the message names it."""


def _keras():
    import keras
    return keras


# --- layer kinds ------------------------------------------------------------------------

def _exact(layer, *names):
    keras = _keras()
    return any(type(layer) is getattr(keras.layers, n, None) for n in names)


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _act_name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


def _kind(layer, in_shapes):
    """(kind, reason): kind is one of input, conv, dense, dw, bn, elementwise, identity, keep,
    zeropad, flatten, unflatten, merge, concat, unknown; reason says why a layer is unknown."""
    keras = _keras()
    name = type(layer).__name__
    if isinstance(layer, keras.Model):
        return "unknown", "it is a nested model (build the model flat)"
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return "unknown", "it is quantized or has LoRA enabled"
    rank = len(in_shapes[0]) if in_shapes else 0
    if _exact(layer, "InputLayer"):
        return "input", ""
    if _exact(layer, "Conv2D"):
        if layer.groups != 1 or not _channels_last(layer):
            return "unknown", "a grouped or channels_first Conv2D is not supported"
        return "conv", ""
    if _exact(layer, "Dense"):
        return "dense", ""
    if _exact(layer, "DepthwiseConv2D"):
        if not _channels_last(layer):
            return "unknown", "a channels_first DepthwiseConv2D is not supported"
        return "dw", ""
    if _exact(layer, "BatchNormalization"):
        if layer.axis not in (-1, rank - 1):
            return "unknown", f"it normalizes axis {layer.axis}, not the channel axis"
        return "bn", ""
    if _exact(layer, "ReLU", "LeakyReLU", "ELU"):
        return "elementwise", ""
    if _exact(layer, "Activation"):
        if _act_name(layer.activation) not in ELEMENTWISE_ACTIVATIONS:
            return "unknown", f"its activation '{_act_name(layer.activation)}' mixes channels"
        return "elementwise", ""
    if _exact(layer, "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
              "GaussianDropout", "GaussianNoise", "AlphaDropout", "Identity", "ActivityRegularization"):
        return "identity", ""
    if _exact(layer, "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
              "Cropping2D", "UpSampling2D"):
        if not _channels_last(layer):

            return "unknown", f"a channels_first {name} is not supported"
        return "keep", ""
    if _exact(layer, "ZeroPadding2D"):
        if not _channels_last(layer):
            return "unknown", "a channels_first ZeroPadding2D is not supported"
        return "zeropad", ""
    if _exact(layer, "Flatten"):
        if rank > 2 and not _channels_last(layer):
            return "unknown", "a channels_first Flatten reorders the channels"
        return "flatten", ""
    if _exact(layer, "Add", "Subtract", "Average"):
        if len({tuple(s[1:]) for s in in_shapes}) != 1:
            return "unknown", "its inputs broadcast (shapes differ)"
        return "merge", ""
    if _exact(layer, "Concatenate"):
        if layer.axis not in (-1, rank - 1):
            return "unknown", f"it concatenates on axis {layer.axis}, not the channel axis"
        return "concat", ""
    if _exact(layer, "Reshape"):
        if rank == 2:
            return "unflatten", ""
        if len(layer.target_shape) == 1:
            return "flatten", ""
        return "unknown", ("a Reshape between two shapes of several axes moves channels across positions (only a "
                           "flat vector into channels, or channels into a flat vector, is understood)")
    return "unknown", "surgery does not know how it uses its input channels"


def _effectively_valid(layer):
    """Every kernel tap of every output position lies inside the input (no padding is read)."""
    if isinstance(layer, _keras().layers.Dense):
        return True
    return layer.padding == "valid" or all(int(k) == 1 for k in layer.kernel_size)


def _activate(fn, values):
    keras = _keras()
    return keras.ops.convert_to_numpy(fn(np.asarray(values, np.float32))).astype(np.float64)


# --- the graph (public Keras API only: clone_model's call_function) -----------------------

class _Node:
    def __init__(self, layer, inputs, outputs, kwargs_tensors):
        self.layer, self.inputs, self.outputs = layer, inputs, outputs
        self.kwargs_tensors = kwargs_tensors


def _copy_layer(layer):
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as err:  # noqa: BLE001 -- any failure of a user layer's config round trip
        raise SurgeryError(f"layer '{layer.name}' ({type(layer).__name__}) cannot be copied from its config: "
                           f"{type(err).__name__}: {err}") from None


def _rebuild(model, clone_function, call_function):
    """clone_model for Functional models; a Sequential one is rebuilt as a Functional chain."""
    keras = _keras()
    if isinstance(model, keras.Sequential):
        (spec,) = model.inputs
        x = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=spec.name)
        inputs = x
        for layer in model.layers:
            x = call_function(clone_function(layer), x)
        return keras.Model(inputs, x, name=model.name)
    return keras.models.clone_model(model, clone_function=clone_function, call_function=call_function)


def _check_model(model):
    keras = _keras()
    from atmc_tf import compat
    if not isinstance(model, keras.Model) or not model.built:
        raise SurgeryError("channel surgery needs a built Sequential or Functional Keras model")
    if not compat.is_graph_model(model):
        raise SurgeryError(f"model '{model.name}' ({type(model).__name__}) is a subclassed model: channel "
                           "surgery needs a Sequential or Functional model, whose layer graph it can read")


def _graph(model):
    """(nodes in call order, input tensors, output tensors) of a copy of `model`; node.layer is the
    ORIGINAL layer, tensors are the copy's KerasTensors (shapes and identities only)."""
    keras = _keras()
    _check_model(model)
    original, nodes, seen = {}, [], set()

    def clone_function(layer):
        new = _copy_layer(layer)
        original[id(new)] = layer
        return new

    def call_function(layer, *args, **kwargs):
        old = original[id(layer)]
        if id(layer) in seen:
            raise SurgeryError(f"layer '{old.name}' ({type(old).__name__}) is called more than once in the "
                               "model; channel surgery slices each layer for one call")
        seen.add(id(layer))
        ins = [t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
        kw = [t for t in keras.tree.flatten(kwargs) if isinstance(t, keras.KerasTensor)]
        out = layer(*args, **kwargs)
        outs = [t for t in keras.tree.flatten(out) if isinstance(t, keras.KerasTensor)]
        nodes.append(_Node(old, ins, outs, kw))
        return out

    copy = _rebuild(model, clone_function, call_function)
    return nodes, list(copy.inputs), list(copy.outputs)


# --- counting -----------------------------------------------------------------------------

def layer_macs(model):
    """{layer name: multiply-accumulates of one sample through it} for the model's Conv2D,
    DepthwiseConv2D and Dense layers (the compressible ones; BN, activations, pooling are not
    counted), from each layer's output size: Conv2D out_h*out_w*filters*kh*kw*in/groups,
    DepthwiseConv2D out_h*out_w*in*mult*kh*kw, Dense (positions)*in*units. Every one of these is
    (kernel weights) x (the positions each weight is applied at)."""
    keras = _keras()
    nodes, _, _ = _graph(model)
    macs = {}
    for node in nodes:
        layer = node.layer
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            continue
        in_shape, out_shape = node.inputs[0].shape, node.outputs[0].shape
        if isinstance(layer, keras.layers.Dense):
            positions = int(np.prod([int(d) for d in in_shape[1:-1]], dtype=np.int64))
            macs[layer.name] = positions * int(in_shape[-1]) * layer.units
            continue
        kh, kw = (int(k) for k in layer.kernel_size)
        spatial = out_shape[1:3] if _channels_last(layer) else out_shape[2:4]
        out_hw = int(spatial[0]) * int(spatial[1])
        kernel = tuple(layer.kernel.shape)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            macs[layer.name] = out_hw * kernel[2] * kernel[3] * kh * kw
        else:
            macs[layer.name] = out_hw * kernel[3] * kh * kw * kernel[2]
    return {name: int(m) for name, m in macs.items()}


def count_macs(model):
    """Multiply-accumulates of one sample through the model's Conv2D, DepthwiseConv2D and Dense
    layers: the sum of layer_macs."""
    return int(sum(layer_macs(model).values()))


# --- analysis -------------------------------------------------------------------------------

class _UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, a):
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self):
        return np.array([self.find(a) for a in range(len(self.parent))], dtype=np.int64)


def _consts(node, kind, known_in, value_in):
    """(known, value) per output channel of a node, from its inputs' constants."""
    layer = node.layer
    c_out = int(node.outputs[0].shape[-1])
    if kind in ("conv", "dense"):
        w = np.asarray(layer.kernel.numpy(), np.float64)
        w = w.reshape(-1, w.shape[-2], w.shape[-1])  # (taps, in, out)
        bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(c_out)
        k, v = known_in[0], value_in[0]
        touches = np.any(w != 0, axis=0)  # (in, out)
        constant_in = k & ((v == 0) | _effectively_valid(layer))
        known = ~np.any(touches & ~constant_in[:, None], axis=0)
        value = bias + np.where(k, v, 0.0) @ w.sum(axis=0)
        if _act_name(layer.activation) not in ELEMENTWISE_ACTIVATIONS:
            return np.zeros(c_out, bool), np.zeros(c_out)
        return known, np.where(known, _activate(layer.activation, value), 0.0)
    if kind == "dw":
        w = np.asarray(layer.kernel.numpy(), np.float64)  # (kh, kw, in, mult)
        c_in, mult = w.shape[2], w.shape[3]
        bias = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(c_out)).reshape(c_in, mult)
        k, v = known_in[0], value_in[0]
        zero_slice = np.all(w == 0, axis=(0, 1))  # (in, mult)
        constant_in = k & ((v == 0) | _effectively_valid(layer))
        known = zero_slice | constant_in[:, None]
        value = bias + np.where(k, v, 0.0)[:, None] * w.sum(axis=(0, 1))
        known, value = known.reshape(-1), value.reshape(-1)
        if _act_name(layer.activation) not in ELEMENTWISE_ACTIVATIONS:
            return np.zeros(c_out, bool), np.zeros(c_out)
        return known, np.where(known, _activate(layer.activation, value), 0.0)
    if kind == "bn":
        k, v = known_in[0], value_in[0]
        inv = 1.0 / np.sqrt(np.asarray(layer.moving_variance.numpy(), np.float64) + layer.epsilon)
        if layer.scale:
            inv = inv * np.asarray(layer.gamma.numpy(), np.float64)
        out = (v - np.asarray(layer.moving_mean.numpy(), np.float64)) * inv
        if layer.center:
            out = out + np.asarray(layer.beta.numpy(), np.float64)
        return k.copy(), np.where(k, out, 0.0)
    if kind == "elementwise":
        k, v = known_in[0], value_in[0]
        rank = len(node.inputs[0].shape)
        x = np.where(k, v, 0.0).astype(np.float32).reshape((1,) * (rank - 1) + (-1,))
        out = _keras().ops.convert_to_numpy(layer(x)).astype(np.float64).reshape(-1)
        return k.copy(), np.where(k, out, 0.0)
    if kind in ("identity", "keep"):
        return known_in[0].copy(), value_in[0].copy()
    if kind == "zeropad":
        k = known_in[0] & (value_in[0] == 0)
        return k, np.zeros_like(value_in[0])
    if kind == "flatten":
        reps = c_out // len(known_in[0])
        return np.tile(known_in[0], reps), np.tile(value_in[0], reps)
    if kind == "unflatten":  # feature j -> channel j % c_out: a channel is known when all its features agree
        k, v = known_in[0].reshape(-1, c_out), value_in[0].reshape(-1, c_out)
        known = np.all(k, axis=0) & np.all(v == v[:1], axis=0)
        return known, np.where(known, v[0], 0.0)
    if kind == "merge":
        known = np.logical_and.reduce(known_in)
        if _exact(layer, "Add"):
            value = np.sum(value_in, axis=0)
        elif _exact(layer, "Subtract"):
            value = value_in[0] - value_in[1]
        else:
            value = np.mean(value_in, axis=0)
        return known, np.where(known, value, 0.0)
    if kind == "concat":
        return np.concatenate(known_in), np.concatenate(value_in)
    return np.zeros(c_out, bool), np.zeros(c_out)  # input, unknown


def _analyse(model, strict=True):
    """Per tensor id: (offset into the slot arrays, channels); per-slot keep mask; per-node info."""
    nodes, inputs, outputs = _graph(model)
    offsets, total = {}, 0

    def add_tensor(t):
        nonlocal total
        if id(t) in offsets:
            return
        if len(t.shape) < 1 or t.shape[-1] is None:
            raise SurgeryError(f"tensor '{t.name}' has no static channel axis (shape {t.shape}); channel "
                               "surgery needs every channel count known")
        offsets[id(t)] = (total, int(t.shape[-1]))
        total += int(t.shape[-1])

    for t in inputs:
        add_tensor(t)
    for node in nodes:
        for t in node.inputs + node.outputs:
            add_tensor(t)

    def sl(t):
        off, c = offsets[id(t)]
        return np.arange(off, off + c)

    uf = _UnionFind(total)
    known = np.zeros(total, bool)
    value = np.zeros(total)
    blocked = np.zeros(total, bool)      # kept for a reason that needs no error
    reader = {}                          # slot -> (layer, reason): a constant read by an unknown layer
    kinds = []
    for node in nodes:
        kind, reason = _kind(node.layer, [t.shape for t in node.inputs])
        if node.kwargs_tensors:
            kind, reason = "unknown", "it takes tensors as keyword arguments"
        kinds.append((kind, reason))
        ins = [sl(t) for t in node.inputs]
        k_out, v_out = _consts(node, kind, [known[s] for s in ins], [value[s] for s in ins])
        outs = [sl(t) for t in node.outputs]
        if kind == "unknown" or len(outs) != 1:
            for s in ins:
                for slot in s:
                    if known[slot]:
                        reader.setdefault(slot, (node.layer, reason))
                    else:
                        blocked[slot] = True
            for s in outs:
                blocked[s] = True
            continue
        (out,) = outs
        known[out], value[out] = k_out, v_out
        if kind in ("conv", "dense"):
            layer = node.layer
            if _act_name(layer.activation) not in ELEMENTWISE_ACTIVATIONS:
                blocked[out] = True
            w = np.asarray(layer.kernel.numpy())
            w = w.reshape(-1, w.shape[-2], w.shape[-1])
            dead = np.all(w == 0, axis=(0, 2))
            s = ins[0]
            foldable = known[s] & ((value[s] == 0) | _effectively_valid(layer))
            blocked[s[~(dead | foldable)]] = True
        elif kind == "dw":
            mult = int(node.layer.kernel.shape[3])
            for i, slot in enumerate(ins[0]):
                for m in range(mult):
                    uf.union(slot, out[i * mult + m])
        elif kind in ("bn", "elementwise", "identity", "keep", "zeropad"):
            for a, b in zip(ins[0], out):
                uf.union(a, b)
        elif kind == "flatten":
            c = len(ins[0])
            for j, b in enumerate(out):
                uf.union(ins[0][j % c], b)
        elif kind == "unflatten":
            c = len(out)
            for j, a in enumerate(ins[0]):
                uf.union(a, out[j % c])
        elif kind == "merge":
            for s in ins:
                for a, b in zip(s, out):
                    uf.union(a, b)
        elif kind == "concat":
            off = 0
            for s in ins:
                for j, a in enumerate(s):
                    uf.union(a, out[off + j])
                off += len(s)
        elif kind == "input":
            blocked[out] = True
    for t in inputs + outputs:
        blocked[sl(t)] = True

    roots = uf.roots()
    group_blocked = np.zeros(total, bool)
    np.logical_or.at(group_blocked, roots, blocked)
    for slot, (layer, why) in sorted(reader.items()):
        if strict and not group_blocked[roots[slot]]:
            raise SurgeryError(
                f"channel surgery cannot cut through layer '{layer.name}' ({type(layer).__name__}): {why}; its input "
                f"channel {slot - _offset_of(slot, offsets)} is constant and would otherwise be removed "
                "(shrink_model(..., strict=False) keeps such channels)")
    group_blocked[roots[list(reader)]] = True
    keep = group_blocked[roots]
    # No tensor may lose every channel: keep one group of it.
    changed = True
    while changed:
        changed = False
        for off, c in offsets.values():
            if c and not keep[off:off + c].any():
                group_blocked[roots[off]] = True
                keep = group_blocked[roots]
                changed = True
    return nodes, kinds, offsets, keep, known, value


def _offset_of(slot, offsets):
    return max(off for off, c in offsets.values() if off <= slot < off + c)


# --- the smaller model ------------------------------------------------------------------------

def shrink_model(model, verify=True, seed=0, strict=True):
    """(smaller model, report) without the channels that THE RULE in this module's docstring
    removes; the outputs are equal up to float32 round-off of the folded constants.

    report: {"layers": {name: {"class", "kept", "total"}} for every Conv2D / DepthwiseConv2D /
    Dense (output channels), "params_before", "params_after", "macs_before", "macs_after",
    "folded": names of the layers whose bias absorbed removed constant channels}.
    verify: run both models on 8 seeded random inputs and raise SurgeryError if their outputs
    differ by more than 1e-4 * (1 + max |output|) (a bug, never expected).
    strict: a channel that would be removable but is read by a layer surgery cannot cut through
    raises SurgeryError (True) or is kept (False).
    A model with ATMC wrappers goes through strip_model first.
    """
    from atmc_tf.layers import atmc_wrappers, strip_model
    _check_model(model)
    if atmc_wrappers(model):
        model = strip_model(model)
    nodes, kinds, offsets, keep, known, value = _analyse(model, strict)

    def kept(t):
        off, c = offsets[id(t)]
        return np.nonzero(keep[off:off + c])[0]

    plans, report_layers, folded = {}, {}, []
    for node, (kind, _) in zip(nodes, kinds):
        layer = node.layer
        if kind in ("conv", "dense"):
            i_keep, o_keep = kept(node.inputs[0]), kept(node.outputs[0])
            off, c_in = offsets[id(node.inputs[0])]
            gone = np.setdiff1d(np.arange(c_in), i_keep)
            w = np.asarray(layer.kernel.numpy())
            bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(w.shape[-1])
            fold = np.zeros(w.shape[-1])
            if len(gone):
                c = np.where(known[off + gone], value[off + gone], 0.0)
                sums = np.asarray(w, np.float64).reshape(-1, w.shape[-2], w.shape[-1]).sum(axis=0)[gone]
                fold = c @ sums
            use_bias = layer.use_bias or bool(np.any(fold[o_keep] != 0))
            if np.any(fold != 0):
                folded.append(layer.name)
            config = dict(layer.get_config(), use_bias=use_bias)
            config["units" if kind == "dense" else "filters"] = len(o_keep)
            weights = [w[..., i_keep, :][..., o_keep]]
            if use_bias:
                weights.append((bias + fold)[o_keep].astype(w.dtype))
            plans[layer.name] = (config, weights)
        elif kind == "dw":
            i_keep = kept(node.inputs[0])
            w = np.asarray(layer.kernel.numpy())
            weights = [w[:, :, i_keep, :]]
            if layer.use_bias:
                weights.append(np.asarray(layer.bias.numpy()).reshape(w.shape[2], w.shape[3])[i_keep].reshape(-1))
            plans[layer.name] = (layer.get_config(), weights)
        elif kind == "bn":
            i_keep = kept(node.inputs[0])
            plans[layer.name] = (layer.get_config(), [np.asarray(v)[i_keep] for v in layer.get_weights()])
        elif kind in ("flatten", "unflatten") and _exact(layer, "Reshape"):
            out_shape, n = node.outputs[0].shape, len(kept(node.outputs[0]))
            target = (n,) if kind == "flatten" else tuple(int(d) for d in out_shape[1:-1]) + (n,)
            plans[layer.name] = (dict(layer.get_config(), target_shape=target), [])
        if kind in ("conv", "dense", "dw"):
            report_layers[layer.name] = {"class": type(layer).__name__, "kept": int(len(kept(node.outputs[0]))),
                                         "total": int(node.outputs[0].shape[-1])}

    new_layers = []

    def clone_function(layer):
        if layer.name in plans:
            config, weights = plans[layer.name]
            new = layer.__class__.from_config(config)
        else:
            new = _copy_layer(layer)
            weights = layer.get_weights()
        new_layers.append((new, weights))
        return new

    small = _rebuild(model, clone_function, lambda layer, *a, **k: layer(*a, **k))
    for new, weights in new_layers:
        new.set_weights(weights)
    report = {"layers": report_layers, "params_before": int(model.count_params()),
              "params_after": int(small.count_params()), "macs_before": count_macs(model),
              "macs_after": count_macs(small), "folded": folded}
    if verify:
        _verify(model, small, seed)
    return small, report


def _verify(model, small, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-1.0, 1.0, size=(8,) + tuple(int(d) for d in t.shape[1:])).astype(np.float32)
          for t in model.inputs]
    xs = xs[0] if len(xs) == 1 else xs
    keras = _keras()
    a = [keras.ops.convert_to_numpy(y) for y in keras.tree.flatten(model(xs, training=False))]
    b = [keras.ops.convert_to_numpy(y) for y in keras.tree.flatten(small(xs, training=False))]
    for ya, yb in zip(a, b):
        diff = float(np.max(np.abs(ya - yb))) if ya.size else 0.0
        if ya.shape != yb.shape or diff > 1e-4 * (1.0 + float(np.max(np.abs(ya)))):
            raise SurgeryError(f"channel surgery of model '{model.name}' changed its outputs (max |diff| {diff:.3g}); "
                               "this is a bug in atmc_tf.export.surgery, please report it")
