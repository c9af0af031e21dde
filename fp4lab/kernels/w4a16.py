"""W4A16 NVFP4 matmul for GPUs without FP4 tensor cores (Hopper): y = x @ dequant(W)^T (+ bias).

x is BF16 [M, K]; W is fp4lab's packed NVFP4 (codes uint8 [N, K/2], element 2j in the low nibble;
E4M3 scales [N, K/16]; fp32 decode factor g), converted once by `to_kernel_layout` to column-major
int32 words [K/8, N] and scale codes [K/16, N] so that every load coalesces along N. A scale code is
one integer op away from the BF16x2 (or fp32) multiplier (encode_scales), an offline re-encoding like
the one vLLM's Marlin applies to its NVFP4 scales (kernels.md 2.3); it cut the swap kernel's loop
from 6.1 to 5.0 SASS instructions per weight (benchmarks/w4a16.md, v6).
Numerics: e2m1 * e4m3 is exact in BF16/FP32, products are accumulated in fp32 and g is applied once
in the fp32 epilogue; the output is rounded to BF16 once. So the kernels equal
`x.double() @ dequant(W).double().T` to 1 BF16 ulp plus fp32 summation error.

Eight ways to compute it, picked per (M bucket, N, K) by timing them once on the first call
(kernels.md §7), the choice cached in memory (and in FP4LAB_W4A16_CACHE, a JSON file, if set):
* "gemv": CUDA-core FMAs for M = 1, each thread owning columns (K summed in registers, no shuffles);
          tall tiles split K across a program's warps (reduced in shared memory), or split-K so that
          all SMs stream weights; "gemvm" is the same for 2 or 4 rows of x (M = 2..4);
* "swap": Y^T = W X^T on BF16 tensor cores, the dequantized weight tile as the left operand (Hopper's
          wgmma reads it from registers) and the tokens as the narrow right one ("swap8": 8 slab dots);
          the fastest path for M = 2..~128 on an H100 (benchmarks/w4a16.md);
* "dot":  BF16 tensor-core tl.dot of 8 weight slabs (nibble j of every word) dequantized in registers,
          optional split-K;
* "dot1": the same tile as one [BK, BN] operand (slabs joined; x gathered in the matching K order);
* "cublas": dequantize W once to BF16 and call F.linear (cuBLAS), the large-M fallback; W^T [K, N]
          ("cublas") or W [N, K] ("cublas_rows"), whichever cuBLAS runs faster for the shape.
Split-K programs store fp32 partials in their own slices of a workspace; the last program of a tile
(an atomic counter) sums them in split order and writes y, so one launch does everything, the result
does not depend on arrival order, and the counters are left at zero (CUDA-graph replay safe, no host
sync).

Dequantization (kernels.md §7.1) never uses a float8 cast (the interpreter's are wrong,
triton-interpreter.md) and handles two nibbles per integer op: nibbles j and j+4 of a word go to the
two halves of one int32 as FP16 bit patterns (e2m1 * 2^-14; the subnormal code 1 becomes the FP16
subnormal 2^-15, which cvt.f32.f16 converts exactly) for the GEMV, or as BF16 bit patterns times
the block scale with one mul.rn.bf16x2 for the tensor-core paths (see _pair_bf16). Scale codes
become fp32 (scale * 2^-8) or BF16x2 (scale * 2^110) bits by one integer op. The powers of two are
folded into g.
On the GPU the conversions are inline PTX; under TRITON_INTERPRET=1 the same numbers come from
int16/fp16 casts, so the interpreter checks the bit placement and the GPU tests check the PTX.
"""
from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl

from fp4lab.kernels._grid import cdiv, interpreting, next_pow2
from fp4lab.kernels._launch import launch


@triton.jit
def _nibble_to_f32(t):
    """Low nibble of each int32 -> e2m1 * 2^-14 as fp32 (FP16 bit placement; code 1 is the FP16
    subnormal 2^-15, which the FP16 -> FP32 conversion keeps exactly)."""
    h = ((t & 0x8) << 12) | ((t & 0x7) << 9)
    return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _scale_f32(c):
    """Scale codes (see to_kernel_layout) -> scale * 2^-8 as fp32; code 255 (a NaN scale) stays NaN."""
    c = c.to(tl.int32)
    f = ((c << 20) + 0x35000000).to(tl.float32, bitcast=True)
    return tl.where(c == 255, float("nan"), f)


@triton.jit
def _pair_f32(w, J: tl.constexpr, ASM: tl.constexpr):
    """Nibbles J and J + 4 of each word as fp32 e2m1 * 2^-14. Both are placed as FP16 bit patterns in
    the two halves of one int32 (2 integer ops per pair); the GPU converts each half with one
    cvt.f32.f16 (inline PTX), the interpreter through int16 casts."""
    if J < 3:
        h = ((w << (12 - 4 * J)) & -2147450880) | ((w << (9 - 4 * J)) & 0x0E000E00)  # 0x80008000
    else:
        h = (w & -2147450880) | ((w >> 3) & 0x0E000E00)
    if ASM:
        lo, hi = tl.inline_asm_elementwise(
            asm="{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            constraints="=r,=r,r", args=[h], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    else:
        lo = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (h >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _pair_bf16(w, c, J: tl.constexpr, ASM: tl.constexpr, BF16X2: tl.constexpr):
    """Nibbles J and J + 4 of each word times their block scale, as BF16 e2m1 * scale * 2^-16 (exact:
    <= 6 significant bits, no subnormals). GPU: the nibbles are placed as BF16 bit patterns
    (e2m1 * 2^-126; code 1 is the BF16 subnormal 2^-127) and one mul.rn.bf16x2 by scale * 2^110 gives
    both values (as triton_kernels' Hopper MXFP4 path multiplies by 2^126); the interpreter computes
    the same numbers in fp32 (and so does the GPU with BF16X2 off: FP4LAB_W4A16_SAFE_DEQUANT=1, in case
    a GPU flushed the BF16 subnormal). c is the block's scale code (to_kernel_layout):
    c * 0x100010 + 0x70007000 is scale * 2^110 as BF16 in both halves, one IMAD."""
    if ASM and BF16X2:
        if J == 0:
            h = ((w << 12) & -2147450880) | ((w << 6) & 0x01C001C0)  # sign -> bit 15, magnitude -> bits 6..8
        elif J == 1:
            h = ((w << 8) & -2147450880) | ((w << 2) & 0x01C001C0)
        elif J == 2:
            h = ((w << 4) & -2147450880) | ((w >> 2) & 0x01C001C0)
        else:
            h = (w & -2147450880) | ((w >> 6) & 0x01C001C0)
        s2 = c.to(tl.int32) * 0x100010 + 0x70007000
        lo, hi = tl.inline_asm_elementwise(
            asm="{ .reg .b32 t; mul.rn.bf16x2 t, $2, $3; mov.b32 {$0, $1}, t; }",
            constraints="=h,=h,r,r", args=[h, s2], dtype=(tl.bfloat16, tl.bfloat16),
            is_pure=True, pack=1)
    else:
        lo, hi = _pair_f32(w, J, ASM)
        f = _scale_f32(c) * 64.0  # 2^-14 * 2^-8 * 2^6 = 2^-16
        lo = (lo * f).to(tl.bfloat16)
        hi = (hi * f).to(tl.bfloat16)
    return lo, hi


@triton.jit
def _word_values(w, c, ASM: tl.constexpr, BF16X2: tl.constexpr):
    """The 8 BF16 values of every word as [..., 2, 2, 2] whose flattened trailing index is the nibble
    j = k - 8r (join's new axis is the last one, so the outermost join gives the fastest index)."""
    v0, v4 = _pair_bf16(w, c, 0, ASM, BF16X2)
    v1, v5 = _pair_bf16(w, c, 1, ASM, BF16X2)
    v2, v6 = _pair_bf16(w, c, 2, ASM, BF16X2)
    v3, v7 = _pair_bf16(w, c, 3, ASM, BF16X2)
    return tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
    """acc + a @ b; fp32 operands under the interpreter, which gets bf16 tl.dot wrong (triton-interpreter.md)."""
    if DOT_FP32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _split_k_range(pid_k, K, split_k, BLOCK_K: tl.constexpr):
    """[k_start, k_end) of split pid_k: the K blocks dealt out in equal runs of whole BLOCK_K."""
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), split_k) * BLOCK_K
    k_start = pid_k * k_per_split
    return k_start, tl.minimum(k_start + k_per_split, K)


@triton.jit
def _store_y(out, g, bias_ptr, y_ptrs, offs_n, N, mask, HAS_BIAS: tl.constexpr):
    out = out * g
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptrs, out.to(tl.bfloat16), mask=mask)


@triton.jit
def _epilogue(acc, g, bias_ptr, y_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N, stride_ym, tile_id, pid_k,
              split_k, HAS_BIAS: tl.constexpr):
    """Scale by g, add bias, store BF16. With split-K, every split stores its fp32 partial in its own slice
    of the workspace with plain stores, and the last of a tile's programs to arrive (an atomic counter)
    sums the slices in split order (deterministic) and writes y. fp32 atomics into one shared slice cost
    more than the K loop on small layers at M >= 32 (a 64 x 64 tile is 4096 atomics per program)."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    if split_k == 1:
        _store_y(acc, g, bias_ptr, y_ptrs, offs_n, N, mask, HAS_BIAS)
    else:
        ws_off = offs_m[:, None] * N + offs_n[None, :]
        mn = M * N
        tl.store(ws_ptr + pid_k * mn + ws_off, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is stored before the counter is released
        count = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel")
        if count == split_k - 1:
            out = tl.zeros_like(acc)
            for s in range(0, split_k):
                # .cg reads at L2: this SM's L1 may still hold workspace lines from an earlier call
                out += tl.load(ws_ptr + s * mn + ws_off, mask=mask, other=0.0, cache_modifier=".cg")
            _store_y(out, g, bias_ptr, y_ptrs, offs_n, N, mask, HAS_BIAS)
            tl.atomic_xchg(cnt_ptr + tile_id, 0)


@triton.jit
def _gemv_block(w, x_ptrs, mask, ASM: tl.constexpr):
    """sum_j x[8r + j] * e2m1(nibble j of word r) * 2^-14, per word."""
    part = tl.zeros(w.shape, dtype=tl.float32)
    for j in tl.static_range(4):
        lo, hi = _pair_f32(w, j, ASM)
        if mask is None:
            xl = tl.load(x_ptrs + j, eviction_policy="evict_last")
            xh = tl.load(x_ptrs + j + 4, eviction_policy="evict_last")
        else:
            xl = tl.load(x_ptrs + j, mask=mask, other=0.0, eviction_policy="evict_last")
            xh = tl.load(x_ptrs + j + 4, mask=mask, other=0.0, eviction_policy="evict_last")
        part += xl.to(tl.float32)[:, None] * lo
        part += xh.to(tl.float32)[:, None] * hi
    return part


@triton.jit
def _gemv_tiles(w_ptr, s_ptr, k0, offs_b, offs_n, n_mask, N, KB, EVEN: tl.constexpr):
    """The two word tiles and the scale codes of the 16-blocks k0 // 16 + offs_b (block b is words 2b, 2b + 1)."""
    b = k0 // 16 + offs_b
    w_ptrs = w_ptr + (2 * b)[:, None] * N + offs_n[None, :]
    s_ptrs = s_ptr + b[:, None] * N + offs_n[None, :]
    if EVEN:  # K % BLOCK_K == 0 and N % BLOCK_N == 0: no masks, no selects
        w0 = tl.load(w_ptrs, eviction_policy="evict_first")
        w1 = tl.load(w_ptrs + N, eviction_policy="evict_first")
        sb = tl.load(s_ptrs, eviction_policy="evict_first")
    else:
        mask = (b < KB)[:, None] & n_mask[None, :]
        w0 = tl.load(w_ptrs, mask=mask, other=0, eviction_policy="evict_first")
        w1 = tl.load(w_ptrs + N, mask=mask, other=0, eviction_policy="evict_first")
        sb = tl.load(s_ptrs, mask=mask, other=0, eviction_policy="evict_first")
    return w0, w1, sb


@triton.jit
def _gemv_step(acc, w0, w1, sb, x_ptr, k0, offs_b, KB, EVEN: tl.constexpr, ASM: tl.constexpr):
    b = k0 // 16 + offs_b
    b_mask = None if EVEN else b < KB
    part = _gemv_block(w0, x_ptr + 16 * b, b_mask, ASM) + _gemv_block(w1, x_ptr + 16 * b + 8, b_mask, ASM)
    return acc + part * _scale_f32(sb)


@triton.jit
def _last_k_step(k_start, k_end, K, BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    """The last K step of a split, where the register prefetch stops: the last step re-reads its own
    tiles (cache hits) instead of branching; an empty split (k_start >= K) reads in range when EVEN and
    is masked otherwise."""
    last = k_start + ((k_end - k_start - 1) // BLOCK_K) * BLOCK_K
    if EVEN:
        last = tl.minimum(last, K - BLOCK_K)
    return last


@triton.jit
def _gemv_ranges(pid_n, pid_k, N, K, split_k, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A GEMV program's columns (offs_n, n_mask), its 16-block offsets within a K step (offs_b), the number of
    16-blocks (KB) and its split's K range [k_start, k_end)."""
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start, k_end = _split_k_range(pid_k, K, split_k, BLOCK_K)
    return offs_n, tl.arange(0, BLOCK_K // 16), offs_n < N, K // 16, k_start, k_end


@triton.jit
def _w4a16_gemv_kernel(x_ptr, w_ptr, s_ptr, g_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                       M, N, K, stride_xm, stride_ym, split_k,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, ASM: tl.constexpr,
                       EVEN: tl.constexpr, PREFETCH: tl.constexpr):
    """CUDA-core path for one row of x (M = 1): each thread owns columns, so words load coalesced along N
    and the K sum stays in registers until the end; x[k] is a broadcast (GemLite's GEMV layout).
    The two words of a 16-block are loaded as separate tiles so that each scale is decoded once.
    A tall tile (BLOCK_K up to 2048) splits K across the warps of one program, whose partial sums meet
    in tl.sum through shared memory: 2.5 us less per layer than split-K's global reduction on an H100
    (benchmarks/w4a16.md, v8). PREFETCH loads the next K step's tiles before this step's math."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n, offs_b, n_mask, KB, k_start, k_end = _gemv_ranges(pid_n, pid_k, N, K, split_k, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_K // 16, BLOCK_N), dtype=tl.float32)
    if PREFETCH:
        last = _last_k_step(k_start, k_end, K, BLOCK_K, EVEN)
        w0, w1, sb = _gemv_tiles(w_ptr, s_ptr, tl.minimum(k_start, last), offs_b, offs_n, n_mask, N, KB, EVEN)
        for k0 in range(k_start, k_end, BLOCK_K):
            nw0, nw1, nsb = _gemv_tiles(w_ptr, s_ptr, tl.minimum(k0 + BLOCK_K, last), offs_b, offs_n, n_mask, N,
                                        KB, EVEN)
            acc = _gemv_step(acc, w0, w1, sb, x_ptr, k0, offs_b, KB, EVEN, ASM)
            w0, w1, sb = nw0, nw1, nsb
    else:
        for k0 in range(k_start, k_end, BLOCK_K):
            w0, w1, sb = _gemv_tiles(w_ptr, s_ptr, k0, offs_b, offs_n, n_mask, N, KB, EVEN)
            acc = _gemv_step(acc, w0, w1, sb, x_ptr, k0, offs_b, KB, EVEN, ASM)
    g = tl.load(g_ptr) * 4194304.0  # 2^22 = 2^14 (e2m1 via FP16) * 2^8 (_scale_f32)
    offs_m = tl.arange(0, 1)
    _epilogue(tl.sum(acc, axis=0)[None, :], g, bias_ptr, y_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N,
              stride_ym, pid_n, pid_k, split_k, HAS_BIAS)


@triton.jit
def _gemv_row(acc, w0, w1, scale, x_ptr, stride_xm, row, M, b, KB, EVEN: tl.constexpr, ASM: tl.constexpr):
    """One row's share of a GEMV step (the nibble decodes are the same pure ops for every row, so the
    compiler keeps one copy of them); rows past M read x as zeros."""
    x_row = x_ptr + row * stride_xm
    mask = (b * 0 + row) < M
    if not EVEN:
        mask = mask & (b < KB)
    part = _gemv_block(w0, x_row + 16 * b, mask, ASM) + _gemv_block(w1, x_row + 16 * b + 8, mask, ASM)
    return acc + part * scale


@triton.jit
def _w4a16_gemv_rows_kernel(x_ptr, w_ptr, s_ptr, g_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                            M, N, K, stride_xm, stride_ym, split_k,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            HAS_BIAS: tl.constexpr, ASM: tl.constexpr, EVEN: tl.constexpr, PREFETCH: tl.constexpr):
    """The GEMV for BLOCK_M = 2 or 4 rows of x (small-batch decode): _w4a16_gemv_kernel's tiles and loads,
    one 2-D accumulator per row (a [rows, K, N] tile made Triton move data through shared memory and
    spill), each weight decoded once and multiplied into every row."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    offs_n, offs_b, n_mask, KB, k_start, k_end = _gemv_ranges(pid_n, pid_k, N, K, split_k, BLOCK_N, BLOCK_K)
    acc0 = tl.zeros((BLOCK_K // 16, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_K // 16, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_K // 16, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_K // 16, BLOCK_N), dtype=tl.float32)
    if PREFETCH:
        last = _last_k_step(k_start, k_end, K, BLOCK_K, EVEN)
        w0, w1, sb = _gemv_tiles(w_ptr, s_ptr, tl.minimum(k_start, last), offs_b, offs_n, n_mask, N, KB, EVEN)
    for k0 in range(k_start, k_end, BLOCK_K):
        if PREFETCH:
            nw0, nw1, nsb = _gemv_tiles(w_ptr, s_ptr, tl.minimum(k0 + BLOCK_K, last), offs_b, offs_n, n_mask, N,
                                        KB, EVEN)
        else:
            w0, w1, sb = _gemv_tiles(w_ptr, s_ptr, k0, offs_b, offs_n, n_mask, N, KB, EVEN)
        b = k0 // 16 + offs_b
        scale = _scale_f32(sb)
        acc0 = _gemv_row(acc0, w0, w1, scale, x_ptr, stride_xm, m0 + 0, M, b, KB, EVEN, ASM)
        acc1 = _gemv_row(acc1, w0, w1, scale, x_ptr, stride_xm, m0 + 1, M, b, KB, EVEN, ASM)
        if BLOCK_M == 4:
            acc2 = _gemv_row(acc2, w0, w1, scale, x_ptr, stride_xm, m0 + 2, M, b, KB, EVEN, ASM)
            acc3 = _gemv_row(acc3, w0, w1, scale, x_ptr, stride_xm, m0 + 3, M, b, KB, EVEN, ASM)
        if PREFETCH:
            w0, w1, sb = nw0, nw1, nsb
    g = tl.load(g_ptr) * 4194304.0  # as _w4a16_gemv_kernel
    tile = tl.program_id(2) * tl.num_programs(0) + pid_n
    for r in tl.static_range(BLOCK_M):
        acc = acc0 if r == 0 else (acc1 if r == 1 else (acc2 if r == 2 else acc3))
        offs_m = m0 + r + tl.arange(0, 1)
        # split-K: one counter per (row, tile), so that each row's last program writes that row
        _epilogue(tl.sum(acc, axis=0)[None, :], g, bias_ptr, y_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N,
                  stride_ym, tile * BLOCK_M + r, pid_k, split_k, HAS_BIAS)


@triton.jit
def _w4a16_dot_kernel(x_ptr, w_ptr, s_ptr, g_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                      M, N, K, stride_xm, stride_ym, split_k,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
                      ONE_DOT: tl.constexpr, ASM: tl.constexpr, BF16X2: tl.constexpr, EVEN: tl.constexpr):
    """Tensor-core path: the [BK/8, BN] word tile gives 8 weight slabs (k mod 8), each dequantized to
    BF16 exactly and multiplied with the matching stride-8 columns of x."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n  # grouped order: GROUP_M row-tiles share each weight tile while it is in L2
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_K // 8)
    n_mask = offs_n < N
    m_mask = offs_m < M
    KW = K // 8
    k_start, k_end = _split_k_range(pid_k, K, split_k, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        r = k0 // 8 + offs_r
        w_ptrs = w_ptr + r[:, None] * N + offs_n[None, :]
        s_ptrs = s_ptr + (r // 2)[:, None] * N + offs_n[None, :]
        if EVEN:  # K % BLOCK_K == 0 and N % BLOCK_N == 0: only rows of x are masked
            x_mask = m_mask[:, None]
            w = tl.load(w_ptrs, eviction_policy="evict_first")
            sb = tl.load(s_ptrs)
        else:
            w_mask = (r < KW)[:, None] & n_mask[None, :]
            x_mask = m_mask[:, None] & (r < KW)[None, :]
            w = tl.load(w_ptrs, mask=w_mask, other=0, eviction_policy="evict_first")
            sb = tl.load(s_ptrs, mask=w_mask, other=0)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + 8 * r[None, :]
        if ONE_DOT:
            # one [BK, BN] tile in plain k order: [R, BN, 8] values -> [R, 8, BN] -> [BK, BN]
            v = tl.reshape(_word_values(w, sb, ASM, BF16X2), (BLOCK_K // 8, BLOCK_N, 8))
            v = tl.reshape(tl.permute(v, (0, 2, 1)), (BLOCK_K, BLOCK_N))
            kx = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kx[None, :],
                        mask=m_mask[:, None] if EVEN else m_mask[:, None] & (kx < K)[None, :], other=0.0)
            acc = _dot(x, v, acc, DOT_FP32)
        else:
            for j in tl.static_range(4):
                lo, hi = _pair_bf16(w, sb, j, ASM, BF16X2)
                xl = tl.load(x_ptrs + j, mask=x_mask, other=0.0)
                xh = tl.load(x_ptrs + j + 4, mask=x_mask, other=0.0)
                acc = _dot(xl, lo, acc, DOT_FP32)
                acc = _dot(xh, hi, acc, DOT_FP32)
    g = tl.load(g_ptr) * 65536.0  # 2^16, see _pair_bf16
    _epilogue(acc, g, bias_ptr, y_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N, stride_ym,
              pid_m * num_n + pid_n, pid_k, split_k, HAS_BIAS)


@triton.jit
def _w4a16_swap_kernel(x_ptr, w_ptr, s_ptr, g_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
                       M, N, K, stride_xm, stride_ym, split_k,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr, ONE_DOT: tl.constexpr,
                       ASM: tl.constexpr, BF16X2: tl.constexpr, EVEN: tl.constexpr):
    """Tensor-core path with the operands swapped: Y^T[BN, BM] = W[BN, BK] @ X^T[BK, BM], so the
    dequantized weight tile is the left operand (Hopper's wgmma takes it from registers, 64 weight rows
    per warpgroup) and the few tokens are the narrow right operand (>= 16 wide). The M tiles of one
    weight tile are neighbouring programs, so the weights leave HBM once."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid % num_m
    pid_n = pid // num_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_K // 8)
    n_mask = offs_n < N
    m_mask = offs_m < M
    KW = K // 8
    k_start, k_end = _split_k_range(pid_k, K, split_k, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        r = k0 // 8 + offs_r
        w_ptrs = w_ptr + r[None, :] * N + offs_n[:, None]
        s_ptrs = s_ptr + (r // 2)[None, :] * N + offs_n[:, None]
        if EVEN:  # K % BLOCK_K == 0 and N % BLOCK_N == 0: only tokens are masked
            w = tl.load(w_ptrs, eviction_policy="evict_first")
            sb = tl.load(s_ptrs)
        else:
            w_mask = n_mask[:, None] & (r < KW)[None, :]
            w = tl.load(w_ptrs, mask=w_mask, other=0, eviction_policy="evict_first")
            sb = tl.load(s_ptrs, mask=w_mask, other=0)
        if ONE_DOT:
            v = tl.reshape(_word_values(w, sb, ASM, BF16X2), (BLOCK_N, BLOCK_K))  # column 8r + t is k
            kx = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + kx[:, None],
                         mask=m_mask[None, :] if EVEN else m_mask[None, :] & (kx < K)[:, None], other=0.0)
            acc = _dot(v, xt, acc, DOT_FP32)
        else:
            x_ptrs = x_ptr + offs_m[None, :] * stride_xm + 8 * r[:, None]
            x_mask = m_mask[None, :] if EVEN else m_mask[None, :] & (r < KW)[:, None]
            for j in tl.static_range(4):
                lo, hi = _pair_bf16(w, sb, j, ASM, BF16X2)
                xl = tl.load(x_ptrs + j, mask=x_mask, other=0.0)
                xh = tl.load(x_ptrs + j + 4, mask=x_mask, other=0.0)
                acc = _dot(lo, xl, acc, DOT_FP32)
                acc = _dot(hi, xh, acc, DOT_FP32)
    g = tl.load(g_ptr) * 65536.0  # 2^16, see _pair_bf16
    _epilogue(tl.trans(acc), g, bias_ptr, y_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, M, N, stride_ym,
              pid_m * num_n + pid_n, pid_k, split_k, HAS_BIAS)


@triton.jit
def _dequant_tile(w_ptr, s_ptr, g_ptr, N, K, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's [BLOCK_R, BLOCK_N] tile of weight words: (word rows r, columns offs_n, mask, words,
    f = fp32(scale * g) * 2^14, the factor of _nibble_to_f32's values)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (r < K // 8)[:, None] & (offs_n < N)[None, :]
    w = tl.load(w_ptr + r[:, None] * N + offs_n[None, :], mask=mask, other=0)
    sb = tl.load(s_ptr + (r // 2)[:, None] * N + offs_n[None, :], mask=mask, other=0)
    f = ((_scale_f32(sb) * 256.0) * tl.load(g_ptr)) * 16384.0  # fp32(scale * g); powers of 2 are exact
    return r, offs_n, mask, w, f


@triton.jit
def _dequant_t_kernel(w_ptr, s_ptr, g_ptr, out_ptr, N, K,
                      BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[k, n] (W transposed) = e2m1 * fp32(scale * g), rounded once, as the reference dequantize()."""
    r, offs_n, mask, w, f = _dequant_tile(w_ptr, s_ptr, g_ptr, N, K, BLOCK_R, BLOCK_N)
    for j in tl.static_range(8):
        v = _nibble_to_f32(w >> (4 * j)) * f
        tl.store(out_ptr + (8 * r + j)[:, None] * N + offs_n[None, :], v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_rows_kernel(w_ptr, s_ptr, g_ptr, out_ptr, N, K,
                         BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[n, k] (W as nn.Linear keeps it) = e2m1 * fp32(scale * g), rounded once; the same numbers as
    _dequant_t_kernel, transposed on chip so that both the loads and the stores coalesce."""
    _, offs_n, _, w, f = _dequant_tile(w_ptr, s_ptr, g_ptr, N, K, BLOCK_R, BLOCK_N)
    dt = out_ptr.dtype.element_ty
    v0 = (_nibble_to_f32(w) * f).to(dt)
    v1 = (_nibble_to_f32(w >> 4) * f).to(dt)
    v2 = (_nibble_to_f32(w >> 8) * f).to(dt)
    v3 = (_nibble_to_f32(w >> 12) * f).to(dt)
    v4 = (_nibble_to_f32(w >> 16) * f).to(dt)
    v5 = (_nibble_to_f32(w >> 20) * f).to(dt)
    v6 = (_nibble_to_f32(w >> 24) * f).to(dt)
    v7 = (_nibble_to_f32(w >> 28) * f).to(dt)
    # join adds a trailing axis, so the last join picks bit 0 of the nibble index: [R, N, 2, 2, 2] holds
    # nibble 4a + 2b + c at [.., a, b, c], the K order of a word once [N, R, 8] is flattened
    t = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    t = tl.reshape(tl.permute(t, (1, 0, 2, 3, 4)), (BLOCK_N, 8 * BLOCK_R))
    offs_k = tl.program_id(0) * 8 * BLOCK_R + tl.arange(0, 8 * BLOCK_R)
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], t,
             mask=(offs_n < N)[:, None] & (offs_k < K)[None, :])


# ---------------------------------------------------------------------------------------------
# host side: checks, workspace, configs, the measured dispatcher


@dataclass(frozen=True)
class Config:
    """One way to run the product. kind: "gemv" (M = 1) | "gemvm" (the GEMV for block_m = 2 or 4 rows) | "dot" (8 slab
    dots) | "dot1" (one dot per tile) |
    "swap" (weights as the left operand, one dot per tile) | "swap8" (the same, 8 slab dots) | "cublas"
    (dequantize to W^T [K, N] + cuBLAS) | "cublas_rows" (dequantize to W [N, K] + cuBLAS)."""

    kind: str
    block_m: int = 1
    block_n: int = 256
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    group_m: int = 8
    prefetch: int = 0  # gemv: load the next K step's tiles before this step's math (register double buffer)

    @property
    def dense(self) -> bool:
        """Dequantize + cuBLAS (no Triton matmul to compile; the weight is rounded to BF16 first)."""
        return self.kind in ("cublas", "cublas_rows")


SCALE_CODE_NAN = 255
_SCALE_CODE_BIAS = 224 << 3  # scale * 2^110 has a biased exponent in [228, 245] (E4M3 2^-9 .. 448)


def encode_scales(scales: torch.Tensor) -> torch.Tensor:
    """E4M3 block scales -> the kernels' scale codes (uint8, same shape): c = ((E - 224) << 3) | m,
    where E and m are the exponent and top 3 mantissa bits of scale * 2^110 (exact: E4M3 values,
    subnormals included, have <= 4 significant bits). So c * 16 + 0x7000 is scale * 2^110 as BF16
    bits and (c << 20) + 0x35000000 is scale * 2^-8 as fp32 bits, one integer op each. Zero scales
    get code 0 (their blocks' codes are zeroed, see to_kernel_layout), NaN scales code 255
    (0x7FF0, a BF16 NaN). Negative scales raise: NVFP4 block scales are never negative."""
    b = scales.view(torch.uint8)
    mag = b & 0x7F
    bad = (b >= 0x80) & (mag != 0) & (mag != 0x7F)
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise ValueError(f"to_kernel_layout: negative E4M3 scale {float(scales[i])} at [{i[0]}, {i[1]}] "
                         "(row, 16-block); NVFP4 block scales are non-negative")
    v = (mag.view(torch.float8_e4m3fn).float() * 2.0 ** 110).view(torch.int32)
    c = (v >> 20) - _SCALE_CODE_BIAS
    c = torch.where(mag == 0, 0, torch.where(mag == 0x7F, SCALE_CODE_NAN, c))
    return c.to(torch.uint8)


def decode_scales(codes: torch.Tensor) -> torch.Tensor:
    """Inverse of encode_scales: scale codes -> float8_e4m3fn (0 -> +0, 255 -> NaN 0x7F)."""
    c = codes.to(torch.int32)
    v = ((c + _SCALE_CODE_BIAS) << 20).view(torch.float32) * 2.0 ** -110
    v = torch.where(c == 0, 0.0, v).to(torch.float8_e4m3fn).view(torch.uint8)
    return torch.where(c == SCALE_CODE_NAN, 0x7F, v).to(torch.uint8).view(torch.float8_e4m3fn)


def to_kernel_layout(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard packed NVFP4 (codes uint8 [N, Kp/2], element 2j in the low nibble; scales E4M3
    [N, Kp/16]) -> the kernels' layout, column-major so that loads coalesce along N:
    * words int32 [Kp/8, N]: word r of column n holds k = 8r..8r+7 in nibble k - 8r (the bytes are
      little-endian);
    * scale codes uint8 [Kp/16, N] (encode_scales).
    The codes of a zero-scale block are stored as zeros: they dequantize to 0 either way, and the
    kernels then need no zero test on the scale."""
    if codes.dtype != torch.uint8 or codes.ndim != 2 or codes.shape[1] % 8:
        raise ValueError(f"to_kernel_layout: codes must be uint8 [N, Kp/2] with Kp a multiple of 16, "
                         f"got {codes.dtype} {tuple(codes.shape)}")
    n, k2 = codes.shape
    if scales.dtype not in (torch.float8_e4m3fn, torch.uint8) or tuple(scales.shape) != (n, k2 // 8):
        raise ValueError(f"to_kernel_layout: scales must be float8_e4m3fn [{n}, {k2 // 8}], "
                         f"got {scales.dtype} {tuple(scales.shape)}")
    scales = scales.contiguous().view(torch.float8_e4m3fn)
    c = encode_scales(scales)
    codes = codes.reshape(n, k2 // 8, 8).masked_fill((c == 0).unsqueeze(-1), 0).reshape(n, k2)
    words = codes.contiguous().view(torch.int32).t().contiguous()
    return words, c.t().contiguous()


def from_kernel_layout(words: torch.Tensor, scales_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of to_kernel_layout: (codes uint8 [N, Kp/2], scales float8_e4m3fn [N, Kp/16]); the codes
    of zero-scale blocks come back as zeros."""
    codes = words.t().contiguous().view(torch.uint8)
    return codes, decode_scales(scales_t.t().contiguous())


def _check(x, words, scales_t, g, bias):
    if x.dtype != torch.bfloat16:
        raise TypeError(f"w4a16: activations must be bfloat16, got {x.dtype}")
    if words.dtype != torch.int32 or words.ndim != 2:
        raise TypeError(f"w4a16: weight words must be int32 [Kp/8, N] (see to_kernel_layout), "
                        f"got {words.dtype} {tuple(words.shape)}")
    kw, n = words.shape
    if kw % 2:
        raise ValueError(f"w4a16: Kp = {8 * kw} is not a multiple of 16; pad the weight (quantize_nvfp4 does)")
    if scales_t.dtype != torch.uint8 or tuple(scales_t.shape) != (kw // 2, n):
        raise TypeError(f"w4a16: scales must be uint8 scale codes [{kw // 2}, {n}] (see to_kernel_layout), "
                        f"got {scales_t.dtype} {tuple(scales_t.shape)}")
    if g.numel() != 1 or g.dtype != torch.float32:
        raise TypeError(f"w4a16: the global decode scale must be one fp32 value, got {g.dtype} {tuple(g.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"w4a16: bias must have shape [{n}], got {tuple(bias.shape)}")
    devs = {t.device for t in (x, words, scales_t, g) + ((bias,) if bias is not None else ())}
    if len(devs) != 1:
        raise ValueError(f"w4a16: all tensors must be on one device, got {sorted(map(str, devs))}")
    if not words.is_contiguous() or not scales_t.is_contiguous():
        raise ValueError("w4a16: weight words and scales must be contiguous")


_WORKSPACES: dict = {}
_RETIRED: list = []  # outgrown workspaces stay allocated: CUDA graphs captured earlier still point at them


MAX_WORKSPACE_FLOATS = 1 << 24  # 64 MiB of split-K partial sums at most


def _workspace(device, numel: int, tiles: int):
    """fp32 partial sums (one [M, N] slice per split) and int32 tile counters; the counters are zero
    between calls (each tile's last program resets its own). One per device: calls on concurrent
    streams of one device must not use split-K."""
    ws, cnt = _WORKSPACES.get(device, (None, None))
    if ws is None or ws.numel() < numel or cnt.numel() < tiles:
        if ws is not None:
            _RETIRED.append((ws, cnt))
        ws = torch.zeros(max(numel, 1 << 16, 0 if ws is None else ws.numel()), dtype=torch.float32, device=device)
        cnt = torch.zeros(max(tiles, 1 << 12, 0 if cnt is None else cnt.numel()), dtype=torch.int32, device=device)
        _WORKSPACES[device] = (ws, cnt)
    return ws, cnt


def dequantize_kernel_layout(words, scales_t, g, dtype=torch.bfloat16) -> torch.Tensor:
    """Dense W^T [Kp, N] = e2m1 * fp32(scale * g), rounded once to dtype (Triton on CUDA, torch elsewhere)."""
    kw, n = words.shape
    if not words.is_cuda:
        from fp4lab.formats.e2m1 import e2m1_to_float, unpack_e2m1
        codes, scales = from_kernel_layout(words, scales_t)
        f = scales.float() * g.float().reshape(())
        v = e2m1_to_float(unpack_e2m1(codes)).unflatten(-1, (-1, 16)) * f.unsqueeze(-1)
        return v.flatten(-2).to(dtype).t()
    out = torch.empty(8 * kw, n, dtype=dtype, device=words.device)
    br, bn = 16, 256
    launch(_dequant_t_kernel, (cdiv(kw, br), cdiv(n, bn)),
           words, scales_t, g, out, n, 8 * kw, BLOCK_R=br, BLOCK_N=bn)
    return out


def dequantize_rows(words, scales_t, g, dtype=torch.bfloat16) -> torch.Tensor:
    """Dense W [N, Kp] (nn.Linear's layout), the same numbers as dequantize_kernel_layout(...).t()."""
    kw, n = words.shape
    if not words.is_cuda and not interpreting():
        return dequantize_kernel_layout(words, scales_t, g, dtype).t().contiguous()
    out = torch.empty(n, 8 * kw, dtype=dtype, device=words.device)
    br, bn = 16, 64
    launch(_dequant_rows_kernel, (cdiv(kw, br), cdiv(n, bn)), words, scales_t, g, out, n, 8 * kw,
           BLOCK_R=br, BLOCK_N=bn)
    return out


def _launch(cfg: Config, x, words, scales_t, g, bias, y, run=launch):
    """Run `cfg` (run=launch), or hand its kernel, grid and arguments to another `run` (precompile)."""
    m, k = x.shape
    n = words.shape[1]
    if cfg.dense:
        # two layouts of the dense weight: cuBLAS's kernel for [N, K] (nn.Linear's, the BF16 baseline's)
        # and for [K, N] differ by up to 12% in either direction (benchmarks/w4a16.md, session 20)
        w = (dequantize_rows(words, scales_t, g) if cfg.kind == "cublas_rows"
             else dequantize_kernel_layout(words, scales_t, g, torch.bfloat16).t())
        return torch.nn.functional.linear(x, w, None if bias is None else bias.to(torch.bfloat16))
    tiles_m = cdiv(m, cfg.block_m)
    tiles_n = cdiv(n, cfg.block_n)
    if cfg.split_k > 1:
        # gemvm counts each row of a tile separately (its epilogue runs once per row)
        counters = tiles_m * tiles_n * (cfg.block_m if cfg.kind == "gemvm" else 1)
        ws, cnt = _workspace(x.device, cfg.split_k * m * n, counters)
    else:
        ws, cnt = g, g.view(torch.int32)  # unused
    args = (x, words, scales_t, g, bias if bias is not None else g, y, ws, cnt, m, n, k, x.stride(0), y.stride(0),
            cfg.split_k)
    common = dict(BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, HAS_BIAS=bias is not None, ASM=not interpreting(),
                  EVEN=k % cfg.block_k == 0 and n % cfg.block_n == 0, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
    if cfg.kind == "gemv":
        if m != 1:
            raise ValueError(f"w4a16: the gemv kernel takes one row of x, got M={m}")
        run(_w4a16_gemv_kernel, (tiles_n, cfg.split_k), *args, PREFETCH=bool(cfg.prefetch), **common)
        return y
    if cfg.kind == "gemvm":
        run(_w4a16_gemv_rows_kernel, (tiles_n, cfg.split_k, tiles_m), *args, BLOCK_M=cfg.block_m,
            PREFETCH=bool(cfg.prefetch), **common)
        return y
    common.update(BLOCK_M=cfg.block_m, DOT_FP32=interpreting(),
                  BF16X2=os.environ.get("FP4LAB_W4A16_SAFE_DEQUANT") != "1")
    if cfg.kind in ("dot", "dot1"):
        run(_w4a16_dot_kernel, (tiles_m * tiles_n, cfg.split_k), *args, GROUP_M=cfg.group_m,
            ONE_DOT=cfg.kind == "dot1", **common)
    elif cfg.kind in ("swap", "swap8"):
        run(_w4a16_swap_kernel, (tiles_m * tiles_n, cfg.split_k), *args, ONE_DOT=cfg.kind == "swap", **common)
    else:
        raise ValueError(f"w4a16: unknown config kind {cfg.kind!r}")
    return y


def _split_for(tiles: int, k: int, block_k: int, sms: int, waves: int = 2) -> int:
    """Smallest power-of-two split-K that gives `waves` programs per SM, keeping >= 1 K-step per split."""
    split = 1
    while tiles * split < waves * sms and k // (block_k * split * 2) >= 1:
        split *= 2
    return split


def _swap_specs(bm: int) -> list[tuple[int, int, int, int]]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) of the swapped kernel for a token tile of bm: the dequantized
    [BN, BK] tile and the [BN, bm] accumulator share the registers, and bm x BK x stages BF16 tokens
    the shared memory (all compile for sm_90 without spills, checked with `benchmarks/w4a16.py --sass`)."""
    if bm <= 64:
        # 64 x 64 tiles: half the registers of the dequantized tile, so more programs per SM (the Llama layer
        # at M = 8: 1.74x against 1.64x BF16). Fewer stages for 64 tokens: 4 stages take 89 KB of shared
        # memory, which holds an SM to two programs of 4 warps (9% achieved occupancy on Llama's qkv at
        # M = 64 by ncu). Both in w4a16.md, session 18.
        specs = [(64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 4), (128, 128, 8, 4), (64, 64, 4, 4), (64, 64, 4, 6)]
        # 128 x 64 at 64 tokens: a taller weight tile re-reads x from L2 half as often (Llama's gate_up at
        # M = 64: 60.6 -> 57.8 us, w4a16.md session 19)
        return specs + ([(64, 128, 4, 2), (64, 128, 4, 3), (128, 64, 4, 4)] if bm == 64 else [])
    if bm == 256:
        # only with 64-deep K steps: the 128-deep ones spill registers since the split-K slices of _epilogue.
        # Where it wins (w4a16.md, session 19): gate_up and down from M = 256, e.g. Llama's gate_up 173 -> 134 us
        return [(128, 64, 8, 3), (64, 64, 4, 3)]
    # 2 stages too: 3 stages of 128 tokens take 117-135 KB of shared memory, one program per SM. 64-deep K
    # steps: half the registers of the dequantized tile; 9-18% faster on the gate_up and down layers at
    # M = 128-256 (w4a16.md, session 19)
    return [(64, 128, 4, 3), (128, 128, 8, 3), (64, 128, 4, 2), (128, 128, 8, 2),
            (128, 64, 8, 4), (128, 64, 8, 3), (128, 64, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4)]


def candidates(m: int, n: int, k: int, sms: int = 132) -> list[Config]:
    """The configs timed for one (M, N, K); the first one is the untimed default (used under capture).
    Every config here compiles for sm_90 without register spills (checked with nvdisasm)."""
    out = []
    if m == 1:
        # Tall tiles first: K split across a program's warps, no split-K reduction through global memory
        # (the fastest for all four Llama-3-8B layers on an H100, benchmarks/w4a16.md v8), with and without
        # the register prefetch; then v6's split-K tiles, which still win where no tall tile divides K.
        # num_stages 1: Triton's software pipelining (2, 3) measured no faster.
        for bn, bk, warps in ((16, 2048, 16), (16, 2048, 8), (16, 1024, 8), (32, 512, 4), (32, 1024, 8),
                              (32, 2048, 16)):
            bk = min(bk, next_pow2(k))
            warps = max(1, min(warps, bn * bk // 8 // 128))  # at least 4 words per thread
            for split in (1, 2) if k >= 2 * bk else (1,):
                for prefetch in (1, 0):
                    out.append(Config("gemv", 1, bn, bk, split, warps, 1, prefetch=prefetch))
        for bn, bk in ((64, 256), (128, 256), (256, 128), (64, 512), (32, 256)):
            bk = min(bk, next_pow2(k))
            for waves in (2, 4, 8):
                out.append(Config("gemv", 1, bn, bk, _split_for(cdiv(n, bn), k, bk, sms, waves), 4, 1))
    if 1 < m <= 4:
        # the tall GEMV tiles for a few rows: a weight is decoded once for all of them (small-batch decode)
        for bn, bk, warps in ((16, 2048, 16), (16, 1024, 8), (32, 512, 4), (32, 1024, 8)):
            bk = min(bk, next_pow2(k))
            warps = max(1, min(warps, bn * bk // 8 // 128))
            for prefetch in (1, 0):
                out.append(Config("gemvm", min(next_pow2(m), 4), bn, bk, 1, warps, 1, prefetch=prefetch))
    # from 128 tokens also 64-token tiles: each weight tile is dequantized twice or more but read from
    # HBM once, and small layers get more programs; past 128 tokens also 256-token tiles, which dequantize
    # each weight tile half as often
    bms = [min(max(next_pow2(m), 16), 128)]
    if bms[0] == 128:
        bms.append(64)
    if m > 128:
        bms.append(256)
    for bm in bms:
        for bn, bk, warps, stages in _swap_specs(bm):
            bk = min(bk, next_pow2(k))
            for waves in (1, 2, 4):
                split = _split_for(cdiv(m, bm) * cdiv(n, bn), k, bk, sms, waves)
                out.append(Config("swap", bm, bn, bk, split, warps, stages))
    if 1 < m <= 16:  # v3's tensor-core configs, the fastest for M = 2..16 before the swapped kernel
        for bn in (64, 128):
            for waves in (1, 4):
                out.append(Config("dot", 16, bn, 128, _split_for(cdiv(n, bn), k, 128, sms, waves), 4, 3))
    if m > 256:
        for kind, bm, bn in (("dot", 128, 128), ("dot", 128, 256)):
            out.append(Config(kind, bm, bn, 128, 1, 8, 3))
    out.append(Config("cublas"))
    if m >= 128:
        out.append(Config("cublas_rows"))
    # split-K keeps one fp32 [M, N] slice per split (_epilogue): bound the workspace
    out = [c for c in out if c.split_k == 1 or c.split_k * m * n <= MAX_WORKSPACE_FLOATS]
    return list(dict.fromkeys(out))


_CHOICES: dict = {}
_CACHE_LOADED: set = set()


def _key(m, n, k, device, has_bias):
    return (m if m <= 16 else next_pow2(m), n, k, str(device), has_bias)


def _cache_path(device) -> str | None:
    """FP4LAB_W4A16_CACHE=file.json keeps the dispatcher's choices across processes (per GPU name)."""
    path = os.environ.get("FP4LAB_W4A16_CACHE")
    if not path:
        return None
    if path not in _CACHE_LOADED:
        _CACHE_LOADED.add(path)
        if os.path.exists(path):
            gpu = torch.cuda.get_device_name(device)
            with open(path) as f:
                for row in json.load(f):
                    if row["gpu"] == gpu:
                        _CHOICES[tuple(row["key"])] = Config(**row["config"])
    return path


def _cache_save(path, device) -> None:
    gpu = torch.cuda.get_device_name(device)
    rows = [dict(gpu=gpu, key=list(key), config=asdict(cfg)) for key, cfg in _CHOICES.items()]
    with open(path, "w") as f:
        json.dump(rows, f)


# weight copies of at least this many bytes in the tuning graph: more than an H100's 50 MB (H200: 60 MB)
# L2, so every call streams its weight from HBM as a decode step does
TUNE_ROTATE_BYTES = 128 * 2**20


def _tuning_copies(words, scales_t):
    """The weight plus enough clones of it to exceed L2 (fewer if free memory is short; at least 1)."""
    nbytes = words.numel() * 4 + scales_t.numel()
    want = max(2, min(16, -(-TUNE_ROTATE_BYTES // max(nbytes, 1))))
    free, _ = torch.cuda.mem_get_info(words.device)
    n = max(1, min(want, int(free * 0.25) // max(nbytes, 1) + 1))
    return [(words, scales_t)] + [(words.clone(), scales_t.clone()) for _ in range(n - 1)]


def _time(cfg, x, copies, g, bias, y, reps=5) -> float:
    """ms per call of `cfg` in CUDA-graph replay: one graph calls it once per weight copy (cold L2, no
    Python launch overhead, as decode with CUDA graphs runs it); median of `reps` replays.

    Eager CUDA-event timing of single launches, used before, charged launch gaps that graph replay
    does not pay (split-K, dequantize + cuBLAS's two launches) and picked slower paths
    (benchmarks/w4a16.md: llama3-8b o at M=64, 38.5 us chosen over 25 us)."""
    for w, s in copies:  # compile, allocate the split-K workspace, warm up
        _launch(cfg, x, w, s, g, bias, y)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w, s in copies:
            _launch(cfg, x, w, s, g, bias, y)
    graph.replay()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize()
    del graph
    return sorted(s.elapsed_time(e) for s, e in zip(starts, ends))[reps // 2] / len(copies)


def _precompile(cands, x, words, scales_t, g, bias, y) -> None:
    """Compile the candidates' kernels on a thread pool before timing them. Compiling is most of a first
    call's cost (25 s for M=1's candidates on an H100 with an empty Triton cache, benchmarks/w4a16.md
    session 17), and Triton's async compile mode (Triton >= 3.4) runs the compiles concurrently.
    A config that fails to compile is left for the timing loop to skip. FP4LAB_W4A16_PRECOMPILE=0 turns
    this off."""
    if os.environ.get("FP4LAB_W4A16_PRECOMPILE") == "0":
        return
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # pragma: no cover - older Triton: compiles happen one by one while timing
        return

    def warm(kernel, grid, *args, **kwargs):
        kernel.warmup(*args, grid=grid, **kwargs)

    todo = [c for c in cands if not c.dense]
    if len(todo) < 2:
        return
    with ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1, 16)) as pool, \
            AsyncCompileMode(pool, ignore_errors=True):
        for cfg in todo:
            _launch(cfg, x, words, scales_t, g, bias, y, run=warm)


def choose_config(x, words, scales_t, g, bias, y) -> Config:
    """Measured dispatch: time every candidate once per (M bucket, N, K) in CUDA-graph replay over
    rotating weight copies (cold L2) and keep the fastest.

    Tuning syncs the host, so it never happens during CUDA-graph capture (the untimed default is
    used then); warm up each shape once before capturing. FP4LAB_W4A16_KIND=gemv|dot|cublas
    restricts the candidates; FP4LAB_W4A16_DEBUG=1 prints the timings.
    """
    m, k = x.shape
    n = words.shape[1]
    key = _key(m, n, k, x.device, bias is not None)
    cache = _cache_path(x.device)
    if key in _CHOICES:
        return _CHOICES[key]
    cands = candidates(m, n, k, torch.cuda.get_device_properties(x.device).multi_processor_count)
    forced = os.environ.get("FP4LAB_W4A16_KIND")
    if forced:
        cands = [c for c in cands if c.kind == forced] or cands
    if torch.cuda.is_current_stream_capturing():
        # no timing inside a capture; no split-K either, whose workspace might have to be allocated now
        return dataclasses.replace(cands[0], split_k=1)
    _precompile(cands, x, words, scales_t, g, bias, y)
    copies = _tuning_copies(words, scales_t)
    times = {}
    for cfg in cands:
        try:
            times[cfg] = _time(cfg, x, copies, g, bias, y)
        except Exception as e:  # a config that does not compile or fit (shared memory) is skipped
            if os.environ.get("FP4LAB_W4A16_DEBUG"):
                print(f"w4a16: config {cfg} failed: {type(e).__name__}: {str(e)[:200]}")
    del copies
    if not times:
        raise RuntimeError(f"w4a16: no candidate config ran for M={m} N={n} K={k} (FP4LAB_W4A16_DEBUG=1 shows why)")
    best = min(times, key=times.get)
    if os.environ.get("FP4LAB_W4A16_DEBUG"):
        print(f"w4a16 tune M={m} N={n} K={k}: " + ", ".join(
            f"{c.kind}/{c.block_m}x{c.block_n}x{c.block_k}/s{c.split_k}/w{c.num_warps}/st{c.num_stages}"
            f"{'/pf' if c.prefetch else ''}:"
            f"{t * 1e3:.1f}us" for c, t in sorted(times.items(), key=lambda kv: kv[1])[:5]))
    _CHOICES[key] = best
    if cache:
        _cache_save(cache, x.device)
    return best


def _interpreter_config(m: int) -> Config:
    """Small tiles for the CPU interpreter; split-K 2 so that the workspace path is tested too."""
    if m == 1:
        return Config("gemv", 1, 16, 32, 2)
    return Config("dot", 16, 16, 128, 2)


def w4a16_matmul(x: torch.Tensor, words: torch.Tensor, scales_t: torch.Tensor, g: torch.Tensor,
                 bias: torch.Tensor | None = None, config: Config | None = None) -> torch.Tensor:
    """y[M, N] = x[M, Kp] @ W^T (+ bias), BF16 out, fp32 accumulation; W in the kernel layout
    (to_kernel_layout). `config` forces one way of computing it (tests, benchmarks); by default the
    measured dispatcher picks. Off-GPU without the interpreter: dequantize + matmul (the reference)."""
    _check(x, words, scales_t, g, bias)
    m, k = x.shape
    kw, n = words.shape
    if k != 8 * kw:
        raise ValueError(f"w4a16: x has K={k} but the weight has Kp={8 * kw}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if m == 0:
        return torch.empty(0, n, dtype=torch.bfloat16, device=x.device)
    if not x.is_cuda and not interpreting():
        out = x.float() @ dequantize_kernel_layout(words, scales_t, g, torch.float32)
        return (out if bias is None else out + bias.float()).to(torch.bfloat16)
    y = torch.empty(m, n, dtype=torch.bfloat16, device=x.device)
    if config is None:
        config = choose_config(x, words, scales_t, g, bias, y) if x.is_cuda else _interpreter_config(m)
    return _launch(config, x, words, scales_t, g, bias, y)


def w4a16_linear(x: torch.Tensor, words: torch.Tensor, scales_t: torch.Tensor, g: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear semantics for any leading dims: x [..., K] (K may be unpadded) -> [..., N] BF16."""
    kw, n = words.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    if x2.shape[1] != 8 * kw:
        x2 = torch.nn.functional.pad(x2, (0, 8 * kw - x2.shape[1]))
    return w4a16_matmul(x2, words, scales_t, g, bias).reshape(*lead, n)
