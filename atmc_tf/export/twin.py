"""The float twin of an int8 .tflite: a differentiable TensorFlow function that mimics its int8 graph, for
gradient attacks on the deployed file itself (BPDA, Athalye et al. 2018).

The twin is read from the .tflite, not from the Keras model, so it is the graph that ships: the
converter's folded batch norms, fused activations and reshapes included. Each op runs in float on the
dequantized int8 kernels (per-channel scales) and int32 biases, and each int8 tensor the file holds
is fake-quantized at its own scale and zero point (round half away from zero, clip to [-128, 127]),
the input included, with a straight-through gradient (the identity) through every rounding. What is
not reproduced: TFLite's fixed-point requantization multipliers (a float multiply here), so a
rounding may fall on the other side of .5 now and then; `twin_agreement` measures how often the
twin's top-1 differs from LiteRT's (tests/test_twin.py: >= 99% agreement on the digits test split).

Ops covered: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, RESHAPE (with the SHAPE / STRIDED_SLICE /
PACK / REDUCE_PROD / CONCATENATION / GATHER that compute its shape), MAX_POOL_2D, AVERAGE_POOL_2D, ADD, MEAN,
SOFTMAX, QUANTIZE, DEQUANTIZE, and the ops of the activation-sparsity layers (atmc_tf.layers:
winners-take-all in its pairwise and its deployed threshold-search form, thresholds): REDUCE_MAX, SUM,
EXPAND_DIMS, ABS, CAST, EQUAL, GREATER, GREATER_EQUAL, LESS, LOGICAL_AND, LOGICAL_OR, SELECT_V2, MUL,
STRIDED_SLICE, CONCATENATION, GATHER (from a constant table), ARG_MIN, ARG_MAX (int32 index arithmetic
stays int32). Their masks are computed in the twin as in the file (the int8 SUM of a pairwise
winners-take-all rank rounds at its own scale here too) and carry no gradient: SELECT_V2 passes it to
the kept units only, plain PGD through the deployed mask (the Keras side has the straight-through / BPDA attack). Any other op is a
ValueError naming it.
"""
import numpy as np

from atmc_tf.export.tflite import _litert, _op_name, parse_check

# SHAPE, and the ops that compute a RESHAPE's target shape from it (a dynamic batch): shape-only when they
# read a shape-only tensor; STRIDED_SLICE and CONCATENATION of data are ops of the twin.
_SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "REDUCE_PROD", "CONCATENATION", "GATHER")
_AXIS_OPS = ("REDUCE_MAX", "SUM", "MEAN")  # input 1: the axes, a constant
_ELEMENTWISE = ("ADD", "MUL", "EQUAL", "GREATER", "GREATER_EQUAL", "LESS", "LOGICAL_AND", "LOGICAL_OR",
                "SELECT_V2")  # constants among inputs
# the tf.math function of each elementwise op (SELECT_V2: tf.where)
_BINARY = {"ADD": "add", "MUL": "multiply", "EQUAL": "equal", "GREATER": "greater", "GREATER_EQUAL": "greater_equal",
           "LESS": "less", "LOGICAL_AND": "logical_and", "LOGICAL_OR": "logical_or"}


def _array(model, tensor, data, dtype):
    buffer = model.buffers[tensor.buffer]
    if buffer.data is not None and len(buffer.data):
        raw = np.asarray(buffer.data, dtype=np.uint8).tobytes()
    elif buffer.offset > 1:
        raw = data[buffer.offset:buffer.offset + buffer.size]
    else:
        return None
    return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape).copy()


def _qparams(tensor):
    q = tensor.quantization
    if q is None or q.scale is None or not len(q.scale):
        return None
    zp = q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else np.zeros(len(q.scale))
    return (np.asarray(q.scale, np.float32), np.asarray(zp, np.float32), int(q.quantizedDimension))


class FakeQuantTwin:
    """twin(x) -> float logits for float images, as the .tflite computes them (see the module).

    input_shape, output shape and the int8 tensors' (scale, zero point) come from the file; `kernels`
    lists the dequantized weights by op, for inspection."""

    def __init__(self, tflite_bytes):
        import tensorflow as tf
        self._tf = tf
        data = bytes(tflite_bytes)
        model = parse_check(data)
        schema = _litert()[0]
        self._types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        graph = model.subgraphs[0]
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise ValueError("the twin needs a model with one input and one output")
        self._graph, self._model, self._data = graph, model, data
        self.input_index, self.output_index = int(graph.inputs[0]), int(graph.outputs[0])
        self.input_shape = tuple(int(d) for d in graph.tensors[self.input_index].shape)
        self._ops = []
        shape_only = set()
        for op in graph.operators:
            name = _op_name(model, op)
            if name == "SHAPE" or (name in _SHAPE_OPS and any(int(i) in shape_only for i in op.inputs)):
                shape_only.update(int(i) for i in op.outputs)
                continue
            for i in op.inputs:
                if i in shape_only and name != "RESHAPE":
                    raise ValueError(f"{name} reads a shape tensor: not a graph the twin covers")
            self._ops.append((name, op, self._prepare(name, op)))

    # --- constants -----------------------------------------------------------------------
    def _tensor(self, i):
        return self._graph.tensors[int(i)]

    def _is_constant(self, i):
        buffer = self._model.buffers[self._tensor(i).buffer]
        return bool((buffer.data is not None and len(buffer.data)) or buffer.offset > 1)

    def _dequantized_constant(self, i):
        t = self._tensor(i)
        kind = self._types.get(t.type)
        dtype = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32, "INT16": np.int16,
                 "INT64": np.int64, "BOOL": np.bool_}.get(kind)
        if dtype is None:
            raise ValueError(f"constant {t.name.decode()} is {kind}: not a type the twin reads")
        raw = _array(self._model, t, self._data, dtype)
        if raw is None:
            return None
        q = _qparams(t)
        if kind == "BOOL":
            return raw
        if q is None and kind in ("INT32", "INT64"):
            return raw  # indices and index arithmetic (GATHER, int32 MUL / ADD) stay integers
        if q is None or kind == "FLOAT32":
            return raw.astype(np.float32)
        scale, zp, axis = q
        shape = [1] * raw.ndim
        if len(scale) > 1:
            shape[axis] = len(scale)
        return ((raw.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)

    def _prepare(self, name, op):
        ins = [int(i) for i in op.inputs]
        if name == "CONV_2D":
            w = self._dequantized_constant(ins[1]).transpose(1, 2, 3, 0)  # [out,kh,kw,in] -> [kh,kw,in,out]
            b = self._dequantized_constant(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            return {"w": w, "b": b}
        if name == "DEPTHWISE_CONV_2D":
            w = self._dequantized_constant(ins[1])  # [1, kh, kw, in * mult]
            in_ch = int(self._tensor(ins[0]).shape[-1])
            mult = int(op.builtinOptions.depthMultiplier) or w.shape[-1] // in_ch
            w = w.reshape(w.shape[1], w.shape[2], in_ch, mult)
            b = self._dequantized_constant(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            return {"w": w, "b": b}
        if name == "FULLY_CONNECTED":
            w = self._dequantized_constant(ins[1]).T  # [out, in] -> [in, out]
            b = self._dequantized_constant(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            return {"w": w, "b": b}
        if name in _ELEMENTWISE or name == "CONCATENATION":
            return {"const": {i: self._dequantized_constant(i) for i in ins if self._is_constant(i)}}
        if name in _AXIS_OPS:
            return {"axes": _array(self._model, self._tensor(ins[1]), self._data, np.int32).reshape(-1).tolist()}
        if name == "STRIDED_SLICE":
            begin, end, strides = (_array(self._model, self._tensor(i), self._data, np.int32) for i in ins[1:4])
            if begin is None or end is None or strides is None:
                raise ValueError("the fake-quant twin covers STRIDED_SLICE with constant begin / end / strides only")
            return {"begin": begin, "end": end, "strides": strides}
        if name == "GATHER":
            if not self._is_constant(ins[0]):
                raise ValueError("the fake-quant twin covers GATHER from a constant table only")
            return {"table": self._dequantized_constant(ins[0])}
        if name in ("ARG_MIN", "ARG_MAX"):
            kind = self._types.get(self._tensor(op.outputs[0]).type)
            return {"axis": int(_array(self._model, self._tensor(ins[1]), self._data, np.int32).reshape(-1)[0]),
                    "type": {"INT32": "int32", "INT64": "int64"}[kind]}
        if name == "EXPAND_DIMS":
            return {"axis": int(_array(self._model, self._tensor(ins[1]), self._data, np.int32).reshape(-1)[0])}
        if name == "CAST":
            kind = self._types.get(self._tensor(op.outputs[0]).type)
            if kind not in ("FLOAT32", "INT32", "BOOL"):
                raise ValueError(f"the fake-quant twin does not cover a CAST to {kind}")
            return {"to": {"FLOAT32": "float32", "INT32": "int32", "BOOL": "bool"}[kind]}
        if name in ("RESHAPE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "SOFTMAX", "QUANTIZE", "DEQUANTIZE", "ABS"):
            return {}
        raise ValueError(f"the fake-quant twin does not cover the {name} op")

    # --- the forward pass ----------------------------------------------------------------
    def fake_quant(self, x, index):
        """x fake-quantized at tensor `index`'s int8 scale and zero point (identity if it is float),
        with a straight-through gradient."""
        tf = self._tf
        q = _qparams(self._tensor(index))
        if q is None or self._types.get(self._tensor(index).type) not in ("INT8", "UINT8", "INT16"):
            return x
        scale, zp, _ = q
        info = {"INT8": (-128, 127), "UINT8": (0, 255), "INT16": (-32768, 32767)}[
            self._types[self._tensor(index).type]]
        v = x / scale + zp
        v = tf.sign(v) * tf.floor(tf.abs(v) + 0.5)
        v = (tf.clip_by_value(v, *info) - zp) * scale
        return x + tf.stop_gradient(v - x)

    def _act(self, x, op):
        tf = self._tf
        opts = op.builtinOptions
        act = int(getattr(opts, "fusedActivationFunction", 0) or 0) if opts is not None else 0
        if act == 0:
            return x
        if act == 1:
            return tf.nn.relu(x)
        if act == 2:
            return tf.clip_by_value(x, -1.0, 1.0)
        if act == 3:
            return tf.nn.relu6(x)
        raise ValueError(f"fused activation {act} is not covered by the twin")

    @staticmethod
    def _padding(opts):
        return "SAME" if int(opts.padding) == 0 else "VALID"

    def __call__(self, x, training=False):
        tf = self._tf
        x = tf.convert_to_tensor(x, tf.float32)
        values = {self.input_index: self.fake_quant(x, self.input_index)}
        for name, op, p in self._ops:
            ins, out = [int(i) for i in op.inputs], int(op.outputs[0])
            opts = op.builtinOptions
            a = values.get(ins[0]) if ins else None
            if name == "CONV_2D":
                y = tf.nn.conv2d(a, p["w"], strides=[1, opts.strideH, opts.strideW, 1], padding=self._padding(opts),
                                 dilations=[1, opts.dilationHFactor or 1, opts.dilationWFactor or 1, 1])
            elif name == "DEPTHWISE_CONV_2D":
                y = tf.nn.depthwise_conv2d(a, p["w"], strides=[1, opts.strideH, opts.strideW, 1],
                                           padding=self._padding(opts),
                                           dilations=[opts.dilationHFactor or 1, opts.dilationWFactor or 1])
            elif name == "FULLY_CONNECTED":
                y = tf.matmul(tf.reshape(a, [-1, p["w"].shape[0]]), p["w"])
                if opts is not None and getattr(opts, "keepNumDims", False):
                    y = tf.reshape(y, tf.concat([tf.shape(a)[:-1], [p["w"].shape[1]]], 0))
            elif name == "RESHAPE":
                shape = [int(d) for d in self._tensor(out).shape]
                y = tf.reshape(a, [-1] + shape[1:])
            elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                pool = tf.nn.max_pool2d if name == "MAX_POOL_2D" else tf.nn.avg_pool2d
                y = pool(a, ksize=[opts.filterHeight, opts.filterWidth], strides=[opts.strideH, opts.strideW],
                         padding=self._padding(opts))
            elif name in _ELEMENTWISE or name == "CONCATENATION":
                args = [values[i] if i in values else tf.constant(p["const"][i]) for i in ins]
                if name == "CONCATENATION":
                    y = tf.concat(args, axis=int(opts.axis))
                else:
                    y = tf.where(*args) if name == "SELECT_V2" else getattr(tf.math, _BINARY[name])(*args)
            elif name == "STRIDED_SLICE":
                y = tf.strided_slice(a, p["begin"], p["end"], p["strides"], begin_mask=opts.beginMask,
                                     end_mask=opts.endMask, ellipsis_mask=opts.ellipsisMask,
                                     new_axis_mask=opts.newAxisMask, shrink_axis_mask=opts.shrinkAxisMask)
            elif name == "GATHER":
                y = tf.gather(p["table"], values[ins[1]], axis=int(opts.axis) if opts is not None else 0)
            elif name in ("ARG_MIN", "ARG_MAX"):
                arg = tf.math.argmin if name == "ARG_MIN" else tf.math.argmax
                y = arg(a, axis=p["axis"], output_type=p["type"])
            elif name in _AXIS_OPS:
                reduce = {"MEAN": tf.reduce_mean, "REDUCE_MAX": tf.reduce_max, "SUM": tf.reduce_sum}[name]
                y = reduce(a, axis=p["axes"], keepdims=bool(opts.keepDims))
            elif name == "EXPAND_DIMS":
                y = tf.expand_dims(a, p["axis"])
            elif name == "CAST":
                y = tf.cast(a, p["to"])
            elif name == "ABS":
                y = tf.abs(a)
            elif name == "SOFTMAX":
                y = tf.nn.softmax(a * float(opts.beta or 1.0))
            else:  # QUANTIZE, DEQUANTIZE: a change of scale, i.e. the fake-quant below
                y = a
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and p["b"] is not None:
                y = y + p["b"]
            y = self._act(y, op)
            values[out] = self.fake_quant(y, out)
        return values[self.output_index]


def fake_quant_twin(tflite_bytes):
    """The FakeQuantTwin of an int8 .tflite (bytes): a callable float images -> float logits."""
    return FakeQuantTwin(tflite_bytes)


def twin_agreement(twin, lite, x, batch_size=256):
    """Fraction of images on which the twin's top-1 equals the .tflite's on LiteRT (lite: LiteRTModel)."""
    x = np.asarray(x, np.float32)
    twin_top = np.concatenate([np.asarray(twin(x[i:i + batch_size])).argmax(-1)
                               for i in range(0, len(x), batch_size)]) if len(x) else np.zeros(0, int)
    return float(np.mean(twin_top == lite.predict(x).argmax(-1)))


def twin_attack(tflite_bytes, x, y, config, batch_size=256, twin=None):
    """Adversarial examples crafted on the .tflite's fake-quant twin with a white-box attack `config`
    (atmc_tf.attacks PGDConfig / APGDConfig), to be evaluated on the .tflite itself."""
    from atmc_tf.attacks import adversarial_examples
    twin = twin or fake_quant_twin(tflite_bytes)
    return np.asarray(adversarial_examples(twin, x, y, config, batch_size))
