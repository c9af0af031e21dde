"""Shared inputs and reference comparisons for the kernel tests (reference always runs on the CPU)."""
from __future__ import annotations

import torch

from fp4lab import formats
from fp4lab.kernels.mxfp4 import mxfp4_fake_triton
from fp4lab.kernels.nvfp4 import nvfp4_triton

ORDERS = ("torchao", "te", "compressed-tensors")
# (columnwise, rht, block_2d)
VARIANTS = {
    "rowwise": (False, False, False),
    "columnwise": (True, False, False),
    "rht_columnwise": (True, True, False),
    "2d": (False, False, True),
    "2d_columnwise": (True, False, True),
}


def spread_input(M, K, dtype=torch.bfloat16, seed=0, device="cpu"):
    """Random rows with magnitudes over e^±3, an outlier, an all-zero row block and an underflowing block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * torch.exp(3 * torch.rand(M, 1, generator=g) - 1.5)
    if M > 2 and K > 16:
        x[1, :16] = 0.0  # all-zero block
        x[0, 3] = 300.0  # outlier: sets the tensor amax
        x[2, :16] *= 1e-7  # block whose scale underflows to an E4M3 subnormal or zero
    return x.to(dtype).to(device)


def reference_operand(x, columnwise, rht):
    t = x.cpu().reshape(-1, x.shape[-1]).T if columnwise else x.cpu()
    return formats.random_hadamard_16(t, nonfinite="propagate") if rht else t


# On the GPU the RHT's 16-term sums run on tensor cores, whose fp32 accumulation may round differently
# from the reference's exactly-summed-then-rounded result when the fp32 sum is inexact; that changes the
# BF16-rounded RHT output only at a BF16 rounding tie, so a handful of bytes in a million may differ.
# Everywhere else (and for RHT under the interpreter, which sums in fp32) the tolerance is zero.
RHT_GPU_TOL = 1e-5


def _assert_bytes_equal(a, b, what, tol):
    assert a.shape == b.shape, (what, a.shape, b.shape)
    bad = (a != b).nonzero()
    allowed = int(tol * a.numel())
    assert bad.shape[0] <= allowed, f"{bad.shape[0]} {what} differ (allowed {allowed}), first at {bad[0].tolist()}"


def assert_same_nvfp4(q, r, tol=0.0):
    assert q.shape == r.shape, (q.shape, r.shape)
    assert q.scale_order == r.scale_order and q.block_2d == r.block_2d
    _assert_bytes_equal(q.codes.cpu(), r.codes, "code bytes", tol)
    _assert_bytes_equal(q.scales.cpu().view(torch.uint8), r.scales.view(torch.uint8), "scale bytes", tol)
    assert torch.equal(q.global_amax.cpu(), r.global_amax), (q.global_amax, r.global_amax)


def assert_bitwise_equal(a, b, tol=0.0):
    a = a.cpu()
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    # compare bit patterns, so -0.0 vs 0.0 counts as a difference
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    bad = (a.view(view) != b.view(view)).nonzero()
    allowed = int(tol * a.numel())
    assert bad.shape[0] <= allowed, (
        f"{bad.shape[0]} values differ (allowed {allowed}), first at {bad[0].tolist()}: "
        f"{a[tuple(bad[0])]} vs {b[tuple(bad[0])]}")


def rht_tol(x, rht):
    return RHT_GPU_TOL if rht and x.is_cuda else 0.0


def check_quantize(x, variant, order="torchao", **kw):
    columnwise, rht, block_2d = VARIANTS[variant]
    q = nvfp4_triton(x, columnwise=columnwise, rht=rht, block_2d=block_2d, scale_order=order, **kw)
    r = formats.quantize_nvfp4(reference_operand(x, columnwise, rht), block_2d=block_2d, scale_order=order,
                               nonfinite="propagate", **kw)
    assert_same_nvfp4(q, r, rht_tol(x, rht))
    return q, r


def check_fake(x, variant, order="torchao", out_dtype=None, **kw):
    columnwise, rht, block_2d = VARIANTS[variant]
    y = nvfp4_triton(x, columnwise=columnwise, rht=rht, block_2d=block_2d, scale_order=order, fake=True,
                     out_dtype=out_dtype, **kw)
    t = reference_operand(x, columnwise, rht)
    r = formats.quantize_nvfp4(t, block_2d=block_2d, scale_order=order, nonfinite="propagate", **kw)
    ref = r.dequantize(t.dtype).to(out_dtype or x.dtype)
    assert_bitwise_equal(y, ref, rht_tol(x, rht))
    return y


def check_mxfp4(x, rule, columnwise=False, rht=False):
    y = mxfp4_fake_triton(x, scale_rule=rule, columnwise=columnwise, rht=rht)
    t = reference_operand(x, columnwise, rht)
    ref = formats.quantize_mxfp4(t, scale_rule=rule, nonfinite="propagate").dequantize(t.dtype).to(x.dtype)
    assert_bitwise_equal(y, ref, rht_tol(x, rht))
