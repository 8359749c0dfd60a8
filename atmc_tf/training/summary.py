"""Size accounting of a wrapped model (paper-style and honest bits)."""
import numpy as np

from atmc_tf.constraints import TensorSize, num_levels, size_report
from atmc_tf.layers import atmc_wrappers, kernel_channel_axes

INT8_SCHEMES = ("codebook_int8", "uniform_int8")


def model_size(net, scheme=None, bits=None):
    """SizeReport over every compressed kernel of a wrapped model, as it deploys (strip_model).

    scheme None counts nonzeros as fp32; otherwise each tensor's codebook is
    the number of distinct nonzero values it really holds (float values for
    "codebook", int8 codes for the lattice schemes, which also store one fp32
    scale per output channel).
    """
    tensors, dense = [], 0
    for w in atmc_wrappers(net):
        dense += w.dense_size
        # What deploys: a factorized kernel (abc, lowrank) ships as the kernel strip_model computes
        # from its factors, so that kernel is what is counted, not the factors the constraints saw.
        if w.factorization == "none":
            deployed, axes = [(v.path, v.value) for v in w.compressed_variables], w.channel_axes
        else:
            deployed, axes = [(f"{w.name}/effective_kernel", w.effective_kernel())], kernel_channel_axes(w.layer)
        for name, value in deployed:
            value = np.asarray(value)
            levels = int(num_levels(value, scheme, axes)) if scheme else 0
            scales = 0
            if scheme in INT8_SCHEMES:
                scales = int(np.prod([value.shape[a] for a in axes]))
            tensors.append(TensorSize(name=name, numel=int(value.size),
                                      nnz=int(np.count_nonzero(value)), levels=levels, scales=scales))
    if not tensors:
        raise ValueError("model has no ATMC-wrapped layers to account for")
    return size_report(tensors, dense)
