"""Fewer bytes on phones: an int8 .tflite whose uniform low-bit kernels LiteRT stores packed int4.

LiteRT (the phone runtime) has no DECODE operator, so TFLite Micro's look-up-table
compression (micro_compress) does not run there. What the pinned LiteRT 2.3.0 does run is a
FULLY_CONNECTED or CONV_2D whose weights are an INT4 tensor (two codes per byte, the even
element in the low nibble) with int8 activations (docs/device_bytes_litert.md measures it).

A kernel trained on the "uniform_int8" lattice with b <= 4 bits has, in every output channel c,
the int8 codes round(j * 127 / L), j in [-L, L], L = 2^(b-1) - 1, scale s_c: they are stored
here as the int4 codes j with scale s_c * 127 / L. That changes each weight by at most half an
int8 step (the int8 lattice rounds j * 127 / L; the int4 one does not), and the int32 bias is
requantized to the new bias scale (input scale x weight scale, which LiteRT checks). Outputs
are therefore not bit-identical to the int8 model's; to_litert_packed's callers check accuracy
(tests/test_litert_packed.py: within 1 point on digits). Everything else in the file (int8
input and output, activation scales, ops, DEPTHWISE_CONV_2D kernels) is the int8 model's.

Nothing here needs a dependency beyond the pinned ai-edge-litert (its schema module and the
flatbuffers package it installs).
"""
import numpy as np

from atmc_tf.export.tflite import _enum_names, _litert, _op_name, is_winners_count, parse_check, to_int8_tflite

PACKABLE_OPS = ("FULLY_CONNECTED", "CONV_2D")
# The uniform b-bit lattices whose codes fit int4 ([-8, 7]): L = 2^(b-1) - 1 for b = 2, 3, 4.
LATTICE_HALVES = (1, 3, 7)


def lattice_half(codes, quantized_dimension=0):
    """The smallest L in LATTICE_HALVES such that every int8 code lies on {round(j * 127 / L)},
    j in [-L, L] (the uniform (log2(L+1)+1)-bit lattice); None when there is none."""
    codes = np.asarray(codes, dtype=np.int32)
    for half in LATTICE_HALVES:
        j = np.round(codes * half / 127.0)
        if np.array_equal(np.round(j * 127.0 / half).astype(np.int32), codes):
            return half
    return None


def pack_int4(values):
    """Signed int4 values (in [-8, 7]) -> bytes as TFLite stores an INT4 tensor: row-major, two
    per byte, element 2i in the low nibble, an odd count padded with a zero nibble."""
    v = np.asarray(values, dtype=np.int8).reshape(-1)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got [{v.min()}, {v.max()}]")
    nibbles = (v.astype(np.uint8) & 0x0F)
    if nibbles.size % 2:
        nibbles = np.concatenate([nibbles, np.zeros(1, np.uint8)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, count):
    """Inverse of pack_int4: the first `count` signed int4 values."""
    b = np.asarray(packed, dtype=np.uint8)
    low = (b & 0x0F).astype(np.int8)
    high = (b >> 4).astype(np.int8)
    v = np.stack([low, high], axis=1).reshape(-1)[:count]
    return np.where(v > 7, v - 16, v).astype(np.int8)


def pack_int4_kernels(tflite_bytes):
    """(bytes, report): the int8 .tflite with every FULLY_CONNECTED / CONV_2D kernel whose codes
    lie on a uniform lattice of at most 15 levels (LATTICE_HALVES) stored as packed INT4.

    report: one row per kernel op, {op, name, packed, lattice_half, int8_bytes, stored_bytes},
    and "bytes" / "int8_bytes" for the whole file. Kernels off the lattice stay int8, so a model
    without any packable kernel comes back unchanged (apart from re-serialization).
    """
    import flatbuffers

    schema = _litert()[0]
    data = bytes(tflite_bytes)
    parse_check(data)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    names = _enum_names("TensorType")
    users = {}
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    rows = []
    for graph in model.subgraphs:
        for op in graph.operators:
            op_name = _op_name(model, op)
            if (op_name not in PACKABLE_OPS and op_name != "DEPTHWISE_CONV_2D") or is_winners_count(
                    model, graph, op, data):
                continue
            tensor = graph.tensors[op.inputs[1]]
            buffer = model.buffers[tensor.buffer]
            row = {"op": op_name, "name": tensor.name.decode(), "packed": False, "lattice_half": None,
                   "int8_bytes": 0 if buffer.data is None else len(buffer.data)}
            row["stored_bytes"] = row["int8_bytes"]
            rows.append(row)
            if op_name not in PACKABLE_OPS or names.get(tensor.type) != "INT8" or buffer.data is None:
                continue
            q = tensor.quantization
            if q is None or q.scale is None or (q.zeroPoint is not None and np.any(np.asarray(q.zeroPoint) != 0)):
                continue
            codes = np.asarray(buffer.data, dtype=np.uint8).view(np.int8).reshape(tensor.shape)
            half = lattice_half(codes)
            if half is None:
                continue
            if users[tensor.buffer] != 1:  # a shared buffer: give this tensor its own
                model.buffers.append(schema.BufferT())
                tensor.buffer = len(model.buffers) - 1
                buffer = model.buffers[tensor.buffer]
            j = np.round(codes.astype(np.float64) * half / 127.0).astype(np.int8)
            factor = 127.0 / half
            buffer.data = pack_int4(j)
            tensor.type = schema.TensorType.INT4
            q.scale = (np.asarray(q.scale, np.float64) * factor).astype(np.float32)
            if len(op.inputs) > 2 and op.inputs[2] >= 0:
                _rescale_bias(model, graph, graph.tensors[op.inputs[2]], factor, users, schema)
            row.update(packed=True, lattice_half=half, stored_bytes=len(buffer.data))
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    return out, {"kernels": rows, "bytes": len(out), "int8_bytes": len(data)}


def _rescale_bias(model, graph, bias, factor, users, schema):
    """The int32 bias of a kernel whose scale grew by `factor`: same float values at the new
    scale (input scale x the new weight scale), rounded half away from zero."""
    if _enum_names("TensorType").get(bias.type) != "INT32" or bias.quantization is None:
        return
    buffer = model.buffers[bias.buffer]
    if buffer.data is None or not len(buffer.data):
        return
    if users[bias.buffer] != 1:
        model.buffers.append(schema.BufferT(data=np.asarray(buffer.data, np.uint8).copy()))
        bias.buffer = len(model.buffers) - 1
        buffer = model.buffers[bias.buffer]
    q = np.asarray(buffer.data, dtype=np.uint8).view(np.int32).astype(np.float64) / factor
    buffer.data = (np.sign(q) * np.floor(np.abs(q) + 0.5)).astype(np.int32).view(np.uint8)
    bias.quantization.scale = (np.asarray(bias.quantization.scale, np.float64) * factor).astype(np.float32)


def to_litert_packed(model, representative_x, batch_size=None):
    """(bytes, report): to_int8_tflite(model, ...) with the uniform low-bit FULLY_CONNECTED /
    CONV_2D kernels stored as packed int4 (pack_int4_kernels): for LiteRT on phones, int8 input
    and output as the int8 model. Accuracy is close to, not bit-identical with, the int8 model's
    (module docstring)."""
    return pack_int4_kernels(to_int8_tflite(model, representative_x, batch_size=batch_size))
