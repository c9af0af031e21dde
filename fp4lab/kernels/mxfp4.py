"""Fused MXFP4 fake-quantize kernel (E2M1 elements, E8M0 power-of-two scale per 32, no tensor scale).

One pass: no global amax is needed. Same logical-view / RHT / SR machinery as the NVFP4 kernel;
the scale rules are fp4lab.formats.quantize_mxfp4's, computed from the fp32 bits (spec §2.7).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp4lab import formats
from fp4lab.formats import seeds
from fp4lab.kernels._grid import cdiv
from fp4lab.kernels._launch import launch
from fp4lab.kernels.numerics import (
    e2m1_round, e2m1_stochastic_round, fdiv, load_tile, round_to_bf16, sr_random_bits, tile_coords,
)
from fp4lab.kernels.nvfp4 import (
    ROUNDINGS, _logical_view, _reference_generator, _reference_operand, _stochastic_seed, _tl_dtype,
)
from fp4lab.formats._checks import check_input

RULES = {"floor": 0, "rceil": 1}


@triton.jit
def _pow2(e):
    """2^e as fp32 for integer e in [-127, 127] (2^-127 is the subnormal 0x00400000)."""
    return tl.where(e >= -126, ((e + 127) << 23).to(tl.float32, bitcast=True),
                    tl.full(e.shape, 0x00400000, tl.int32).to(tl.float32, bitcast=True))


@triton.jit
def mx_block_scale(amax_bits, RULE: tl.constexpr):
    """(E8M0 byte, element multiplier or divisor, decode value) for block maxima given as fp32 bits."""
    amax_b = amax_bits.to(tl.float32, bitcast=True)
    is_nan = amax_b != amax_b
    if RULE == 0:  # floor: X = 2^(floor(log2 amax_b) - 2); y = x / max(X, 2^-126)
        e = ((amax_bits >> 23) & 0xFF) - 127 - 2
        e = tl.minimum(tl.maximum(e, -127), 128)
        biased = tl.where(is_nan, 255, e + 127)
        div = tl.where(biased == 0, 2.0**-126, (biased << 23).to(tl.float32, bitcast=True))
        mult = div
    else:  # rceil: X = 2^ceil(log2(amax_b / 6)); y = x * 2^-e
        d = fdiv(amax_b, 6.0)
        dbits = d.to(tl.int32, bitcast=True)
        e = ((dbits >> 23) & 0xFF) - 127 + ((dbits & 0x7FFFFF) != 0).to(tl.int32)
        e = tl.where(d < 2.0**-126, -127, e)
        e = tl.minimum(tl.maximum(e, -127), 127)
        biased = tl.where(is_nan, 255, tl.where(d == float("inf"), 254, e + 127))
        mult = tl.where(biased == 0, 1.0, _pow2(127 - biased))
        mult = tl.where(biased == 254, _pow2(tl.full(biased.shape, -127, tl.int32)), mult)
        mult = tl.where(is_nan, float("nan"), mult)
    decode = tl.where(biased == 255, float("nan"), _pow2(tl.minimum(biased, 254) - 127))
    return biased, mult, decode


@triton.jit
def _mxfp4_fake_kernel(
    x_ptr, stride_r, stride_c, R, C, C_out, Cp, out_ptr, seed, seed_ptr, n_tiles_r, n_tiles_c,
    RULE: tl.constexpr, STOCHASTIC: tl.constexpr, SEED_FROM_PTR: tl.constexpr, RHT: tl.constexpr,
    INNER_DTYPE: tl.constexpr, TILES_C_MAJOR: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
):
    pid = tl.program_id(0)
    tr, tc = tile_coords(pid, n_tiles_r, n_tiles_c, TILES_C_MAJOR)
    r0 = tr * BR
    c0 = tc * BC
    t = load_tile(x_ptr, stride_r, stride_c, R, C, r0, c0, BR, BC, RHT, 0)
    # integer max of the bits: NaN propagates into its block's scale (0xFF) as in the reference
    bits = tl.abs(t).to(tl.int32, bitcast=True)
    amax_bits = tl.max(tl.reshape(bits, [BR, BC // 32, 32]), axis=2)
    biased, mult, decode = mx_block_scale(amax_bits, RULE)
    t3 = tl.reshape(t, [BR, BC // 32, 32])
    if RULE == 0:
        y3 = fdiv(t3, mult[:, :, None])
    else:
        y3 = t3 * mult[:, :, None]
    rows = r0 + tl.arange(0, BR)
    cols = c0 + tl.arange(0, BC)
    rbits = sr_random_bits(seed, seed_ptr, r0, c0, Cp, BR, BC, STOCHASTIC, SEED_FROM_PTR)
    if STOCHASTIC:
        e = e2m1_stochastic_round(tl.reshape(y3, [BR, BC]), rbits)
    else:
        e = e2m1_round(tl.reshape(y3, [BR, BC]))
    v = tl.reshape(tl.reshape(e, [BR, BC // 32, 32]) * decode[:, :, None], [BR, BC])
    if INNER_DTYPE == tl.bfloat16:
        v = round_to_bf16(v)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * C_out + cols[None, :], v.to(INNER_DTYPE),
             mask=(rows[:, None] < R) & (cols[None, :] < C_out))


def mxfp4_fake_triton(x, *, scale_rule="rceil", rounding="nearest", generator=None, columnwise=False,
                      rht=False, tile=None):
    """Run the MXFP4 fake-quantize kernel on any device (CPU tensors need TRITON_INTERPRET=1)."""
    check_input(x, "fake_quantize_mxfp4", "propagate")
    if scale_rule not in RULES:
        raise ValueError(f"fake_quantize_mxfp4: scale_rule must be one of {tuple(RULES)}, got {scale_rule!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"fake_quantize_mxfp4: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if x.ndim == 0 or (columnwise and x.ndim < 2):
        raise ValueError(f"fake_quantize_mxfp4: bad shape {tuple(x.shape)} (columnwise needs 2 dims)")
    x2, stride_r, stride_c, R, C = _logical_view(x, columnwise)
    BR, BC = tile or ((64, 64) if columnwise else (32, 128))
    Cp = cdiv(C, 32) * 32
    C_out = cdiv(C, 16) * 16 if rht else C
    inner = torch.bfloat16 if rht else x.dtype
    out = torch.empty((R, C_out), dtype=inner, device=x.device)
    n_tiles_r, n_tiles_c = cdiv(R, BR), cdiv(Cp, BC)
    seed, seed_state = _stochastic_seed(rounding, generator, x.device)
    if n_tiles_r * n_tiles_c:
        launch(
            _mxfp4_fake_kernel, (n_tiles_r * n_tiles_c,),
            x2, stride_r, stride_c, R, C, C_out, Cp, out, seed, x2 if seed_state is None else seed_state,
            n_tiles_r, n_tiles_c, RULE=RULES[scale_rule], STOCHASTIC=rounding == "stochastic",
            SEED_FROM_PTR=seed_state is not None, RHT=rht,
            INNER_DTYPE=_tl_dtype(inner),
            TILES_C_MAJOR=columnwise, BR=BR, BC=BC, num_warps=4, enable_fp_fusion=False,
        )
    if seed_state is not None:
        seeds.advance(seed_state)
    out = out.to(x.dtype)
    return out.reshape(*x.shape[:-1], C_out) if not columnwise and x.ndim != 2 else out


def fake_quantize_mxfp4(x, *, scale_rule="rceil", rounding="nearest", generator=None, columnwise=False,
                        rht=False):
    """MXFP4 quantize -> dequantize of x (or x.T with `columnwise`, optionally after the 16x16 RHT) in
    x.dtype; bit-exact with fp4lab.formats for round-to-nearest. Non-finite blocks give NaN blocks."""
    if not x.is_cuda:
        t = _reference_operand(x, columnwise, rht)
        q = formats.quantize_mxfp4(t, scale_rule=scale_rule, rounding=rounding,
                                   generator=_reference_generator(generator), nonfinite="propagate")
        return q.dequantize(t.dtype).to(x.dtype)
    return mxfp4_fake_triton(x, scale_rule=scale_rule, rounding=rounding, generator=generator,
                             columnwise=columnwise, rht=rht)
