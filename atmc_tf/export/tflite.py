"""Full-integer int8 .tflite export of a plain Keras 3 model, and checks on the result.

What the TF 2.21 converter does (tests/test_export.py checks each point):

- Weights of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED are all quantized
  PER CHANNEL by default: int8 codes in [-127, 127], zero point 0, one scale per
  output channel = max|W_c| / 127 (atmc_tf.constraints.channel_scales). The
  channel is dimension 0 of CONV_2D's [out, kh, kw, in] and FULLY_CONNECTED's
  [out, in], and dimension 3 of DEPTHWISE_CONV_2D's [1, kh, kw, in * multiplier]
  (channel index = in_channel * multiplier + m). Per-channel dense layers are
  the default since the converter grew
  `_experimental_disable_per_channel_quantization_for_dense_layers` (False);
  older releases quantized FULLY_CONNECTED per tensor.
- A BatchNormalization that alone reads a Conv2D / DepthwiseConv2D / Dense
  output is folded into its weights: channel c is multiplied by
  gamma_c / sqrt(var_c + eps). The per-channel scale absorbs the magnitude, so
  the stored codes are the trained codes times sign(gamma_c).
- `TFLiteConverter.from_keras_model` and `model.export` + `from_saved_model`
  work with Keras 3; `from_concrete_functions` fails. We export with an explicit
  input signature, which is also how batch_size=1 gives a fixed [1, ...] input.

TensorFlow and Keras are imported only inside the functions that convert or
read a Keras model: the rest (LiteRT runner, flatbuffer reading, C array) is
what the TFLite Micro child process and deployment scripts use, and they then
start in a fraction of a second instead of ~4 s.
"""
import gzip
import re
import tempfile

import functools

import numpy as np

MAX_REPRESENTATIVE_SAMPLES = 300
KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@functools.cache
def _litert():
    """(schema module, Interpreter class) of ai-edge-litert, imported on first use: conversion
    needs only TensorFlow, so `pip install atmc_tf` without the [deploy] extra still imports."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ImportError(f"reading or running a .tflite needs LiteRT ({err}); install it with "
                          "pip install 'atmc_tf[deploy]' (or ai-edge-litert)") from None
    return schema, Interpreter


@functools.cache
def _enum_names(enum_name):
    return {code: name for name, code in vars(getattr(_litert()[0], enum_name)).items()
            if not name.startswith("_")}


# --- conversion -----------------------------------------------------------------------

def to_int8_tflite(model, representative_x, batch_size=None, max_samples=MAX_REPRESENTATIVE_SAMPLES, sparsity=False):
    """Full-integer int8 .tflite bytes: int8 input and output, TFLITE_BUILTINS_INT8 ops only.

    representative_x: float samples, shape (n,) + the model's input shape; at
    most `max_samples` evenly spaced ones calibrate the activation ranges.
    batch_size=None keeps a dynamic batch; an integer fixes it (1 for
    microcontrollers: no SHAPE/PACK ops, static tensor sizes).
    sparsity=True also lets the converter store sparse constant kernels in TFLite's sparse format
    (Optimize.EXPERIMENTAL_SPARSITY; LiteRT only: see litert_sparse).
    A model with ATMC wrappers is exported through strip_model, which refuses one whose
    constraints were never enforced (UnconstrainedModelError). A WinnersTakeAll wider than
    PAIRWISE_MAX_UNITS converts in its O(n) deployed form (atmc_tf.export.winners: two conversions).
    """
    import tensorflow as tf

    from atmc_tf.layers import atmc_wrappers, strip_model
    if atmc_wrappers(model):
        model = strip_model(model)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"to_int8_tflite needs a single-input, single-output model, "
                         f"got {len(model.inputs)} inputs and {len(model.outputs)} outputs")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be None or a positive integer, got {batch_size!r}")
    input_shape = tuple(model.inputs[0].shape[1:])
    x = np.asarray(representative_x, dtype=np.float32)
    if x.shape[1:] != input_shape:
        raise ValueError(f"representative_x has shape {x.shape}, the model expects (n,) + {input_shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("representative_x contains NaN or inf")
    step = batch_size or 1
    calibration = calibration_samples(x, max_samples)
    if len(calibration) < step:
        raise ValueError(f"need at least batch_size={step} representative samples, got {len(calibration)}")

    def representative_dataset():
        for start in range(0, len(calibration) - step + 1, step):
            yield [calibration[start:start + step]]

    spec = tf.TensorSpec((batch_size,) + input_shape, tf.as_dtype(model.inputs[0].dtype))

    def convert():
        with tempfile.TemporaryDirectory() as saved_model_dir:
            model.export(saved_model_dir, format="tf_saved_model", verbose=False, input_signature=[spec])
            converter = set_full_int8(tf.lite.TFLiteConverter.from_saved_model(saved_model_dir),
                                      representative_dataset, sparsity=sparsity)
            # The converter reads the SavedModel lazily, so convert inside the `with`.
            return converter.convert()
    # wide WinnersTakeAll layers convert in their O(n) deployed form (atmc_tf.export.winners)
    from atmc_tf.export.winners import convert_with_deployed_winners
    return convert_with_deployed_winners(model, calibration, convert)[0]


def calibration_samples(x, max_samples):
    """At most max_samples evenly spaced rows of x: they cover the whole array even when it is
    sorted by class."""
    return x[np.unique(np.linspace(0, len(x) - 1, num=min(len(x), max_samples)).round().astype(int))]


def set_full_int8(converter, representative_dataset, sparsity=False):
    """Configure a TFLiteConverter for full-integer int8: int8 builtins only, int8 input and
    output, per-channel kernel scales (sparsity=True: sparse kernels stored sparse); returns it."""
    import tensorflow as tf
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparsity:
        converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # Already the default; set so that a changed default cannot silently make
    # dense layers per-tensor (kernel_codes_match would then report mismatches).
    converter._experimental_disable_per_channel_quantization_for_dense_layers = False
    return converter


def strip_names(tflite_bytes):
    """The same model without the strings no runtime reads: tensor names, subgraph names, the model's
    description (TensorFlow's flatbuffer_utils.strip_strings, minus its dropping of the signature defs,
    whose keys LiteRT's signature runner needs and which do not name tensors). On a small model they are
    a good part of the file (the default job's microcontroller file: 8,976 -> 7,512 bytes). Ops, tensors,
    buffers, quantization and metadata (TFLite Micro's DECODE tables) are unchanged."""
    import flatbuffers
    data = bytes(tflite_bytes)
    model = parse_check(data)  # ValueError for bytes that are not a .tflite
    model.description = None
    for graph in model.subgraphs:
        graph.name = None
        for tensor in graph.tensors:
            tensor.name = None
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# --- reading the flatbuffer -------------------------------------------------------------

def parse_check(tflite_bytes):
    """The parsed model (schema ModelT); ValueError if the bytes are not a .tflite flatbuffer."""
    data = bytes(tflite_bytes)

    def invalid(reason):
        return ValueError(f"model ({len(data)} bytes) is not a valid .tflite flatbuffer: {reason}")

    if len(data) < 8:
        raise invalid(f"only {len(data)} bytes")
    if data[4:8] != b"TFL3":
        raise invalid(f"file identifier is {data[4:8]!r}, expected b'TFL3'")
    # The Python flatbuffer reader does not bounds-check. LiteRT's C++ loader runs the
    # flatbuffer verifier, then resolves builtin ops, then checks tensor and buffer
    # indices and sizes. A builtin op LiteRT lacks (custom ops resolve later) says
    # nothing about the bytes, which the verifier has passed by then.
    try:
        _litert()[1](model_content=data)
    except ValueError as e:
        message = str(e).strip()
        if "Registration failed" not in message:
            raise invalid(f"truncated or corrupt, LiteRT says: {message}") from None
    schema = _litert()[0]
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    if not model.subgraphs:
        raise invalid("it has no subgraph")
    return model


def _mask_tensors(model, graph, names):
    """Tensors of an activation mask (atmc_tf.layers.WinnersTakeAll / ActivationThreshold): the BOOL
    outputs of comparisons, and a CAST of them to float32 that only QUANTIZE reads (the winners'
    count, summed in int8). TFLite Micro runs both; they carry no float activation."""
    bools = {i for op in graph.operators for i in op.outputs if names.get(graph.tensors[i].type) == "BOOL"}
    readers = {}
    for op in graph.operators:
        for i in op.inputs:
            readers.setdefault(i, set()).add(_op_name(model, op))
    casts = {i for op in graph.operators if _op_name(model, op) == "CAST" and set(op.inputs) <= bools
             for i in op.outputs if readers.get(i, set()) == {"QUANTIZE"}}
    return bools | casts


def int8_problem(tflite_bytes):
    """What keeps a .tflite from being a full-integer int8 model (int8 input, output and activations, as
    TFLite Micro runs it), in a few words ("a float model (float32 activations)"); None if it is one.
    ValueError if the bytes are not a .tflite."""
    model = parse_check(tflite_bytes)
    names = _enum_names("TensorType")
    graph = model.subgraphs[0]
    ends = set(graph.inputs) | set(graph.outputs)
    masks = _mask_tensors(model, graph, names)
    inner = {names.get(graph.tensors[i].type, "?") for op in graph.operators for i in op.outputs
             if i not in ends and i not in masks}
    every = {names.get(t.type, "?") for t in graph.tensors}
    other = "/".join(sorted(t.lower() for t in inner - {"INT8", "INT32"}))
    if other and all(t.startswith("FLOAT") for t in inner - {"INT8", "INT32"}):
        if "INT8" in every:
            return f"a dynamic-range quantized model (int8 weights, {other} activations)"
        return f"a float model ({other} activations)"
    if other:
        return f"a model with {other} activations"
    io = {names.get(graph.tensors[i].type, "?") for i in ends}
    if io != {"INT8"}:
        return f"an int8 model with {'/'.join(sorted(t.lower() for t in io - {'INT8'}))} input or output"
    return None


def _op_name(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    # Codes above 127 live in builtinCode; older files only fill the deprecated field.
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return _enum_names("BuiltinOperator").get(builtin, f"UNKNOWN_BUILTIN_{builtin}")


def op_names(tflite_bytes):
    """The builtin op of every operator, in execution order, over all subgraphs."""
    model = parse_check(tflite_bytes)
    return [_op_name(model, op) for graph in model.subgraphs for op in graph.operators]


def _constant(model, tensor, data):
    buffer = model.buffers[tensor.buffer]
    if buffer.data is not None and len(buffer.data):
        raw = np.asarray(buffer.data, dtype=np.uint8)
    elif buffer.offset > 1:  # files over 2 GB keep buffers after the flatbuffer
        raw = np.frombuffer(data, dtype=np.uint8, count=buffer.size, offset=buffer.offset)
    else:
        raise ValueError(f"tensor {tensor.name.decode()} is not a constant")
    return raw.view(np.int8).reshape(tensor.shape).copy()  # not a read-only view of the bytes


def is_winners_count(model, graph, op, data):
    """True for a FULLY_CONNECTED of the deployed winners-take-all form (atmc_tf.export.winners): the unit
    counts, three outputs clipped to [-1, 1] (fused RELU_N1_TO_1) with one int8 weight value throughout.
    It is not a layer's kernel: kernel listings, code checks and weight compression leave it alone."""
    if _op_name(model, op) != "FULLY_CONNECTED" or len(op.inputs) < 2 or op.inputs[1] < 0:
        return False
    opts = op.builtinOptions
    act = getattr(opts, "fusedActivationFunction", None) if opts is not None else None
    if act is None or _enum_names("ActivationFunctionType").get(int(act)) != "RELU_N1_TO_1":
        return False
    tensor = graph.tensors[op.inputs[1]]
    if len(tensor.shape) != 2 or int(tensor.shape[0]) != 3:
        return False
    try:
        codes = _constant(model, tensor, data)
    except ValueError:
        return False
    return bool(codes.size) and bool((codes == codes.flat[0]).all())


def tflite_kernels(tflite_bytes):
    """Weights of every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op, in execution order (not the
    counting ops of a deployed winners-take-all layer: is_winners_count).

    Each entry: op (builtin name), name (weight tensor name), weights (int8
    array in the op's TFLite layout), scales (float32, one per channel),
    zero_points, quantized_dimension.
    """
    data = bytes(tflite_bytes)
    model = parse_check(data)
    graph = model.subgraphs[0]
    kernels = []
    for op in graph.operators:
        op_name = _op_name(model, op)
        if op_name not in KERNEL_OPS or is_winners_count(model, graph, op, data):
            continue
        tensor = graph.tensors[op.inputs[1]]
        name = tensor.name.decode()
        if tensor.type != _litert()[0].TensorType.INT8:
            raise ValueError(f"{op_name} weights {name} are {_enum_names('TensorType').get(tensor.type)}, not INT8: "
                             "not a full-integer model")
        q = tensor.quantization
        kernels.append({
            "op": op_name,
            "name": name,
            "weights": _constant(model, tensor, data),
            "scales": np.asarray(q.scale if q and q.scale is not None else [], dtype=np.float32),
            "zero_points": np.asarray(q.zeroPoint if q and q.zeroPoint is not None else [], dtype=np.int64),
            "quantized_dimension": int(q.quantizedDimension) if q else 0,
        })
    return kernels


# --- exported kernels vs trained kernels ------------------------------------------------

def _to_keras_layout(op, weights, keras_shape):
    if op == "CONV_2D":  # [out, kh, kw, in] -> [kh, kw, in, out]
        return weights.transpose(1, 2, 3, 0)
    if op == "FULLY_CONNECTED":  # [out, in] -> [in, out]
        return weights.T
    # DEPTHWISE_CONV_2D [1, kh, kw, in * mult] -> [kh, kw, in, mult]: channel in*mult + m.
    return weights.reshape(keras_shape) if weights.size == np.prod(keras_shape) else weights


def _flat_histories(obj):
    """Layer names in every [name, node_index, tensor_index] reference of a model config."""
    if isinstance(obj, dict):
        if "keras_history" in obj:
            yield obj["keras_history"][0]
            return
        for value in obj.values():
            yield from _flat_histories(value)
    elif isinstance(obj, (list, tuple)):
        if len(obj) == 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
            yield obj[0]
        else:
            for value in obj:
                yield from _flat_histories(value)


def _sole_readers(model):
    """Layer name -> the only layer that reads its output (absent when several do, or none)."""
    import keras

    config = model.get_config()
    if isinstance(model, keras.Sequential):
        names = [entry["config"]["name"] for entry in config["layers"] if entry["class_name"] != "InputLayer"]
        return dict(zip(names, names[1:]))
    readers = {}
    for entry in config["layers"]:
        for source in set(_flat_histories(entry.get("inbound_nodes", []))):
            readers.setdefault(source, []).append(entry["name"])
    for source in _flat_histories(config.get("output_layers", [])):
        readers.setdefault(source, []).append(None)  # a model output cannot be folded away
    return {source: r[0] for source, r in readers.items() if len(r) == 1 and r[0] is not None}


def _folded_bn_signs(model, layer, readers):
    """sign(gamma / sqrt(var + eps)) per output channel of the BatchNormalization the
    converter folds into `layer`, or None when nothing is folded."""
    import keras

    reader = readers.get(layer.name)
    if reader is None:
        return None
    bn = model.get_layer(reader)
    if not isinstance(bn, keras.layers.BatchNormalization) or bn.axis not in (-1, len(layer.output.shape) - 1):
        return None
    variance = bn.moving_variance.numpy()
    gamma = bn.gamma.numpy() if bn.scale else np.ones_like(variance)
    return np.sign(gamma / np.sqrt(variance + bn.epsilon))


def kernel_codes_match(model, tflite_bytes):
    """Compare each Dense / Conv2D / DepthwiseConv2D kernel's int8 codes with the .tflite's.

    Expected codes are int8_codes(kernel) (one scale per output channel; for
    DepthwiseConv2D per (in_channel, multiplier) pair), times the sign of a
    folded BatchNormalization. Layers pair with kernel ops in order. Returns
    {"layers": [{layer, op, codes, mismatches, max_abs_diff, per_channel,
    zero_points_zero, bn_folded}], "mismatches", "max_abs_diff", "exact"},
    JSON-ready. 0 mismatches proves the stored kernels are the trained ones
    when those were trained on the int8 lattice.
    """
    import keras

    from atmc_tf.constraints import int8_codes
    from atmc_tf.layers import kernel_channel_axes

    kernel_layers = [layer for layer in model.layers
                     if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    kernels = tflite_kernels(tflite_bytes)
    if len(kernel_layers) != len(kernels):
        raise ValueError(f"the model has {len(kernel_layers)} Dense/Conv2D/DepthwiseConv2D layers but the "
                         f".tflite has {len(kernels)} kernel ops ({[k['op'] for k in kernels]})")
    readers = _sole_readers(model)
    rows = []
    for layer, kernel in zip(kernel_layers, kernels):
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        expected_op = ("DEPTHWISE_CONV_2D" if depthwise else
                       "FULLY_CONNECTED" if isinstance(layer, keras.layers.Dense) else "CONV_2D")
        if kernel["op"] != expected_op:
            raise ValueError(f"layer {layer.name} pairs with a {kernel['op']} op, expected {expected_op}")
        channel_axes = kernel_channel_axes(layer)
        w = layer.kernel.numpy()
        expected = int8_codes(w, channel_axes).numpy().astype(np.int32)
        signs = _folded_bn_signs(model, layer, readers)
        if signs is not None:
            expected = expected * signs.reshape(w.shape[-len(channel_axes):]).astype(np.int32)
        stored = _to_keras_layout(kernel["op"], kernel["weights"], w.shape)
        if stored.shape != w.shape:
            raise ValueError(f"layer {layer.name}: {kernel['op']} weights shaped {kernel['weights'].shape} "
                             f"do not match the Keras kernel {w.shape}")
        diff = np.abs(stored.astype(np.int32) - expected)
        channels = int(np.prod(w.shape[-len(channel_axes):]))
        rows.append({
            "layer": layer.name,
            "op": kernel["op"],
            "codes": int(diff.size),
            "mismatches": int(np.count_nonzero(diff)),
            "max_abs_diff": int(diff.max(initial=0)),
            "per_channel": len(kernel["scales"]) == channels,
            "zero_points_zero": bool(np.all(kernel["zero_points"] == 0)),
            "bn_folded": signs is not None,
        })
    mismatches = sum(row["mismatches"] for row in rows)
    return {"layers": rows, "mismatches": mismatches,
            "max_abs_diff": max((row["max_abs_diff"] for row in rows), default=0), "exact": mismatches == 0}


# --- running on LiteRT (the phone runtime) ----------------------------------------------

def _round_half_away(v):
    # TFLite's Quantize rounds with std::round (half away from zero), np.round to even.
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _quantize(x, details):
    scale, zero_point = details["quantization"]
    if scale == 0:  # a float tensor
        return x.astype(details["dtype"])
    info = np.iinfo(details["dtype"])
    q = _round_half_away(x.astype(np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(details["dtype"])


def _dequantize(q, details):
    scale, zero_point = details["quantization"]
    if scale == 0:
        return q.astype(np.float32)
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


class LiteRTModel:
    """A single-input, single-output .tflite model on LiteRT, fed and read as floats."""

    def __init__(self, tflite_bytes, num_threads=None):
        self.tflite_bytes = bytes(tflite_bytes)
        parse_check(self.tflite_bytes)
        self._interpreter = _litert()[1](model_content=self.tflite_bytes, num_threads=num_threads)
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"LiteRTModel needs one input and one output, got {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        # shape_signature keeps -1 for a dynamic batch; "shape" would say 1.
        self.input_shape = tuple(int(d) for d in self._input["shape_signature"])
        self.output_shape = tuple(int(d) for d in self._output["shape_signature"])
        self.fixed_batch = self.input_shape[0] if self.input_shape[0] > 0 else None
        self._allocated_batch = None

    @property
    def output_scale(self):
        """The output's quantization scale (0.0 for a float output)."""
        return float(self._output["quantization"][0])

    @property
    def input_dtype(self):
        return self._input["dtype"]

    def _check_samples(self, x):
        if x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"inputs shaped {x.shape}, the model expects (n,) + {self.input_shape[1:]}")

    def quantize_input(self, x):
        """Float samples -> the model's input type, with its scale and zero point."""
        x = np.asarray(x, dtype=np.float32)
        self._check_samples(x)
        return _quantize(x, self._input)

    def predict(self, x, batch_size=256):
        """Float logits for float inputs."""
        return _dequantize(self.predict_int8(self.quantize_input(x), batch_size), self._output)

    def predict_int8(self, x_q, batch_size=256):
        """Raw (int8) outputs for inputs already in the model's input type."""
        x_q = np.asarray(x_q)
        self._check_samples(x_q)
        if x_q.dtype != self.input_dtype:
            raise ValueError(f"inputs are {x_q.dtype}, the model takes {np.dtype(self.input_dtype)}")
        chunk = self.fixed_batch or int(batch_size)
        outputs = []
        for start in range(0, len(x_q), chunk):
            part = x_q[start:start + chunk]
            n = len(part)
            if self.fixed_batch and n < chunk:  # pad the last batch of a fixed-batch model
                part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], part.dtype)])
            outputs.append(self._run(part)[:n])
        if not outputs:
            return np.zeros((0,) + tuple(self._output["shape"][1:]), self._output["dtype"])
        return np.concatenate(outputs)

    def _run(self, batch):
        if self._allocated_batch != len(batch):
            if not self.fixed_batch:
                self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
            self._interpreter.allocate_tensors()
            self._allocated_batch = len(batch)
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()

    def op_names(self):
        """The builtin op of every operator, in execution order."""
        return op_names(self.tflite_bytes)

    def latency_ms(self, x, runs=200, warmup=20):
        """Median wall time (ms) of one invoke() on the first sample of float inputs `x` (batch 1),
        over `runs` invocations after `warmup`; build the model with num_threads=1 for a
        single-thread figure. Wall clock: a loaded machine inflates it; compare models in one run."""
        import time
        sample = self.quantize_input(np.asarray(x, np.float32)[:1])
        if self.fixed_batch and self.fixed_batch != 1:
            raise ValueError(f"latency_ms needs a batch-1 model, this one has a fixed batch of {self.fixed_batch}")
        self._run(sample)
        for _ in range(int(warmup)):
            self._interpreter.invoke()
        times = []
        for _ in range(int(runs)):
            t0 = time.perf_counter()
            self._interpreter.invoke()
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000.0)


# --- files for firmware -----------------------------------------------------------------

_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_identifier(var_name):
    if not _C_IDENTIFIER.match(var_name):
        raise ValueError(f"{var_name!r} is not a C identifier")


def c_source(tflite_bytes, var_name="g_model"):
    """C++ source embedding the model as TFLite Micro firmware expects it."""
    _check_identifier(var_name)
    data = bytes(tflite_bytes)
    rows = (", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12))
    body = ",\n  ".join(rows)
    return (f"// int8 TFLite model, {len(data)} bytes, generated by atmc_tf.export.\n"
            # In C++ a namespace-scope const has internal linkage unless declared extern first.
            f"extern const unsigned char {var_name}[];\n"
            f"extern const unsigned int {var_name}_len;\n\n"
            # TFLM reads tensors in place from the flatbuffer, which needs 16-byte alignment.
            f"alignas(16) const unsigned char {var_name}[] = {{\n  {body}\n}};\n"
            f"const unsigned int {var_name}_len = {len(data)};\n")


def c_header(var_name="g_model"):
    """The header declaring what c_source defines."""
    _check_identifier(var_name)
    guard = f"ATMC_{var_name.upper()}_H_"
    return (f"#ifndef {guard}\n#define {guard}\n\n"
            f"extern const unsigned char {var_name}[];\n"
            f"extern const unsigned int {var_name}_len;\n\n"
            f"#endif  // {guard}\n")


def gzip_size(data):
    """Bytes after gzip -9: what a sparse, few-valued model costs to ship."""
    return len(gzip.compress(bytes(data), compresslevel=9, mtime=0))
