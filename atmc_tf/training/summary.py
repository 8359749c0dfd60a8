"""Size accounting of a wrapped model (paper-style and honest bits)."""
import numpy as np

from atmc_tf.constraints import TensorSize, num_levels, size_report
from atmc_tf.layers import atmc_wrappers

INT8_SCHEMES = ("codebook_int8", "uniform_int8")


def model_size(net, scheme=None, bits=None):
    """SizeReport over every compressed tensor of a wrapped model.

    scheme None counts nonzeros as fp32; otherwise each tensor's codebook is
    the number of distinct nonzero values it really holds (float values for
    "codebook", int8 codes for the lattice schemes, which also store one fp32
    scale per output channel).
    """
    tensors, dense = [], 0
    for w in atmc_wrappers(net):
        dense += w.dense_size
        for v in w.compressed_variables:
            value = np.asarray(v.value)
            levels = int(num_levels(value, scheme, w.channel_axes)) if scheme else 0
            scales = 0
            if scheme in INT8_SCHEMES:
                scales = int(np.prod([value.shape[a] for a in w.channel_axes]))
            tensors.append(TensorSize(name=v.path, numel=int(value.size),
                                      nnz=int(np.count_nonzero(value)), levels=levels, scales=scales))
    if not tensors:
        raise ValueError("model has no ATMC-wrapped layers to account for")
    return size_report(tensors, dense)
