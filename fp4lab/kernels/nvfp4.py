"""Fused NVFP4 quantize / fake-quantize / dequantize kernels (rowwise, columnwise, 2D, RHT, SR).

One tile kernel serves every variant. It reads a logical view t[r, c] = x[r*stride_r + c*stride_c]
(rowwise: t = x; columnwise: t = x.T, read in place), optionally applies the 16x16 RHT along c,
takes the global amax from the partial maxima of the amax pass (device memory, no host sync), and
quantizes blocks of 16 along c exactly as fp4lab.formats.quantize_nvfp4 in the chosen op order.
Quantize writes packed codes + E4M3 scale bytes; fake-quantize dequantizes in registers instead.
Tiles are visited in the reverse of the amax pass's order so the most recently read part of x is
still in L2 when the second pass starts; a third pass over the same x (the second quantization
from shared amax partials) walks forward, starting where the second one ended.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp4lab import formats
from fp4lab.formats import seeds
from fp4lab.formats._checks import check_input
from fp4lab.kernels._grid import cdiv, interpreting, next_pow2
from fp4lab.kernels._launch import launch
from fp4lab.kernels.amax import amax_pair_partials, amax_partials, amax_partials_rht, evict_first
from fp4lab.kernels.numerics import (
    FP32_MAX, e2m1_encode, e2m1_round, e2m1_stochastic_round, e2m1_value, e4m3_encode, e4m3_value, fdiv,
    fdiv_fast, recip_estimate,
    load_tile, reduce_amax_bits, round_to_bf16, sr_random_bits, tile_coords, half_block_coords,
)

ORDERS = {"torchao": 0, "te": 1, "compressed-tensors": 2}
ROUNDINGS = ("nearest", "stochastic")
# rows x columns of the logical view per program, and the load vector of the columnwise view (x.T is
# contiguous along its rows). The fake-quantize columnwise tile is one 16-block wide and 4 x 32 x
# num_warps features tall: each thread then holds 4 features x 16 tokens, loads 8 contiguous bytes per
# token (a warp reads 256 contiguous bytes) and finds every block max in its own registers. The 64x64
# tile it replaces spread each 16-block over 4 threads x 4 warps (shuffles plus shared-memory
# reductions) and ran at 21-24% of copy bandwidth on an H100 (benchmarks/quantize.md). The packed
# output wants two blocks per thread instead (2 features x 32 tokens): each thread then writes 16
# contiguous code bytes per feature rather than 8, a quarter of a 32-byte sector; 91 -> 64 us for
# 8192x4096 with the amax given, the same for the fake output (H100, benchmarks/quantize.md).
# Rowwise tiles are loaded as whole 16-blocks per thread (load_tile WHOLE_BLOCKS), except 2D ones.
TILE_ROWWISE = (32, 128)
COLUMNWISE_FAKE = ((512, 16), 4)  # (tile, vec_r)
COLUMNWISE_PACKED = ((256, 32), 2)


@triton.jit
def block_scales(amax, amax_b, ORDER: tl.constexpr, FAST: tl.constexpr):
    """(E4M3 byte, element factor, decode factor) of blocks with max |x| amax_b in fp4lab.formats' order.

    The element factor multiplies x (torchao, te) or divides it (compressed-tensors); a zero scale
    encodes with FLT_MAX as TE does. A non-finite tensor amax makes every scale byte NaN (0x7F).
    FAST (torchao, te; only for a tensor amax in fast_division_range): per-block divisions by fdiv_fast.
    Every operand and quotient that can change a scale byte is then a normal float far from overflow,
    where the fast path is exact; a block too small for that (amax_b < 2^-100) has scale byte 0 either way.
    """
    if ORDER == 0:  # torchao: g = amax/2688; s = e4m3((amax_b/6)/g); y = x * ((1/g)/s); decode g*s
        g = fdiv(amax, 2688.0)
        g_enc = tl.where(amax == 0, 1.0, g)
        inv_g = fdiv(1.0, g_enc)
        if FAST:
            # 1/6 rounded is close enough for the one-fma correction: exact for every amax_b >= 2^-123
            # (every non-negative float checked once in numpy; tests/kernels/test_numerics_exhaustive.py
            # checks whole binades)
            d = fdiv_fast(amax_b, 6.0, 0.1666666716337204)
            # a given global_amax below the data's could push d / g past overflow, where the fast path
            # gives NaN: above 512 g the scale saturates to 448 anyway (a NaN d stays NaN, as it should)
            lim = g_enc * 512.0
            d = tl.where(d > lim, lim, d)
            code = e4m3_encode(fdiv_fast(d, g_enc, recip_estimate(g_enc)))
            s = e4m3_value(code)
            factor = tl.where(s == 0, FP32_MAX, fdiv_fast(inv_g, s, recip_estimate(s)))
        else:
            code = e4m3_encode(fdiv(fdiv(amax_b, 6.0), g_enc))
            s = e4m3_value(code)
            factor = tl.where(s == 0, FP32_MAX, fdiv(inv_g, s))
    elif ORDER == 1:  # te: S = 2688/amax; s = e4m3(amax_b*(S*(1/6))); y = x * 1/(s*(1/S))
        s_enc = fdiv(2688.0, amax)
        s_enc = tl.where(s_enc > FP32_MAX, FP32_MAX, s_enc)
        s_enc = tl.where((amax == 0) | (s_enc == 0), 1.0, s_enc)
        s_dec = fdiv(1.0, s_enc)
        code = e4m3_encode(amax_b * (s_enc * 0.16666666666666666))
        s = e4m3_value(code)
        sd = s * s_dec
        if FAST:
            factor = tl.where(s == 0, FP32_MAX, tl.minimum(fdiv_fast(1.0, sd, recip_estimate(sd)), FP32_MAX))
        else:
            factor = tl.where(s == 0, FP32_MAX, tl.minimum(fdiv(1.0, sd), FP32_MAX))
    else:  # compressed-tensors: G = (1/max(amax, tiny))*2688 (non-finite -> 1); s = e4m3(G*(amax_b/6)); y = x / (s/G)
        a = tl.where(amax < 1.1754943508222875e-38, 1.1754943508222875e-38, amax)
        gs = fdiv(1.0, a) * 2688.0
        gs = tl.where(tl.abs(gs) < float("inf"), gs, 1.0)
        code = e4m3_encode(gs * fdiv(amax_b, 6.0))
        s = e4m3_value(code)
        factor = fdiv(s, gs)
    code = tl.where(tl.abs(amax) < float("inf"), code, 0x7F)
    s = e4m3_value(code)
    if ORDER == 0:
        decode = fdiv(amax, 2688.0) * s
    elif ORDER == 1:
        decode = (s * amax) * 0.00037202380952380954
    else:
        decode = fdiv(s, gs)
    return code, factor, decode


@triton.jit
def fast_division_range(amax):
    """The tensor amax is in [2^-60, 2^60], where block_scales may divide with fdiv_fast."""
    return (amax >= 8.673617379884035e-19) & (amax <= 1.152921504606847e18)


@triton.jit
def store_blocks(t, amax, seed, seed_ptr, r0, c0, R, R_out, C_out, Cp, codes_ptr, scales_ptr, out_ptr,
                 ORDER: tl.constexpr, BLOCK_2D: tl.constexpr, STOCHASTIC: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
                 QUANT: tl.constexpr, FAKE: tl.constexpr, INNER_DTYPE: tl.constexpr, BR: tl.constexpr,
                 BC: tl.constexpr, WHOLE_BLOCKS: tl.constexpr):
    """Quantize the tile t [BR, BC] at (r0, c0) of the logical view in blocks of 16 along c (scaled by the
    max of each 1x16 block, or of each 16x16 tile with BLOCK_2D; tensor amax) and store packed codes +
    scale bytes (QUANT) and/or the dequantized values (FAKE) of the rows below R_out / R.

    One uniform branch on the tensor amax picks the fast-division build of the whole tile; the other
    build divides exactly, for tensors outside that range. (With the branch around the scale arithmetic
    alone, the dual kernel with a fake columnwise copy measured 10% slower on an H100; around the whole
    tile it measured unchanged: results/quantize-fastdiv-ab-h100-2026-11-23.json.)"""
    if ORDER != 2 and fast_division_range(amax):
        store_blocks_with(t, amax, seed, seed_ptr, r0, c0, R, R_out, C_out, Cp, codes_ptr, scales_ptr, out_ptr,
                          ORDER, BLOCK_2D, STOCHASTIC, SEED_FROM_PTR, QUANT, FAKE, INNER_DTYPE, BR, BC,
                          WHOLE_BLOCKS, True)
    else:
        store_blocks_with(t, amax, seed, seed_ptr, r0, c0, R, R_out, C_out, Cp, codes_ptr, scales_ptr, out_ptr,
                          ORDER, BLOCK_2D, STOCHASTIC, SEED_FROM_PTR, QUANT, FAKE, INNER_DTYPE, BR, BC,
                          WHOLE_BLOCKS, False)


@triton.jit
def store_blocks_with(t, amax, seed, seed_ptr, r0, c0, R, R_out, C_out, Cp, codes_ptr, scales_ptr, out_ptr,
                      ORDER: tl.constexpr, BLOCK_2D: tl.constexpr, STOCHASTIC: tl.constexpr,
                      SEED_FROM_PTR: tl.constexpr, QUANT: tl.constexpr, FAKE: tl.constexpr,
                      INNER_DTYPE: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, WHOLE_BLOCKS: tl.constexpr,
                      FAST: tl.constexpr):
    """store_blocks with FAST (block_scales) fixed at compile time."""
    a = tl.abs(t)
    if BLOCK_2D:
        a4 = tl.reshape(a, [BR // 16, 16, BC // 16, 16])
        tile_max = tl.max(tl.max(a4, axis=3), axis=1)  # [BR/16, BC/16]
        amax_b = tl.reshape(tl.broadcast_to(tile_max[:, None, :], [BR // 16, 16, BC // 16]), [BR, BC // 16])
    else:
        amax_b = tl.max(tl.reshape(a, [BR, BC // 16, 16]), axis=2)
    code_s, factor, decode = block_scales(amax, amax_b, ORDER, FAST)

    t3 = tl.reshape(t, [BR, BC // 16, 16])
    if ORDER == 2:
        y3 = tl.where((factor == 0)[:, :, None], t3 * FP32_MAX, fdiv(t3, factor[:, :, None]))
    else:
        y3 = t3 * factor[:, :, None]
    y = tl.reshape(y3, [BR, BC])

    rows = r0 + tl.arange(0, BR)
    cols = c0 + tl.arange(0, BC)
    rbits = sr_random_bits(seed, seed_ptr, r0, c0, Cp, BR, BC, STOCHASTIC, SEED_FROM_PTR)
    if QUANT:
        q = e2m1_encode(y, rbits, STOCHASTIC)
        lo, hi = tl.split(tl.reshape(q, [BR, BC // 2, 2]))
        bcols = c0 // 2 + tl.arange(0, BC // 2)
        tl.store(codes_ptr + rows[:, None].to(tl.int64) * (Cp // 2) + bcols[None, :],
                 (lo | (hi << 4)).to(tl.uint8),
                 mask=(rows[:, None] < R_out) & (bcols[None, :] < Cp // 2))
        scols = c0 // 16 + tl.arange(0, BC // 16)
        tl.store(scales_ptr + rows[:, None].to(tl.int64) * (Cp // 16) + scols[None, :],
                 code_s.to(tl.uint8),
                 mask=(rows[:, None] < R_out) & (scols[None, :] < Cp // 16))
    if FAKE:
        if STOCHASTIC:  # the values of e2m1_encode's codes, without forming them
            e = e2m1_stochastic_round(y, rbits)
        else:
            e = e2m1_round(y)
        v = tl.reshape(tl.reshape(e, [BR, BC // 16, 16]) * decode[:, :, None], [BR, BC])
        if INNER_DTYPE == tl.bfloat16:
            v = round_to_bf16(v)
        if WHOLE_BLOCKS:  # stored as the load's two halves: no shared-memory round trip
            v_lo, v_hi = tl.split(tl.permute(tl.reshape(v, [BR, BC // 16, 2, 8]), (1, 0, 3, 2)))
            r3, c3 = half_block_coords(r0, c0, BR, BC)
            p = out_ptr + r3.to(tl.int64) * C_out + c3
            tl.store(p, v_lo.to(INNER_DTYPE), mask=(r3 < R) & (c3 < C_out))
            tl.store(p + 8, v_hi.to(INNER_DTYPE), mask=(r3 < R) & (c3 + 8 < C_out))
        else:
            tl.store(out_ptr + rows[:, None].to(tl.int64) * C_out + cols[None, :], v.to(INNER_DTYPE),
                     mask=(rows[:, None] < R) & (cols[None, :] < C_out))


@triton.jit
def _nvfp4_kernel(
    x_ptr, stride_r, stride_c, R, C, R_out, C_out, Cp,
    amax_src_ptr, n_amax_src, amax_out_ptr,
    codes_ptr, scales_ptr, out_ptr, seed, seed_ptr, n_tiles_r, n_tiles_c, forward_walk,
    ORDER: tl.constexpr, BLOCK_2D: tl.constexpr, STOCHASTIC: tl.constexpr, SEED_FROM_PTR: tl.constexpr, RHT: tl.constexpr,
    QUANT: tl.constexpr, FAKE: tl.constexpr, WRITE_AMAX: tl.constexpr,
    INNER_DTYPE: tl.constexpr, TILES_C_MAJOR: tl.constexpr, N_SRC: tl.constexpr,
    BR: tl.constexpr, BC: tl.constexpr, VEC_R: tl.constexpr, WHOLE_BLOCKS: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
):
    pid = tl.program_id(0)
    last = n_tiles_r * n_tiles_c - 1
    tr, tc = tile_coords(tl.where(forward_walk != 0, pid, last - pid), n_tiles_r, n_tiles_c, TILES_C_MAJOR)
    r0 = tr * BR
    c0 = tc * BC

    # the tile's loads are issued before the amax partials are reduced, so both are in flight together
    t = load_tile(x_ptr, stride_r, stride_c, R, C, r0, c0, BR, BC, RHT, VEC_R, WHOLE_BLOCKS, EVICT_FIRST)
    amax = reduce_amax_bits(amax_src_ptr, n_amax_src, N_SRC)
    if WRITE_AMAX:
        if pid == 0:
            tl.store(amax_out_ptr, amax)
    store_blocks(t, amax, seed, seed_ptr, r0, c0, R, R_out, C_out, Cp, codes_ptr, scales_ptr, out_ptr,
                 ORDER, BLOCK_2D, STOCHASTIC, SEED_FROM_PTR, QUANT, FAKE, INNER_DTYPE, BR, BC, WHOLE_BLOCKS)


@triton.jit
def _nvfp4_dequant_kernel(codes_ptr, scales_ptr, amax_ptr, out_ptr, R, C, Cp,
                          ORDER: tl.constexpr, OUT_BF16: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    rmask = rows[:, None] < R
    bcols = pid_c * (BC // 2) + tl.arange(0, BC // 2)
    b = tl.load(codes_ptr + rows[:, None].to(tl.int64) * (Cp // 2) + bcols[None, :],
                mask=rmask & (bcols[None, :] < Cp // 2), other=0).to(tl.int32)
    q = tl.reshape(tl.join(b & 15, b >> 4), [BR, BC])
    scols = pid_c * (BC // 16) + tl.arange(0, BC // 16)
    code_s = tl.load(scales_ptr + rows[:, None].to(tl.int64) * (Cp // 16) + scols[None, :],
                     mask=rmask & (scols[None, :] < Cp // 16), other=0).to(tl.int32)
    s = e4m3_value(code_s)
    amax = tl.load(amax_ptr)
    if ORDER == 0:
        f = fdiv(amax, 2688.0) * s
    elif ORDER == 1:
        f = (s * amax) * 0.00037202380952380954
    else:
        a = tl.where(amax < 1.1754943508222875e-38, 1.1754943508222875e-38, amax)
        gs = fdiv(1.0, a) * 2688.0
        gs = tl.where(tl.abs(gs) < float("inf"), gs, 1.0)
        f = fdiv(s, gs)
    v = tl.reshape(tl.reshape(e2m1_value(q), [BR, BC // 16, 16]) * f[:, :, None], [BR, BC])
    cols = pid_c * BC + tl.arange(0, BC)
    if OUT_BF16:
        v = round_to_bf16(v)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], v, mask=rmask & (cols[None, :] < C))


def _logical_view(x: torch.Tensor, columnwise: bool):
    """x as 2-D [M, K] (leading dims flattened) and the (stride_r, stride_c, R, C) of t = x or x.T."""
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M, K = x2.shape
    if columnwise:
        return x2, 1, K, K, M
    return x2, K, 1, M, K


def _stochastic_seed(rounding: str, generator, device):
    """(seed, seed state or None) for the kernel. `generator` is a CPU torch.Generator (a seed drawn on
    the host now) or a seed state (fp4lab.formats.seeds: read by the kernel, advanced after it)."""
    if rounding != "stochastic":
        return 0, None
    if seeds.is_seed_state(generator):
        seeds.check_seed_state(generator, device, "stochastic rounding")
        return 0, generator
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("stochastic rounding takes its seed from a CPU torch.Generator or a seed state; a "
                         f"{generator.device.type} generator would force a host sync")
    seeds.check_not_capturing("stochastic rounding kernel")
    # drawn on the host from a CPU generator: reproducible and never waits for the GPU
    return int(torch.randint(2**31 - 1, (1,), generator=generator)), None


def _reference_generator(generator):
    """What the fp4lab.formats reference takes for `generator` (a seed state becomes a Generator)."""
    return seeds.take_generator(generator) if seeds.is_seed_state(generator) else generator


def _check_args(x, fn, block_2d, rounding, scale_order, nonfinite):
    check_input(x, fn, nonfinite)  # type and mode checks; NaN/Inf scan (a host sync) only for "raise"
    if scale_order not in ORDERS:
        raise ValueError(f"{fn}: scale_order must be one of {tuple(ORDERS)}, got {scale_order!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"{fn}: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if x.ndim == 0:
        raise ValueError(f"{fn}: need at least 1 dim, got a 0-dim tensor")
    if block_2d and x.ndim != 2:
        raise ValueError(f"{fn}: block_2d needs a 2-D tensor [M, K], got shape {tuple(x.shape)}")


def nvfp4_triton(x, *, block_2d=False, global_amax=None, rounding="nearest", scale_order="torchao",
                 generator=None, columnwise=False, rht=False, fake=False, out_dtype=None,
                 nonfinite="propagate", tile=None, num_warps=4, vec_r=None, amax_parts=None,
                 forward_walk=False):
    """Run the tile kernel on any device (CPU tensors need TRITON_INTERPRET=1).

    tile, num_warps and vec_r (contiguous features per load in the columnwise view; 0 lets the
    compiler choose) tune speed only: the numerics are the same for every choice. amax_parts: the
    int32 partial maxima of this operand from `amax_parts_nvfp4` (its amax pass already done).
    forward_walk visits tiles in the amax pass's order instead of its reverse (speed only: set it on
    the second quantization of one tensor, whose start the first one left in L2).

    Returns an NVFP4Tensor (fake=False) or the fake-quantized tensor (fake=True).
    """
    fn = "fake_quantize_nvfp4" if fake else "quantize_nvfp4"
    _check_args(x, fn, block_2d, rounding, scale_order, nonfinite)
    if columnwise and x.ndim < 2:
        raise ValueError(f"{fn}: columnwise needs at least 2 dims, got shape {tuple(x.shape)}")
    x2, stride_r, stride_c, R, C = _logical_view(x, columnwise)
    dev = x.device
    if tile is None:
        tile, default_vec = (COLUMNWISE_FAKE if fake else COLUMNWISE_PACKED) if columnwise else (TILE_ROWWISE, 0)
        if vec_r is None:
            vec_r = default_vec
    BR, BC = tile
    vec_r = vec_r or 0
    Cp = cdiv(C, 16) * 16
    C_out = Cp if rht else C  # random_hadamard_16 returns the padded length
    R_out = cdiv(R, 16) * 16 if block_2d else R

    write_amax = global_amax is None and not fake  # fake-quantize returns no amax
    if global_amax is None:
        if amax_parts is not None:
            parts = amax_parts
        elif rht:
            parts = amax_partials_rht(x2, stride_r, stride_c, R, C, BR, BC, vec_r, columnwise)
        else:
            parts = amax_partials(x2)
        amax_out = torch.empty((), dtype=torch.float32, device=dev) if write_amax else parts
    else:
        amax_out = torch.as_tensor(global_amax, dtype=torch.float32, device=dev).reshape(())
        parts = amax_out.reshape(1).view(torch.int32)

    inner = torch.bfloat16 if rht else x.dtype
    out_dtype = out_dtype or x.dtype
    if fake:
        out = torch.empty((R, C_out), dtype=inner, device=dev)
        codes = scales = out  # unused pointers
    else:
        codes = torch.empty((R_out, Cp // 2), dtype=torch.uint8, device=dev)
        scales = torch.empty((R_out, Cp // 16), dtype=torch.uint8, device=dev)
        out = codes
    n_tiles_r, n_tiles_c = cdiv(R_out, BR), cdiv(Cp, BC)
    seed, seed_state = _stochastic_seed(rounding, generator, dev)
    if n_tiles_r * n_tiles_c == 0:
        if write_amax:
            amax_out.zero_()
    else:
        launch(
            _nvfp4_kernel, (n_tiles_r * n_tiles_c,),
            x2, stride_r, stride_c, R, C, R_out, C_out, Cp,
            parts, parts.numel(), amax_out, codes, scales, out,
            seed, x2 if seed_state is None else seed_state, n_tiles_r, n_tiles_c, int(forward_walk),
            ORDER=ORDERS[scale_order], BLOCK_2D=block_2d, STOCHASTIC=rounding == "stochastic",
            SEED_FROM_PTR=seed_state is not None, RHT=rht,
            QUANT=not fake, FAKE=fake, WRITE_AMAX=write_amax,
            INNER_DTYPE=_tl_dtype(inner), TILES_C_MAJOR=columnwise,
            N_SRC=max(next_pow2(parts.numel()), 2), BR=BR, BC=BC, VEC_R=vec_r,
            WHOLE_BLOCKS=not columnwise and not block_2d,  # 2D measured 8% slower with it (quantize.md)
            # packed outputs only: the fake-quantize passes measured 3 us slower with it at 8192x8192
            EVICT_FIRST=not fake and evict_first(R * C * x.element_size(), dev, passes=2),
            num_warps=num_warps,
            enable_fp_fusion=False,  # no fma contraction: every product is rounded like the reference
        )
    if seed_state is not None:
        seeds.advance(seed_state)  # after the launch in stream order: the kernel read the old seed
    if fake:
        out = out if out_dtype == inner else out.to(out_dtype)
        return out.reshape(*x.shape[:-1], C_out) if not columnwise and x.ndim != 2 else out
    if columnwise or x.ndim == 2:
        shape = torch.Size((R, C_out))
        lead = (R_out,)
    else:
        shape = torch.Size((*x.shape[:-1], C_out))
        lead = tuple(x.shape[:-1])
    return formats.NVFP4Tensor(
        codes.reshape(*lead, Cp // 2), scales.view(torch.float8_e4m3fn).reshape(*lead, Cp // 16),
        amax_out, shape, scale_order, block_2d,
    )


_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def _tl_dtype(dtype: torch.dtype):
    return _TL_DTYPES[dtype]


def dequantize_nvfp4_triton(t: formats.NVFP4Tensor, dtype: torch.dtype = torch.bfloat16,
                            tile=(32, 128)) -> torch.Tensor:
    """Run the dequantize kernel on any device (CPU tensors need TRITON_INTERPRET=1)."""
    if t.scale_order not in ORDERS:
        raise ValueError(f"dequantize_nvfp4: unknown scale_order {t.scale_order!r}")
    C = t.shape[-1]
    R = 1
    for n in t.shape[:-1]:
        R *= n
    Cp = cdiv(C, 16) * 16
    codes = t.codes.reshape(-1, Cp // 2)
    scales = t.scales.reshape(-1, Cp // 16).view(torch.uint8)
    if codes.shape[0] < R or scales.shape[0] != codes.shape[0]:
        raise ValueError(f"dequantize_nvfp4: codes {tuple(t.codes.shape)} / scales {tuple(t.scales.shape)} "
                         f"do not match the logical shape {tuple(t.shape)}")
    out = torch.empty((R, C), dtype=torch.float32 if dtype not in (torch.bfloat16, torch.float16) else dtype,
                      device=codes.device)
    BR, BC = tile
    if R and C:
        grid = (cdiv(R, BR), cdiv(Cp, BC))
        launch(_nvfp4_dequant_kernel, grid, codes.contiguous(), scales.contiguous(), t.global_amax.float().reshape(()),
               out, R, C, Cp, ORDER=ORDERS[t.scale_order], OUT_BF16=out.dtype == torch.bfloat16, BR=BR, BC=BC,
               num_warps=4, enable_fp_fusion=False)
    return out.to(dtype).reshape(t.shape)


# ---- public wrappers: Triton on CUDA tensors, the fp4lab.formats reference elsewhere ----

def _reference_operand(x: torch.Tensor, columnwise: bool, rht: bool) -> torch.Tensor:
    t = x.reshape(-1, x.shape[-1]).T if columnwise else x
    return formats.random_hadamard_16(t, nonfinite="propagate") if rht else t


def amax_parts_nvfp4(x: torch.Tensor, *, rht: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The global-amax passes of x [M, K]'s rowwise and columnwise (RHT-ed if `rht`) quantization in
    one read of x: (rowwise, columnwise) partial maxima to pass as `amax_parts` to quantize_nvfp4 /
    fake_quantize_nvfp4 of x (or of x with zero rows appended). A QuantLinear needs both for x (Fprop,
    Wgrad) and for dy (Dgrad, Wgrad); without RHT both are max |x|, computed once."""
    if x.ndim != 2:
        raise ValueError(f"amax_parts_nvfp4: need a 2-D tensor [M, K], got shape {tuple(x.shape)}")
    x2, stride_r, stride_c, R, C = _logical_view(x, columnwise=True)
    if not x.is_cuda and not interpreting():
        a = x.float().abs().amax() if x.numel() else torch.zeros((), device=x.device)
        ah = formats.random_hadamard_16(x.t(), nonfinite="propagate").float().abs().amax() if rht and x.numel() else a
        return a.reshape(1).view(torch.int32), ah.reshape(1).view(torch.int32)
    if not rht:
        p = amax_partials(x2)
        return p, p
    (BR, BC), vec_r = COLUMNWISE_FAKE  # the amax pass reads like the fake-quantize tile (benchmarks/quantize.md)
    return amax_pair_partials(x2, stride_r, stride_c, R, C, BR, BC, vec_r, True)


def _parts_amax(amax_parts):
    """The global amax (fp32 0-dim) that partial maxima stand for (reference path)."""
    return amax_parts.max().reshape(1).view(torch.float32).reshape(())


def quantize_nvfp4(x, *, block_2d=False, global_amax=None, rounding="nearest", scale_order="torchao",
                   generator=None, nonfinite="propagate", columnwise=False, rht=False, amax_parts=None,
                   forward_walk=False):
    """NVFP4-quantize x [M, K] (blocks of 16 along K), or x.T with `columnwise` (blocks along M, no
    transpose in memory), optionally after the 16x16 RHT. Bit-exact with
    ``formats.quantize_nvfp4(random_hadamard_16(x.T) if rht else x.T ...)`` for round-to-nearest.
    amax_parts: this operand's partial maxima from `amax_parts_nvfp4` (skips the amax pass);
    forward_walk: tile order only (see nvfp4_triton)."""
    if not x.is_cuda:
        if amax_parts is not None and global_amax is None:
            global_amax = _parts_amax(amax_parts)
        return formats.quantize_nvfp4(_reference_operand(x, columnwise, rht), block_2d=block_2d,
                                      global_amax=global_amax, rounding=rounding, scale_order=scale_order,
                                      generator=_reference_generator(generator), nonfinite=nonfinite)
    return nvfp4_triton(x, block_2d=block_2d, global_amax=global_amax, rounding=rounding,
                        scale_order=scale_order, generator=generator, columnwise=columnwise, rht=rht,
                        nonfinite=nonfinite, amax_parts=amax_parts, forward_walk=forward_walk)


def fake_quantize_nvfp4(x, *, block_2d=False, global_amax=None, rounding="nearest", scale_order="torchao",
                        generator=None, columnwise=False, rht=False, out_dtype=None, amax_parts=None,
                        forward_walk=False):
    """quantize_nvfp4 then dequantize, fused in registers; returns [M, K] (or the contiguous [K, M] of
    x.T with `columnwise`) in out_dtype (default x.dtype). Non-finite input gives NaN everywhere."""
    if not x.is_cuda:
        if amax_parts is not None and global_amax is None:
            global_amax = _parts_amax(amax_parts)
        t = _reference_operand(x, columnwise, rht)
        q = formats.quantize_nvfp4(t, block_2d=block_2d, global_amax=global_amax, rounding=rounding,
                                   scale_order=scale_order, generator=_reference_generator(generator),
                                   nonfinite="propagate")
        return q.dequantize(t.dtype).to(out_dtype or x.dtype)
    return nvfp4_triton(x, block_2d=block_2d, global_amax=global_amax, rounding=rounding,
                        scale_order=scale_order, generator=generator, columnwise=columnwise, rht=rht,
                        fake=True, out_dtype=out_dtype, amax_parts=amax_parts, forward_walk=forward_walk)


def dequantize_nvfp4(t: formats.NVFP4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """NVFP4Tensor -> dtype (logical shape), with the tensor's own scale-order arithmetic."""
    if not t.codes.is_cuda:
        return t.dequantize(dtype)
    return dequantize_nvfp4_triton(t, dtype)
