"""Per-tensor FP8 fake-quantize: one elementwise pass after the amax pass, instead of a dozen eager ops.

y = fp8(clamp(x / s, ±fmax)) * s with s = amax / fmax (1 when amax is 0), every step rounded as the
eager composition rounds it (fp32 division, RNE to the FP8 grid, fp32 product, RNE to BF16), so the
result equals `fp4lab.formats.fake_quantize(x, "fp8_<fmt>")` bit for bit. The FP8 rounding is bit
arithmetic: the Triton interpreter's float8 casts are wrong (research/triton-interpreter.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp4lab import formats
from fp4lab.kernels._grid import cdiv, next_pow2
from fp4lab.kernels._launch import launch
from fp4lab.kernels.amax import amax_partials
from fp4lab.kernels.numerics import fdiv, reduce_amax_bits, round_to_bf16

# fmt: (largest finite value, mantissa bits, exponent of the smallest normal)
FP8_FORMATS = {"e4m3": (448.0, 3, -6), "e5m2": (57344.0, 2, -14)}
BLOCK = 4096


@triton.jit
def fp8_round(y, MBITS: tl.constexpr, EMIN: tl.constexpr, MAGIC: tl.constexpr):
    """y (already within ±fmax) rounded to the FP8 grid (RNE), as fp32; NaN stays NaN, signs kept.

    Normals keep MBITS mantissa bits (a carry moves to the next binade); below 2^EMIN the grid is
    k * 2^(EMIN - MBITS), and adding MAGIC = 2^(EMIN - MBITS + 23), whose ulp that is, rounds to it."""
    a = tl.abs(y)
    bits = a.to(tl.int32, bitcast=True)
    drop: tl.constexpr = 23 - MBITS
    r = (bits + ((1 << (drop - 1)) - 1) + ((bits >> drop) & 1)) & -(1 << drop)
    sub = (a + MAGIC) - MAGIC
    v = tl.where(a < 2.0 ** EMIN, sub, r.to(tl.float32, bitcast=True))
    v = tl.where(a == a, v, a)
    return (v.to(tl.int32, bitcast=True) | (y.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def _fp8_tensor_fake_kernel(x_ptr, parts_ptr, n_parts, out_ptr, n,
                            FMAX: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr, MAGIC: tl.constexpr,
                            OUT_BF16: tl.constexpr, N_PARTS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    amax = reduce_amax_bits(parts_ptr, n_parts, N_PARTS)
    s = tl.where(amax == 0, 1.0, fdiv(amax, FMAX))
    y = fdiv(x, s)
    y = tl.where(y > FMAX, FMAX, tl.where(y < -FMAX, -FMAX, y))  # comparisons keep NaN
    v = fp8_round(y, MBITS, EMIN, MAGIC) * s
    if OUT_BF16:
        v = round_to_bf16(v)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def _check_fmt(fmt: str) -> None:
    if fmt not in FP8_FORMATS:
        raise ValueError(f"fake_quantize_fp8_tensor: fmt must be one of {tuple(FP8_FORMATS)}, got {fmt!r}")


def fp8_tensor_fake_triton(x: torch.Tensor, fmt: str = "e4m3", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The Triton path of `fake_quantize_fp8_tensor` on any device (CPU tensors need TRITON_INTERPRET=1)."""
    _check_fmt(fmt)
    out_dtype = out_dtype or x.dtype
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"fake_quantize_fp8_tensor: out_dtype must be bf16, fp16 or fp32, got {out_dtype}")
    xc = x.contiguous()
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    n = xc.numel()
    if n == 0:
        return out
    parts = amax_partials(xc)
    fmax, mbits, emin = FP8_FORMATS[fmt]
    launch(
        _fp8_tensor_fake_kernel, (cdiv(n, BLOCK),),
        xc, parts, parts.numel(), out, n, FMAX=fmax, MBITS=mbits, EMIN=emin, MAGIC=2.0 ** (emin - mbits + 23),
        OUT_BF16=out_dtype == torch.bfloat16, N_PARTS=max(next_pow2(parts.numel()), 2), BLOCK=BLOCK,
        num_warps=8, enable_fp_fusion=False)
    return out


def fake_quantize_fp8_tensor(x: torch.Tensor, fmt: str = "e4m3", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-tensor-scaled FP8 quantize -> dequantize of x (any shape) in out_dtype (default x.dtype):
    the Triton kernels on CUDA, fp4lab.formats elsewhere. Non-finite values propagate."""
    if x.is_cuda:
        return fp8_tensor_fake_triton(x, fmt, out_dtype)
    _check_fmt(fmt)
    return formats.quantize_fp8(x, fmt=fmt, nonfinite="propagate").dequantize(out_dtype or x.dtype)
