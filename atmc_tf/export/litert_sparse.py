"""Fewer bytes on phones for sparse kernels: the converter's sparse tensor format, which LiteRT reads.

ATMC's global L0 budget leaves most kernel entries zero, but an int8 .tflite stores every kernel
dense, so a phone keeps the same bytes at every size ratio. The TFLite converter can store a
constant weight tensor in TFLite's sparse format (`Optimize.EXPERIMENTAL_SPARSITY`: compressed
sparse rows of blocks, `SparsityParameters` in the schema); LiteRT then either runs the op on it
(int8 FULLY_CONNECTED with 1x16 blocks has a sparse kernel) or expands it once, when the
interpreter prepares the model, with a DENSIFY op in front of the reader (CONV_2D and the rest).
Either way the file, i.e. what a phone stores and downloads, holds only the nonzero blocks.
docs/device_bytes_litert.md (route C) measured it on the pinned stack: int8 in and out, outputs
within 1 LSB of the dense int8 model's.

What this costs at run time is said, not hidden: `sparse_tensors` lists each sparse tensor, its
stored and dense bytes, and whether a DENSIFY expands it (then the phone's RAM holds the dense
copy, as it does for the dense file). The caller decides whether the file ships: the pipeline
checks it on LiteRT against the dense int8 model (accuracy and top-1 agreement) first.

TFLite Micro has no sparse tensors and no DENSIFY: microcontrollers get compress_for_micro's
LUT / PRUNE file instead.
"""
import numpy as np

from atmc_tf.export.tflite import _enum_names, _op_name, parse_check, to_int8_tflite


def to_litert_sparse(model, representative_x, batch_size=None):
    """The full-integer int8 .tflite of `model` (as to_int8_tflite) with its sparse constant kernels
    stored in TFLite's sparse format (the converter decides which tensors pay)."""
    return to_int8_tflite(model, representative_x, batch_size=batch_size, sparsity=True)


def sparse_tensors(tflite_bytes):
    """One dict per tensor stored sparse: name, shape, block_map (e.g. [16]: 1x16 blocks along
    the last dimension), stored_bytes (its buffer), dense_bytes (elements x element size),
    densified (True when a DENSIFY op expands it at run time), reader (the op reading it or its
    dense copy)."""
    model = parse_check(tflite_bytes)
    types = _enum_names("TensorType")
    size = {"INT8": 1, "UINT8": 1, "INT16": 2, "FLOAT16": 2, "INT32": 4, "FLOAT32": 4}
    out = []
    for graph in model.subgraphs:
        readers = {}
        for op in graph.operators:
            for i in op.inputs:
                if i >= 0:
                    readers.setdefault(int(i), []).append(op)
        for index, tensor in enumerate(graph.tensors):
            if tensor.sparsity is None:
                continue
            reader = (readers.get(index) or [None])[0]
            densified = reader is not None and _op_name(model, reader) == "DENSIFY"
            if densified:  # the op that reads the dense copy
                reader = (readers.get(int(reader.outputs[0])) or [None])[0]
            buffer = model.buffers[tensor.buffer]
            shape = [int(d) for d in (tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape)]
            out.append({"name": tensor.name.decode(), "shape": shape,
                        "block_map": [int(b) for b in (tensor.sparsity.blockMap if tensor.sparsity.blockMap is not None
                                                       else [])],
                        "stored_bytes": int(len(buffer.data)) if buffer.data is not None else int(buffer.size),
                        "dense_bytes": int(np.prod(shape)) * size.get(types.get(tensor.type, "?"), 1),
                        "densified": bool(densified),
                        "reader": _op_name(model, reader) if reader is not None else None})
    return out


def sparse_summary(tflite_bytes):
    """(sparse tensor count, stored bytes, dense bytes, bytes DENSIFY expands at run time)."""
    tensors = sparse_tensors(tflite_bytes)
    return {"tensors": len(tensors), "stored_bytes": sum(t["stored_bytes"] for t in tensors),
            "dense_bytes": sum(t["dense_bytes"] for t in tensors),
            "densified_bytes": sum(t["dense_bytes"] for t in tensors if t["densified"])}
