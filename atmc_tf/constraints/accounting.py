"""Model size accounting, the paper's way and an honest way.

- dense_bits: 32 x number of weights of the compressed layers (the original
  kernels, whatever parametrisation training used).
- paper_bits: sum over compressed tensors of nnz x ceil(log2(codebook)) +
  codebook x 32 (fp32 tensors: nnz x 32). No index overhead, as the reference
  counts it.
- honest_bits: paper_bits + the cheaper index code per tensor (a bitmap of
  numel bits, or nnz x ceil(log2(numel)) absolute positions) + 32 bits per
  per-channel scale for the int8-lattice schemes.
"""
import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class TensorSize:
    name: str
    numel: int            # entries of this stored tensor
    nnz: int              # nonzero entries
    levels: int = 0       # distinct nonzero values (codebook size); 0 = fp32
    scales: int = 0       # per-channel fp32 scales stored beside the codes

    @property
    def value_bits(self):
        if self.levels <= 0:
            return 32 * self.nnz
        return self.nnz * math.ceil(math.log2(self.levels)) if self.levels > 1 else 0

    @property
    def paper_bits(self):
        return self.value_bits + 32 * max(self.levels, 0)

    @property
    def index_bits(self):
        if self.nnz == self.numel:
            return 0
        positions = self.nnz * max(1, math.ceil(math.log2(max(self.numel, 2))))
        return min(self.numel, positions)

    @property
    def honest_bits(self):
        return self.paper_bits + self.index_bits + 32 * self.scales


@dataclasses.dataclass(frozen=True)
class SizeReport:
    dense_bits: int
    paper_bits: int
    honest_bits: int
    nnz: int
    tensors: tuple

    @property
    def paper_ratio(self):
        return self.paper_bits / self.dense_bits

    @property
    def honest_ratio(self):
        return self.honest_bits / self.dense_bits

    def as_dict(self):
        return {
            "dense_bits": self.dense_bits,
            "paper_bits": self.paper_bits,
            "honest_bits": self.honest_bits,
            "paper_ratio": self.paper_ratio,
            "honest_ratio": self.honest_ratio,
            "nnz": self.nnz,
            "tensors": [dataclasses.asdict(t) for t in self.tensors],
        }


def size_report(tensors, dense_weights):
    """tensors: iterable of TensorSize; dense_weights: weights of the original kernels."""
    tensors = tuple(tensors)
    if dense_weights <= 0:
        raise ValueError("dense_weights must be positive")
    return SizeReport(
        dense_bits=32 * int(dense_weights),
        paper_bits=sum(t.paper_bits for t in tensors),
        honest_bits=sum(t.honest_bits for t in tensors),
        nnz=sum(t.nnz for t in tensors),
        tensors=tensors,
    )


def budget_for_ratio(size_ratio, dense_weights, bits=None, tensors=0):
    """Nonzero budget k so that paper_bits <= size_ratio x dense_bits.

    With b-bit codebooks each nonzero costs b bits and each of the `tensors`
    compressed tensors pays for a 2^b x 32-bit codebook; fp32 nonzeros cost 32.
    Raises ValueError when the codebooks alone exceed the size allowed.
    """
    allowed = size_ratio * 32 * dense_weights
    if bits is None:
        return max(1, int(allowed / 32))
    codebooks = int(tensors) * (2 ** int(bits)) * 32
    if allowed - codebooks < bits:
        raise ValueError(
            f"size ratio {size_ratio:g} allows {allowed:.0f} bits, but {tensors} codebooks of 2^{bits} "
            f"fp32 values take {codebooks} bits; raise the size ratio or lower the bits")
    return max(1, int((allowed - codebooks) / int(bits)))
