"""A PRUNE encoder for TFLite Micro's DECODE operator (decode type 2), which the pinned package lacks.

The pinned `tflite-micro` package (0.dev20261023182759, built from commit 8f6596d) carries the
runtime's PRUNE decoder (its _runtime.so exports tflite::DecodeStatePrune::Setup / Decode /
DecompressToBuffer<int8_t> / DecompressToBufferPerChannelInt8 and prints that decoder's messages)
but its Python encoder, compression/pruning.py, is a stub that raises. The decoder read here is
tensorflow/lite/micro/kernels/decode_state_prune.cc at tflite-micro 90b983c (2026-08-20, the newest
commit fetched; last changed 1ed47b1, 2026-01-12; its error strings are those in the .so):

- ancillary tensor (UINT8): the 16-byte DECODE common metadata (byte 0: decode type 2, byte 1: DCM
  version 1, byte 4: PRUNE version 1, the rest 0), then the value table: every element that is not
  its zero point, in the decoded tensor's flat (row-major) order, as the decoded type's bytes;
- encoded tensor (UINT8): one bit per element of the decoded tensor, flat order, most significant
  bit first (element i is bit 7 - i % 8 of byte i // 8), 1 = take the next value from the table,
  0 = the zero point;
- zero points come from the decoded tensor's quantization (which decode_insert copies from the
  kernel, per-channel scales included): one per channel along quantized dimension 0 or the last one
  when several are nonzero, else the first; other quantized dimensions fail Setup ("unsupported
  quantization axis"), as does a nonzero zero point on a non-int8 tensor.

So a kernel of n int8 elements, z of them nonzero, costs ceil(n / 8) + 16 + z data bytes (prune_bytes)
against the LUT's ceil(n * b / 8) + 16 + channels * values: at 1% nonzeros about 1.08 bits a weight
whatever the codebook. Chaining decoders (PRUNE values that are LUT indices) is not possible on this
runtime: each DECODE input pair must be constant tensors (decode.cc Prepare:
TF_LITE_ENSURE(IsConstantTensor(input))), so one DECODE cannot read another's output, and PRUNE's
value table holds the decoded type's values. Huffman (decode type 1) would not help either: at least
one bit per element, and the package's encoder is a stub as well.

The encoder plugs into the package's own compress(): PruneCompression (a subclass of the package's
spec.PruningCompression) is added to compress._COMPRESSORS, the package's plugin dispatch table (a
private name: register() says so in one line if it moves), so the package still checks the
tensor, inserts the DECODE operators, rewires the readers, dedupes buffers and aligns the file.
"""
import dataclasses
import importlib
import math

import numpy as np

from tflite_micro.tensorflow.lite.micro.compression import compressor, decode, spec

# The package's __init__ binds `compress` to the function, hiding the module of that name.
_compress_module = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")

PRUNE_VERSION = 1  # DCM byte 4, checked by DecodeStatePrune::Setup
DCM_BYTES = decode.DecodeCommonMetadata.SIZE  # 16


def prune_bytes(size, nonzeros):
    """Data bytes of a PRUNE-encoded tensor of `size` one-byte elements, `nonzeros` of them kept:
    the bitmap, the DCM header and the value table."""
    return math.ceil(int(size) / 8) + DCM_BYTES + int(nonzeros)


def _zero_points(zero_points, axis, shape):
    """The runtime's zero point for every element (broadcastable), or raise as its Setup would fail."""
    zps = [int(zero_points)] if np.isscalar(zero_points) else [int(z) for z in zero_points]
    rank = len(shape)
    axis = 0 if axis is None else int(axis)
    if not ((axis == rank - 1 and len(zps) > 1) or axis == 0):
        raise compressor.CompressionError(
            f"quantized dimension {axis} of a rank-{rank} tensor: TFLite Micro's PRUNE decoder takes 0 "
            "or the last (with several channels) only")
    if len(zps) > 1 and any(zps):
        if len(zps) != shape[axis]:
            raise compressor.CompressionError(f"{len(zps)} zero points for {shape[axis]} channels")
        bshape = [1] * rank
        bshape[axis] = len(zps)
        return np.asarray(zps).reshape(bshape)
    return zps[0] if zps else 0


def encode(values, zero_points=0, axis=None):
    """(encoded bitmap bytes, ancillary bytes) of `values` for DecodeStatePrune; `zero_points`,
    `axis`: the decoded tensor's quantization (the zero point stands for an element whose bit is 0)."""
    values = np.asarray(values)
    zp = _zero_points(zero_points, axis, values.shape)
    if values.dtype != np.int8:
        if np.any(zp):
            raise compressor.CompressionError("TFLite Micro's PRUNE decoder needs zero points of 0 "
                                              f"for {values.dtype} tensors")
        # The decoder copies raw element bits (a float as int32): keep what is not all-zero bits.
        raw = values.view(f"u{values.dtype.itemsize}") if values.dtype.itemsize in (1, 2, 4, 8) else None
        if raw is None:
            raise compressor.CompressionError(f"no PRUNE decoding for {values.dtype} tensors")
        keep = raw != 0
    else:
        keep = values != zp
    keep = np.ascontiguousarray(keep).ravel()
    bitmap = np.packbits(keep, bitorder="big").tobytes()
    table = np.ascontiguousarray(values).ravel()[keep].tobytes()
    dcm = decode.DecodeCommonMetadata(decode_type=decode.DecodeType.PRUNING,
                                      user_data=bytes([PRUNE_VERSION]) + bytes(11))
    return bitmap, dcm.to_bytes() + table


@dataclasses.dataclass
class PruneCompression(spec.PruningCompression):
    """The package's pruning spec entry, encoded by PruneCompressor (the package's own raises)."""


class PruneCompressor(compressor.Compressor):
    """The package's Compressor protocol for PRUNE: bitmap + value table, as DecodeStatePrune reads."""

    @property
    def decode_type(self):
        return decode.DecodeType.PRUNING

    def compress(self, tensor, method):
        if not isinstance(method, spec.PruningCompression):
            raise compressor.CompressionError(f"PruneCompressor requires PruningCompression, got {type(method)}")
        if tensor.array is None:
            raise compressor.CompressionError("Tensor has no data to compress")
        q = tensor.quantization
        zero_points, axis = (0, None) if q is None else (q.zero_points, q.axis)
        encoded, ancillary = encode(tensor.array, zero_points, axis)
        return compressor.CompressionResult(encoded_data=encoded, ancillary_data=ancillary)


def register():
    """Add PruneCompression -> PruneCompressor to the package's compress() dispatch (idempotent;
    the package's own PruningCompression entry, the stub, is left as it is)."""
    table = getattr(_compress_module, "_COMPRESSORS", None)
    if not isinstance(table, dict):
        raise RuntimeError("tflite_micro's compress module no longer has its _COMPRESSORS plugin table: "
                           "the PRUNE encoder cannot plug into this version of the package")
    table.setdefault(PruneCompression, PruneCompressor())
    return PruneCompression
