"""A TFLite Micro model that stores few-valued or sparse kernels compressed (LUT indices or PRUNE).

The int8 .tflite keeps every kernel dense: a 4-bit, 95%-sparse ATMC kernel
costs the device as many flash bytes as a dense one. TFLite Micro decodes
compressed constants at run time (a TFLM_DECODE custom op before each reader,
writing the decoded kernel into the arena); the pinned `tflite-micro` package
(0.dev20261023182759) writes such models with
`tflite_micro.tensorflow.lite.micro.compression.compress`. This module only
decides what to ask it for, and checks the result on TFLM. Per kernel it measures
two encodings and keeps the smaller (encodings=("lut", "prune")):

- LUT: b-bit indices for every element plus one value table per channel (the
  package's encoder): ceil(n * b / 8) + 16 + channels * values bytes;
- PRUNE: a bitmap of the elements that are not the zero point plus those values
  in flat order (micro_prune's encoder: the package's own is a stub, its runtime
  decodes it): ceil(n / 8) + 16 + nonzeros bytes. PRUNE wins on sparse kernels
  of 2-bit or wider indices; against a 1-bit LUT (2 values a channel) only with
  fewer than 2 nonzeros per channel (tests/test_micro_prune.py has both cases).

Decoders cannot be chained on this runtime (PRUNE values that are LUT indices):
DECODE requires constant inputs, measured: a PRUNE DECODE feeding a LUT DECODE
fails Prepare with "decode.cc:117 IsConstantTensor(input) was not true".

Measured 2026-12-01 with tools/micro_prune_lenet.py (random LeNet kernels projected to 1% nonzeros globally with
constraints.project_l0, then quantize(..., "codebook_int8", 4) per layer; TFLM
outputs bit-identical to the uncompressed batch-1 int8 model on 64 samples in
every row; arena: the smallest working TFLM arena, growth = decoded kernel):

  model (weights)                   uncompressed  LUT only  PRUNE only  best of both  arena
  lenet, padding=same (1,255,500)   1,266,552     336,112   181,584     180,672       26,624 -> 1,235,456
  Caffe LeNet, valid (430,500)        441,664     170,848    70,400      70,400       21,248 ->   408,832

PRUNE's bitmap alone is n / 8 bytes (153,125 for the 1.2M-weight fc1 of
build_model("lenet", (28, 28, 1), 10)), so no sparsity gets that model under
64 KB this way; the arena grows by the largest decoded kernel (fc1: 1.2 MB of
RAM, against 26.6 KB uncompressed), whichever encoding stores it.

What the package does (measured on a Conv2D + DepthwiseConv2D + Dense model,
tests/test_micro_compress.py checks each point):

- LUT with PerChannel(axis) on a kernel's quantized dimension (axis 0 of
  CONV_2D / FULLY_CONNECTED, axis 3 of DEPTHWISE_CONV_2D) decodes to the exact
  int8 codes: TFLM outputs are bit-identical to the uncompressed model's.
- LUT with PerTensor on the same per-channel-quantized kernels runs without
  any error and gives WRONG outputs: on the test model, one kernel so
  compressed moved every one of 50 samples' outputs, by up to 77 (CONV_2D),
  71 (DEPTHWISE_CONV_2D) and 157 (FULLY_CONNECTED) int8 steps. So
  compress_for_micro never asks for it on a per-channel kernel and raises
  MicroCompressionError when told to.
- The package's per-channel axis must be 0 or the last one; index widths are
  1..7 bits (8 would not save anything anyway); each channel's table holds
  (max distinct values over channels) int8 entries after a 16-byte header.
- The encoded tensor keeps the kernel's stale per-channel quantization
  (model_editor's `quantization = None` does not reach the flatbuffer). TFLM
  ignores it, but the TFLite verifier rejects the file ("num_scales must be 1
  ... or 36"), so LiteRT-based readers (parse_check, op_names) would refuse
  it. compress_for_micro clears it, which also saves 12 bytes per channel.
- Each compressed kernel costs 374-384 bytes of flatbuffer beyond its data
  on the test model (an ancillary tensor, a decoded tensor carrying the
  kernel's quantization, a DECODE operator, two names derived from the
  kernel's, alignment): about 310-320 plus twice the name. A kernel is
  compressed only when its data shrinks by more than that estimate, and the
  file as a whole must shrink, or the input comes back unchanged.
"""
import dataclasses
import math
import warnings

import numpy as np

from atmc_tf.export.micro import (ARENA_MAX, DEFAULT_TIMEOUT_S, _CheckFailed, _child, _smallest_arena,
                                  _tail)
from atmc_tf.export.tflite import KERNEL_OPS, _enum_names, _litert, gzip_size

MAX_INDEX_BITS = 7  # the package's LUT bitwidth field holds 1..7
DCM_HEADER_BYTES = 16  # the DECODE common metadata ahead of the value tables
# Flatbuffer bytes a compressed kernel adds beyond its data, besides twice its name: measured 308-318
# on the test model (its quantization moves from the encoded tensor to the decoded one).
DECODE_OVERHEAD_BYTES = 320
DECODE_OP = "TFLM_DECODE"
MODES = ("per_channel", "per_tensor")
ENCODINGS = ("lut", "prune")  # what compress_for_micro may choose from, besides dense int8


class MicroCompressionError(ValueError):
    """A compression that the pinned TFLite Micro runtime would decode wrongly, or could not do."""


def _compression_api():
    """The package's compression entry points, imported on first use."""
    import importlib
    package = "tflite_micro.tensorflow.lite.micro.compression"
    # The package's __init__ binds `compress` to the function, hiding the module of that name.
    return tuple(importlib.import_module(f"{package}.{m}")
                 for m in ("compress", "model_editor", "spec", "spec_builder"))


# --- analysis ---------------------------------------------------------------------------

def _distinct_per_channel(weights, axis):
    return [int(np.unique(s).size) for s in np.moveaxis(weights, axis, 0)]


def index_bits(values):
    """Bits of a LUT index that addresses `values` distinct values (at least 1)."""
    return max(1, math.ceil(math.log2(max(int(values), 1))))


def lut_bytes(shape, axis, values_per_channel_max, bits):
    """Bytes of the package's per-channel LUT encoding: packed indices + header + value tables."""
    size = int(np.prod(shape))
    channels = int(shape[axis]) if axis is not None else 1
    return math.ceil(size * bits / 8) + DCM_HEADER_BYTES + channels * int(values_per_channel_max)


def kernel_tensors(tflite_bytes):
    """Every constant int8 weight tensor read by CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, once each.

    Entries: subgraph, tensor (index), op, name, shape, weights (int8, TFLite layout),
    quantized_dimension, per_channel (more than one scale), shared (its buffer is also some
    other tensor's: the package would then leave it uncompressed).
    """
    from atmc_tf.export.tflite import is_winners_count, parse_check
    data = bytes(tflite_bytes)
    model = parse_check(data)
    schema = _litert()[0]
    op_names = _enum_names("BuiltinOperator")
    buffer_users = {}
    for g, graph in enumerate(model.subgraphs):
        for t, tensor in enumerate(graph.tensors):
            buffer_users.setdefault(tensor.buffer, []).append((g, t))
    found = {}
    for g, graph in enumerate(model.subgraphs):
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name not in KERNEL_OPS or len(op.inputs) < 2 or op.inputs[1] < 0 or is_winners_count(
                    model, graph, op, data):
                continue  # (a deployed winners-take-all's counts are not a layer's kernel)
            t = int(op.inputs[1])
            tensor = graph.tensors[t]
            buffer = model.buffers[tensor.buffer]
            if (g, t) in found or tensor.type != schema.TensorType.INT8 or buffer.data is None or not len(buffer.data):
                continue  # not a constant int8 kernel (or already listed)
            q = tensor.quantization
            scales = [] if q is None or q.scale is None else list(q.scale)
            found[(g, t)] = {
                "subgraph": g, "tensor": t, "op": name, "name": tensor.name.decode(),
                "shape": [int(d) for d in tensor.shape],
                "weights": np.asarray(buffer.data, dtype=np.uint8).view(np.int8).reshape(tensor.shape),
                "quantized_dimension": int(q.quantizedDimension) if q is not None else 0,
                "zero_points": [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint],
                "per_channel": len(scales) > 1,
                "shared": len(buffer_users[tensor.buffer]) > 1,
            }
    return list(found.values())


def _lut_candidate(kernel, mode, entry):
    """(data bytes, package LUT method) or (None, why not)."""
    w, shape = kernel["weights"], kernel["shape"]
    _, _, spec, _ = _compression_api()
    if mode == "per_tensor":
        axis = None
        entry["values_per_channel_max"] = int(np.unique(w).size)
    else:
        axis = kernel["quantized_dimension"]
        entry["axis"] = axis
        entry["values_per_channel_max"] = max(_distinct_per_channel(w, axis))
    values = entry["values_per_channel_max"]
    if axis is not None and axis not in (0, len(shape) - 1):
        return None, f"the package's per-channel LUT supports axis 0 or the last only, not {axis}"
    bits = index_bits(values)
    if bits > MAX_INDEX_BITS:
        return None, f"{values} values in a channel need {bits}-bit indices (LUT indices are 1-{MAX_INDEX_BITS} bits)"
    mode_spec = spec.PerTensor() if axis is None else spec.PerChannel(axis=axis)
    return lut_bytes(shape, axis, values, bits), spec.LookUpTableCompression(index_bitwidth=bits, mode=mode_spec)


def _prune_candidate(kernel):
    """(data bytes, PRUNE method) or (None, why not): the encoder's own output, measured."""
    from atmc_tf.export import micro_prune
    try:
        encoded, ancillary = micro_prune.encode(kernel["weights"], kernel["zero_points"],
                                                kernel["quantized_dimension"] if kernel["per_channel"] else None)
    except Exception as e:  # noqa: BLE001 -- the runtime would refuse it: say why, stay dense
        return None, f"PRUNE: {e}"
    return len(encoded) + len(ancillary), micro_prune.register()()


def _plan(kernel, mode, encodings=ENCODINGS):
    """(report entry, package compression method or None): the smallest encoding of one kernel."""
    w, shape = kernel["weights"], kernel["shape"]
    entry = {"name": kernel["name"], "op": kernel["op"], "shape": shape, "encoding": "dense_int8",
             "index_bits": None, "axis": None, "values_per_channel_max": None,
             "nonzeros": int(np.count_nonzero(w)),
             "bytes_before": int(w.size), "bytes_after": int(w.size), "candidates": {}, "reason": None}
    if mode == "per_tensor" and kernel["per_channel"]:
        raise MicroCompressionError(
            f"{kernel['op']} kernel {kernel['name']!r} is quantized per channel (dimension "
            f"{kernel['quantized_dimension']}); a per-tensor LUT on it runs on TFLite Micro without an "
            "error and gives wrong outputs, so compress it per channel")
    candidates, reasons = {}, []
    if "lut" in encodings:
        size, method = _lut_candidate(kernel, mode, entry)
        if size is None:
            reasons.append(method)
        else:
            candidates[f"lut_{mode}"] = (size, method)
    if "prune" in encodings:
        size, method = _prune_candidate(kernel)
        if size is None:
            reasons.append(method)
        else:
            candidates["prune"] = (size, method)
    entry["candidates"] = {name: size for name, (size, _) in candidates.items()}
    if kernel["shared"]:
        entry["reason"] = "its buffer is shared with another tensor, whose dense copy would stay"
        return entry, None
    if not candidates:
        entry["reason"] = "; ".join(reasons) or "no encoding asked for"
        return entry, None
    # The smallest data; a tie goes to the LUT (listed first), measured on the runtime longest.
    encoding, (after, method) = min(candidates.items(), key=lambda c: c[1][0])
    overhead = DECODE_OVERHEAD_BYTES + 2 * len(kernel["name"].encode())
    if after + overhead >= w.size:
        entry["reason"] = "; ".join(reasons + [
            f"{name.replace('_', ' ')} takes {size} bytes" for name, (size, _) in candidates.items()]) + (
            f", plus about {overhead} of DECODE metadata: not less than the {w.size} dense bytes")
        return entry, None
    entry.update(encoding=encoding, bytes_after=after)
    if encoding == "prune":
        entry["axis"] = None
    else:
        entry["index_bits"] = method.index_bitwidth
    return entry, method


# --- compression ------------------------------------------------------------------------

def compress_for_micro(tflite_b1_bytes, mode="per_channel", encodings=ENCODINGS):
    """(compressed .tflite bytes, report) for TFLite Micro: few-valued kernels become LUT indices,
    sparse ones a PRUNE bitmap + values.

    Every constant int8 kernel of a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op gets the
    smallest encoding the pinned runtime decodes exactly, among `encodings`: a per-channel LUT on
    the kernel's quantized dimension with ceil(log2(max distinct values in a channel)) index bits
    (1..7); PRUNE (micro_prune: a bit per element, the nonzero values); or dense int8 when neither
    applies or saves bytes. mode="per_tensor" asks for one LUT table per kernel:
    MicroCompressionError for a per-channel-quantized kernel, whose outputs TFLite Micro would get
    wrong.

    report: {"tensors": [{name, op, shape, encoding ("dense_int8" / "lut_per_channel" /
    "lut_per_tensor" / "prune"), index_bits (LUT only), axis, values_per_channel_max, nonzeros,
    bytes_before, bytes_after (the tensor's data: packed indices or bitmap + DCM + value tables),
    candidates ({encoding: data bytes} of those measured), reason (why dense, or None)}],
    "file_bytes_before", "file_bytes_after", "compressed_tensors", "ops"}. When nothing is worth
    compressing the input bytes come back unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    encodings = tuple(encodings)
    if set(encodings) - set(ENCODINGS):
        raise ValueError(f"encodings must be among {ENCODINGS}, got {encodings!r}")
    original = bytes(tflite_b1_bytes)
    kernels = kernel_tensors(original)
    plans = [(k,) + _plan(k, mode, encodings) for k in kernels]
    chosen = [(k, entry, method) for k, entry, method in plans if method is not None]
    # Least saving first: dropped first should the whole file not shrink.
    chosen.sort(key=lambda p: p[1]["bytes_before"] - p[1]["bytes_after"])
    compressed = original
    while chosen:
        compressed = _compress(original, chosen)
        if len(compressed) < len(original):
            break
        k, entry, _ = chosen.pop(0)
        entry.update(encoding="dense_int8", index_bits=None, bytes_after=entry["bytes_before"],
                     reason="compressing it did not make the file smaller")
    if not chosen:
        compressed = original
    report = {
        "tensors": [entry for _, entry, _ in plans],
        "compressed_tensors": len(chosen),
        "file_bytes_before": len(original),
        "file_bytes_after": len(compressed),
        "ops": list(dict.fromkeys(model_ops(compressed))),
    }
    return compressed, report


def micro_file(tflite_b1_bytes):
    """(the microcontroller's file, report): compress_for_micro's file without tensor names
    (tflite.strip_names: flash holds no debug strings); report["names_stripped_bytes"] says what they cost."""
    from atmc_tf.export.tflite import strip_names
    compressed, report = compress_for_micro(tflite_b1_bytes)
    stripped = strip_names(compressed)
    report["names_stripped_bytes"] = len(compressed) - len(stripped)
    return stripped, report


def device_bytes(tflite_bytes, micro_bytes, micro_uncompressed_bytes=None):
    """What each device stores, in bytes, beside the download size: "litert" (a phone keeps the .tflite
    as it is: LiteRT has no DECODE operator), "tflm" (a microcontroller's flash holds
    compress_for_micro's file), "tflm_uncompressed" (the batch-1 file before it; default: the
    .tflite), "gzip" (the .tflite gzipped: what a download costs, not what a device holds)."""
    return {"litert": len(tflite_bytes), "tflm": len(micro_bytes),
            "tflm_uncompressed": len(micro_uncompressed_bytes if micro_uncompressed_bytes is not None
                                     else tflite_bytes),
            "gzip": gzip_size(tflite_bytes)}


def _compress(original, chosen):
    compress, model_editor, spec, spec_builder = _compression_api()
    builder = spec_builder.SpecBuilder()
    pruned = []
    for k, entry, method in chosen:
        if isinstance(method, spec.LookUpTableCompression):
            builder.add_tensor(subgraph=k["subgraph"], tensor=k["tensor"]).with_lut(
                index_bitwidth=method.index_bitwidth, mode=method.mode)
        else:  # micro_prune.PruneCompression: the SpecBuilder has no with_pruning
            pruned.append(spec.Tensor(subgraph=k["subgraph"], tensor=k["tensor"], compression=[method]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tensor the package would skip (or expand) is a bug in _plan
        compressed = compress.compress(original, builder.build() + pruned)
    return _clear_encoded_quantization(compressed)


def _clear_encoded_quantization(compressed):
    """The compressed model without the stale per-channel quantization that the package leaves on
    each encoded (UINT8) DECODE input: the TFLite verifier rejects it, TFLM ignores it."""
    compress, model_editor, _, _ = _compression_api()
    model = model_editor.read(bytes(compressed))
    for graph in model.subgraphs:
        for op in graph.operators:
            if op.custom_code == DECODE_OP:
                for encoded in op.inputs[0::2]:  # (encoded, ancillary) pairs
                    encoded.quantization = None
                    encoded._fb.quantization = None
    return bytes(compress._apply_flatbuffer_alignment(model.build()))


def model_ops(tflite_bytes):
    """Operator names in execution order, custom ops (TFLM_DECODE) by their custom code."""
    from atmc_tf.export.tflite import parse_check
    model = parse_check(tflite_bytes)
    names = _enum_names("BuiltinOperator")
    out = []
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if code.customCode:
                out.append(code.customCode.decode())
            else:
                out.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?"))
    return out


# --- the check on TFLite Micro ----------------------------------------------------------

@dataclasses.dataclass
class CompressedMicroCheck:
    """Outcome of micro_outputs_equal. ok: TFLM ran both models on every sample and the outputs are
    bit-identical. Arenas: each model's smallest working TFLM arena (to micro.ARENA_GRANULARITY);
    arena_growth_bytes: what the decoded kernels add."""
    ok: bool = False
    samples_checked: int = 0
    max_abs_diff: int | None = None
    samples_differing: int | None = None
    arena_bytes_original: int | None = None
    arena_bytes_compressed: int | None = None
    arena_growth_bytes: int | None = None
    error: str | None = None

    def __bool__(self):
        return self.ok

    def as_dict(self):
        return dataclasses.asdict(self)


def _tflm_outputs(model, x, label, timeout_s, arena=None):
    """(smallest arena, outputs of every sample run with it) on TFLM, each attempt in a child;
    `arena`: a size already known to work (check_micro found it), so no search."""
    if arena is None:
        first = _child(model, "probe", ARENA_MAX, x[:1], timeout_s)
        if first["error"]:
            raise _CheckFailed(f"the {label} model fails on TFLite Micro: {first['error']} "
                               f"({_tail(chr(10).join(first['log']))})")
        arena = _smallest_arena(model, x[:1], timeout_s)
    run = _child(model, "run", arena, x, timeout_s)
    if run["error"]:
        raise _CheckFailed(f"the {label} model fails running the samples with a {arena}-byte arena: "
                           f"{run['error']} ({_tail(chr(10).join(run['log']))})")
    return arena, run["outputs"]


def micro_outputs_equal(original_b1, compressed_b1, x_int8, timeout_s=DEFAULT_TIMEOUT_S, arena_original=None):
    """Run both models on TFLite Micro (child processes, as check_micro does) on the same batch-1
    int8 inputs x_int8 [n, ...] and require bit-identical outputs; each at its smallest arena
    (arena_original: the original's, when check_micro measured it already; not searched again).
    Never raises: failures go to CompressedMicroCheck.error."""
    result = CompressedMicroCheck()
    try:
        x = np.asarray(x_int8)
        if len(x) == 0:
            raise _CheckFailed("no samples to check")
        if x.dtype != np.int8:
            raise _CheckFailed(f"samples must be int8, got {x.dtype}")
        result.arena_bytes_original, before = _tflm_outputs(bytes(original_b1), x, "original", timeout_s,
                                                            arena_original)
        result.arena_bytes_compressed, after = _tflm_outputs(bytes(compressed_b1), x, "compressed", timeout_s)
        result.arena_growth_bytes = result.arena_bytes_compressed - result.arena_bytes_original
        if before.shape != after.shape:
            raise _CheckFailed(f"outputs shaped {after.shape}, the original's {before.shape}")
        diff = np.abs(before.astype(np.int32) - after.astype(np.int32)).reshape(len(x), -1)
        result.samples_checked = len(x)
        result.max_abs_diff = int(diff.max())
        result.samples_differing = int((diff.max(axis=1) > 0).sum())
        if result.max_abs_diff:
            raise _CheckFailed(f"TFLM outputs of the compressed model differ on {result.samples_differing} of "
                               f"{len(x)} samples, by up to {result.max_abs_diff} int8 steps")
        result.ok = True
    except Exception as e:  # noqa: BLE001 -- the contract is to report, not raise
        result.ok = False
        result.error = str(e) if isinstance(e, _CheckFailed) else f"{type(e).__name__}: {e}"
    return result
