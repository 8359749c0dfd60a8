"""Size accounting: paper bits (no index overhead), honest bits, ratios."""
import pytest

from atmc_tf.constraints import TensorSize, size_report
from atmc_tf.constraints.accounting import budget_for_ratio


def test_paper_and_honest_bits_by_hand():
    t = TensorSize("w", numel=1000, nnz=100, levels=16)
    assert t.paper_bits == 100 * 4 + 16 * 32
    assert t.index_bits == min(1000, 100 * 10)
    r = size_report([t], dense_weights=1000)
    assert r.dense_bits == 32000
    assert r.paper_ratio == pytest.approx((400 + 512) / 32000)
    assert r.honest_bits == 400 + 512 + 1000


def test_fp32_and_int8_scales():
    fp = TensorSize("w", numel=10, nnz=10)
    assert fp.paper_bits == 320 and fp.index_bits == 0
    q = TensorSize("w", numel=64, nnz=8, levels=4, scales=8)
    assert q.honest_bits == q.paper_bits + min(64, 8 * 6) + 8 * 32


def test_budget_for_ratio():
    assert budget_for_ratio(0.01, 100_000) == 1000
    assert budget_for_ratio(0.01, 100_000, bits=8, tensors=0) == 4000
    # each of 3 tensors pays a 16 x 32-bit codebook
    assert budget_for_ratio(0.01, 100_000, bits=4, tensors=3) == (32_000 - 3 * 16 * 32) // 4
    with pytest.raises(ValueError, match="codebooks"):
        budget_for_ratio(0.01, 1000, bits=8, tensors=4)
    with pytest.raises(ValueError):
        size_report([], 0)
