"""Both NVFP4 quantizations a linear layer needs of one operand, from one read of it.

A QuantLinear quantizes x [M, K] twice: rowwise (blocks of 16 along K, fake-quantized, for Fprop) and
columnwise (x^T, blocks of 16 along the tokens M after the 16x16 RHT, packed, for Wgrad); dy likewise
(Dgrad rowwise, Wgrad columnwise, both with SR). One program reads its tile of x from HBM once and
writes both quantizations of it (the second read of the tile hits the cache), each exactly as
fp4lab.kernels.nvfp4's kernel writes it alone: the same block maxima, scale arithmetic and
SR random bits (a function of the element's position and the seed), so the results are bit-equal to
the two separate calls. Both global amaxes come from the one amax pass (amax_parts_nvfp4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fp4lab import formats
from fp4lab.formats import seeds
from fp4lab.kernels._grid import cdiv, next_pow2
from fp4lab.kernels._launch import launch
from fp4lab.kernels.nvfp4 import (
    ORDERS, _check_args, _stochastic_seed, _tl_dtype, amax_parts_nvfp4, fake_quantize_nvfp4, quantize_nvfp4,
    store_blocks,
)
from fp4lab.kernels.numerics import load_tile, reduce_amax_bits, tile_coords

SEED_STEP = tl.constexpr(seeds.SEED_STEP)
# (features, tokens) of x per program and the features each thread loads contiguously; each thread then
# holds vec features x a whole token block, as the columnwise kernels' tiles (nvfp4.py)
TILE_PACKED = ((256, 32), 2)
TILE_FAKE = ((256, 16), 2)


@triton.jit
def _nvfp4_dual_kernel(
    x_ptr, M, K, Mp, row_parts_ptr, n_row_parts, col_parts_ptr, n_col_parts, amax_out_ptr,
    row_out_ptr, codes_ptr, scales_ptr, col_out_ptr, seed_row, seed_col, seed_ptr, n_tiles_f, n_tiles_m,
    ORDER: tl.constexpr, STOCHASTIC: tl.constexpr, SEED_FROM_PTR: tl.constexpr, RHT: tl.constexpr,
    COL_QUANT: tl.constexpr, WRITE_AMAX: tl.constexpr, ROW_DTYPE: tl.constexpr, COL_DTYPE: tl.constexpr,
    N_ROW: tl.constexpr, N_COL: tl.constexpr, BF: tl.constexpr, BT: tl.constexpr, VEC: tl.constexpr,
):
    pid = tl.program_id(0)
    # tiles in the reverse of the amax pass's order: the part of x it read last is still in L2
    tf, tm = tile_coords(n_tiles_f * n_tiles_m - 1 - pid, n_tiles_f, n_tiles_m, True)
    f0 = tf * BF
    m0 = tm * BT
    amax_row = reduce_amax_bits(row_parts_ptr, n_row_parts, N_ROW)
    amax_col = reduce_amax_bits(col_parts_ptr, n_col_parts, N_COL)
    if WRITE_AMAX:
        if pid == 0:
            tl.store(amax_out_ptr, amax_col)
    if STOCHASTIC:
        if SEED_FROM_PTR:  # the two seeds two separate calls would have taken from the state
            seed_row = tl.load(seed_ptr)
            seed_col = seed_row + SEED_STEP
    _rowwise_part(x_ptr, M, K, m0, f0, amax_row, seed_row, row_out_ptr, ORDER, STOCHASTIC, ROW_DTYPE, BT, BF)
    _columnwise_part(x_ptr, M, K, Mp, f0, m0, amax_col, seed_col, codes_ptr, scales_ptr, col_out_ptr,
                     ORDER, STOCHASTIC, RHT, COL_QUANT, COL_DTYPE, BF, BT, VEC)


@triton.jit
def _rowwise_part(x_ptr, M, K, m0, f0, amax_row, seed_row, row_out_ptr, ORDER: tl.constexpr,
                  STOCHASTIC: tl.constexpr, ROW_DTYPE: tl.constexpr, BT: tl.constexpr, BF: tl.constexpr):
    # rowwise (Fprop / Dgrad): whole 16-blocks of features per thread, as nvfp4.py's rowwise tiles
    t = load_tile(x_ptr, K, 1, M, K, m0, f0, BT, BF, False, 0, True)
    store_blocks(t, amax_row, seed_row, x_ptr, m0, f0, M, M, K, K, row_out_ptr, row_out_ptr, row_out_ptr,
                 ORDER, False, STOCHASTIC, False, False, True, ROW_DTYPE, BT, BF, True)


@triton.jit
def _columnwise_part(x_ptr, M, K, Mp, f0, m0, amax_col, seed_col, codes_ptr, scales_ptr, col_out_ptr,
                     ORDER: tl.constexpr, STOCHASTIC: tl.constexpr, RHT: tl.constexpr, COL_QUANT: tl.constexpr,
                     COL_DTYPE: tl.constexpr, BF: tl.constexpr, BT: tl.constexpr, VEC: tl.constexpr):
    # columnwise (Wgrad): the same bytes again, a whole token block per thread, served by L1/L2 (the
    # program just read them): transposing the registers instead spread every rowwise block over several
    # lanes, which then all computed its scale, and ran slower than two kernels
    t = load_tile(x_ptr, 1, K, K, M, f0, m0, BF, BT, RHT, VEC)  # t[f, m] = x[m, f], zero past M
    store_blocks(t, amax_col, seed_col, x_ptr, f0, m0, K, K, Mp, Mp, codes_ptr, scales_ptr, col_out_ptr,
                 ORDER, False, STOCHASTIC, False, COL_QUANT, not COL_QUANT, COL_DTYPE, BF, BT, False)


def nvfp4_dual_triton(x, *, row_parts=None, col_parts=None, col_fake=False, rht=True, rounding="nearest",
                      scale_order="torchao", generator=None, out_dtype=None, tile=None, vec=None, num_warps=4):
    """Run the dual kernel on any device (CPU tensors need TRITON_INTERPRET=1); see
    quantize_nvfp4_rowwise_and_columnwise. tile (features, tokens), vec and num_warps tune speed only."""
    fn = "quantize_nvfp4_rowwise_and_columnwise"
    _check_args(x, fn, False, rounding, scale_order, "propagate")
    if x.ndim != 2 or x.shape[1] % 16:
        raise ValueError(f"{fn}: need a 2-D tensor [M, K] with K a multiple of 16, got shape {tuple(x.shape)}")
    x = x.contiguous()
    M, K = x.shape
    Mp = cdiv(M, 16) * 16
    dev = x.device
    if row_parts is None or col_parts is None:
        row_parts, col_parts = amax_parts_nvfp4(x, rht=rht)
    if tile is None:
        (BF, BT), default_vec = TILE_FAKE if col_fake else TILE_PACKED
    else:
        (BF, BT), default_vec = tile, 0
    vec = default_vec if vec is None else vec

    col_inner = torch.bfloat16 if rht else x.dtype
    out_dtype = out_dtype or x.dtype
    row_out = torch.empty((M, K), dtype=x.dtype, device=dev)
    if col_fake:
        col_out = torch.empty((K, Mp), dtype=col_inner, device=dev)
        codes = scales = col_out  # unused pointers
        amax_out = col_parts
    else:
        codes = torch.empty((K, Mp // 2), dtype=torch.uint8, device=dev)
        scales = torch.empty((K, Mp // 16), dtype=torch.uint8, device=dev)
        col_out = codes
        amax_out = torch.empty((), dtype=torch.float32, device=dev)
    # SR: the rowwise copy draws first, as QuantLinear's two separate calls did
    seed_row, state = _stochastic_seed(rounding, generator, dev)
    seed_col = _stochastic_seed(rounding, generator, dev)[0] if state is None else 0
    n_tiles_f, n_tiles_m = cdiv(K, BF), cdiv(Mp, BT)
    if M == 0 or K == 0:
        if not col_fake:
            amax_out.zero_()
    else:
        launch(
            _nvfp4_dual_kernel, (n_tiles_f * n_tiles_m,),
            x, M, K, Mp, row_parts, row_parts.numel(), col_parts, col_parts.numel(), amax_out,
            row_out, codes, scales, col_out, seed_row, seed_col, x if state is None else state,
            n_tiles_f, n_tiles_m,
            ORDER=ORDERS[scale_order], STOCHASTIC=rounding == "stochastic", SEED_FROM_PTR=state is not None,
            RHT=rht, COL_QUANT=not col_fake, WRITE_AMAX=not col_fake, ROW_DTYPE=_tl_dtype(x.dtype),
            COL_DTYPE=_tl_dtype(col_inner), N_ROW=max(next_pow2(row_parts.numel()), 2),
            N_COL=max(next_pow2(col_parts.numel()), 2), BF=BF, BT=BT, VEC=vec, num_warps=num_warps,
            enable_fp_fusion=False,  # every product rounded like the reference (as nvfp4.py's kernel)
        )
    if state is not None:
        seeds.advance(state, 2)
    row = row_out if out_dtype == x.dtype else row_out.to(out_dtype)
    if col_fake:
        return row, (col_out if out_dtype == col_inner else col_out.to(out_dtype))
    return row, formats.NVFP4Tensor(codes, scales.view(torch.float8_e4m3fn), amax_out, torch.Size((K, Mp)),
                                    scale_order, False)


def quantize_nvfp4_rowwise_and_columnwise(x, *, row_parts=None, col_parts=None, col_fake=False, rht=True,
                                          rounding="nearest", scale_order="torchao", generator=None, out_dtype=None):
    """(fake_quantize_nvfp4(x), quantize_nvfp4(x padded to 16 tokens, columnwise=True, rht=rht)) of x [M, K]
    (K a multiple of 16) from one read of x on CUDA; with col_fake the second is fake_quantize_nvfp4's
    [K, Mp] values instead of the packed NVFP4Tensor. row_parts / col_parts: the two amax partials from
    amax_parts_nvfp4(x, rht=rht) (computed here if not given). SR draws the rowwise copy's seed first. Off
    CUDA it is those two reference calls."""
    if x.is_cuda:
        return nvfp4_dual_triton(x, row_parts=row_parts, col_parts=col_parts, col_fake=col_fake, rht=rht,
                                 rounding=rounding, scale_order=scale_order, generator=generator, out_dtype=out_dtype)
    kw = dict(rounding=rounding, scale_order=scale_order, generator=generator)
    row = fake_quantize_nvfp4(x, amax_parts=row_parts, out_dtype=out_dtype, **kw)
    pad = F.pad(x, (0, 0, 0, (-x.shape[0]) % 16))
    if col_fake:
        return row, fake_quantize_nvfp4(pad, columnwise=True, rht=rht, amax_parts=col_parts, out_dtype=out_dtype, **kw)
    return row, quantize_nvfp4(pad, columnwise=True, rht=rht, amax_parts=col_parts, **kw)
