"""Global amax on the GPU in one pass, without a host sync.

A persistent grid reduces the tensor to one max per program, as the int32 bit pattern of a non-negative
fp32 (integer order equals float order there, and NaN's bits exceed Inf's, so NaN propagates like
torch.amax). Each program folds its max into a per-stream scratch word with an atomic max and counts
itself in; the last one to arrive writes the result and zeroes the scratch for the next call, so the
quantize kernels read one value. Where no scratch can be made (while a CUDA graph is captured before
this stream has one), each program writes its own partial max instead and every reader reduces them.
"""
from __future__ import annotations

import threading

import torch
import triton
import triton.language as tl

from fp4lab.kernels._grid import cdiv, next_pow2
from fp4lab.kernels._launch import launch
from fp4lab.kernels.numerics import load_or_zero, load_tile, reduce_amax_bits, rht_rows, round_to_bf16, tile_coords

# 8192 elements per program and iteration, 4 warps: each thread keeps eight 16-byte loads in flight.
# In CUDA-graph replay on an H100 that took 49.2 us for 8192x8192 bf16 against 52.6 us with 8 warps
# (the best of 27 block/warp/program shapes was 48.1 us; results/amax-launch-probe-h100-2026-11-23.json).
FLAT_BLOCK = 8192
FLAT_WARPS = 4
MAX_PARTS = 1024


_PROPS: dict = {}


def _props(device: torch.device):
    # cached: get_device_properties costs ~20 us of host time per call, and a QuantLinear step asks a
    # dozen times (the layer is host-bound at small sizes)
    p = _PROPS.get(device.index)
    if p is None:
        p = _PROPS[device.index] = torch.cuda.get_device_properties(device)
    return p


def n_programs(n_units: int, device: torch.device) -> int:
    sms = _props(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(n_units, 4 * sms, MAX_PARTS))


def evict_first(nbytes: int, device: torch.device, passes: int = 1) -> bool:
    """Whether a pass over `nbytes` of input should load at L2 priority evict_first: when the input is larger
    than `passes` times L2, so that no later pass can find it there.

    Why: a pass over a tensor larger than L2 otherwise evicts the lines other kernels left, dirty ones
    included, and their write-back competes with its own reads. With the hint its own lines go first.
    H100, after do_bench's flush (an L2 full of dirty lines): quantize 8192x8192 136.4 -> 131.4 us and the
    amax pass of 8192x4096 37.0 -> 31.6 us; in CUDA-graph replay (clean L2) quantize 8192x8192 +1 us,
    RHT + columnwise quantize 8192x8192 170 -> 157 us, fake-quantize 8192x4096 77.7 -> 74.0 us
    (benchmarks/results/quantize-evict-probe-h100-2026-11-23.json). `passes` = 2 for a pass that follows
    an amax pass over the same input: below 2x L2 it still finds part of it there.
    """
    return device.type == "cuda" and nbytes > passes * _props(device).L2_cache_size


@triton.jit
def _fold(parts_ptr, scratch_ptr, m, m2, pid, nprog, TWO: tl.constexpr, ONE: tl.constexpr):
    """Write this program's max (and a second one with TWO): into parts[pid] (and parts[nprog + pid]), or,
    with ONE, into the scratch maxima, the last program to arrive moving them to parts[0] (and parts[1])."""
    if ONE:
        # one thread issues each scalar atomic, in program order: the release of the count orders the
        # max before it, and the last program's acquire sees every program's max
        tl.atomic_max(scratch_ptr, m, sem="relaxed")
        if TWO:
            tl.atomic_max(scratch_ptr + 1, m2, sem="relaxed")
        count = tl.atomic_add(scratch_ptr + 2, 1, sem="acq_rel")
        if count == nprog - 1:
            tl.store(parts_ptr, tl.atomic_xchg(scratch_ptr, 0))
            if TWO:
                tl.store(parts_ptr + 1, tl.atomic_xchg(scratch_ptr + 1, 0))
            tl.atomic_xchg(scratch_ptr + 2, 0)
    else:
        tl.store(parts_ptr + pid, m)
        if TWO:
            tl.store(parts_ptr + nprog + pid, m2)


@triton.jit
def _amax_flat_kernel(x_ptr, n, parts_ptr, scratch_ptr, BLOCK: tl.constexpr, ONE: tl.constexpr,
                      EVICT_FIRST: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(pid * BLOCK, n, nprog * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = load_or_zero(x_ptr + offs, offs < n, EVICT_FIRST).to(tl.float32)
        acc = tl.maximum(acc, tl.abs(v).to(tl.int32, bitcast=True))
    m = tl.max(acc, axis=0)
    _fold(parts_ptr, scratch_ptr, m, m, pid, nprog, False, ONE)


@triton.jit
def _amax_rht_kernel(x_ptr, stride_r, stride_c, R, C, parts_ptr, scratch_ptr, n_tiles_r, n_tiles_c,
                     BR: tl.constexpr, BC: tl.constexpr, VEC_R: tl.constexpr, TILES_C_MAJOR: tl.constexpr,
                     PLAIN: tl.constexpr, ONE: tl.constexpr, EVICT_FIRST: tl.constexpr):
    # amax of the BF16-rounded RHT output, tile by tile (the quantizer recomputes the transform); tiles
    # in x's memory order, so the quantizer's reversed walk finds the last ones in L2. PLAIN: also max |t|
    # from the same read (a layer needs both: the rowwise operand and the columnwise Wgrad one), stored
    # first, the RHT maxima after it
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    # maxima kept per row (the RHT runs along the row, in one thread's registers): a [BR, BC] accumulator
    # took 64 registers per thread each and left room for only 2 programs per SM
    acc = tl.zeros([BR], dtype=tl.int32)
    acc_h = tl.zeros([BR], dtype=tl.int32)
    for tile in range(pid, n_tiles_r * n_tiles_c, nprog):
        tr, tc = tile_coords(tile, n_tiles_r, n_tiles_c, TILES_C_MAJOR)
        t = load_tile(x_ptr, stride_r, stride_c, R, C, tr * BR, tc * BC, BR, BC, False, VEC_R, False, EVICT_FIRST)
        if PLAIN:
            acc = tl.maximum(acc, tl.max(tl.abs(t).to(tl.int32, bitcast=True), axis=1))
        h = rht_rows(t, BR, BC, False)
        acc_h = tl.maximum(acc_h, tl.max(tl.abs(h).to(tl.int32, bitcast=True), axis=1))
    # BF16 rounding (RNE) is monotonic and symmetric, so the max of the rounded |RHT| values the quantizer
    # sees is the rounded max: one rounding per program instead of one per element
    m_h = round_to_bf16(tl.max(acc_h, axis=0).to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True)
    if PLAIN:
        _fold(parts_ptr, scratch_ptr, tl.max(acc, axis=0), m_h, pid, nprog, True, ONE)
    else:
        _fold(parts_ptr, scratch_ptr, m_h, m_h, pid, nprog, False, ONE)


@triton.jit
def _amax_finish_kernel(parts_ptr, n_parts, out_ptr, N_PARTS: tl.constexpr):
    tl.store(out_ptr, reduce_amax_bits(parts_ptr, n_parts, N_PARTS))


_SCRATCH: dict = {}


def _scratch(device: torch.device):
    """The zeroed int32 [4] scratch of the amax passes on the current stream (two running maxima and a
    program count; every pass leaves it zeroed), or None during a CUDA-graph capture that would have to
    create it (its zeroing would run only at replay). One per stream: passes on one stream never overlap,
    and passes on two streams use two scratches. The one case that shares a scratch between concurrent
    passes: a CUDA graph captured on stream A and replayed on stream B while eager passes run on A."""
    # the raw stream handle: torch.cuda.current_stream() builds a Stream object, several us of host time
    key = (device.type, device.index, torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0)
    s = _SCRATCH.get(key)
    if s is None:
        if device.type != "cuda":
            s = torch.zeros(4, dtype=torch.int32, device=device)
        elif torch.cuda.is_current_stream_capturing():
            return None
        else:
            s = _zeros_outside_graph_pools(device)
        _SCRATCH[key] = s
    return s


def _zeros_outside_graph_pools(device: torch.device) -> torch.Tensor:
    """A zeroed int32 [4] allocated by another thread: torch.compile's CUDA-graph warm-up routes this
    thread's allocations into its graph pool, which must not keep a tensor alive after the graph."""
    out = []

    def make():
        with torch.cuda.device(device):
            t = torch.zeros(4, dtype=torch.int32, device=device)
            torch.cuda.current_stream(device).synchronize()  # zeroed before any stream uses it
            out.append(t)

    worker = threading.Thread(target=make)
    worker.start()
    worker.join()
    if not out:
        raise RuntimeError(f"amax: could not allocate the amax scratch on {device}")
    return out[0]


def amax_partials(x: torch.Tensor) -> torch.Tensor:
    """int32 partial maxima of |x| (fp32 bit patterns) of a contiguous tensor: one value (the max), or
    one per program where no scratch is available (see the module docstring)."""
    n = x.numel()
    n_prog = n_programs(cdiv(max(n, 1), FLAT_BLOCK), x.device)
    scratch = _scratch(x.device)
    parts = torch.empty(1 if scratch is not None else n_prog, dtype=torch.int32, device=x.device)
    launch(_amax_flat_kernel, (n_prog,), x, n, parts, parts if scratch is None else scratch, BLOCK=FLAT_BLOCK,
           ONE=scratch is not None, EVICT_FIRST=evict_first(n * x.element_size(), x.device), num_warps=FLAT_WARPS)
    return parts


def _rht_partials(x, stride_r, stride_c, R, C, BR, BC, vec_r, tiles_c_major, plain: bool) -> torch.Tensor:
    n_tiles_r, n_tiles_c = cdiv(R, BR), cdiv(C, BC)
    n = n_programs(max(n_tiles_r * n_tiles_c, 1), x.device)
    scratch = _scratch(x.device)
    parts = torch.empty((2 if plain else 1) * (1 if scratch is not None else n), dtype=torch.int32, device=x.device)
    launch(_amax_rht_kernel, (n,), x, stride_r, stride_c, R, C, parts, parts if scratch is None else scratch,
           n_tiles_r, n_tiles_c, BR=BR, BC=BC, VEC_R=vec_r, TILES_C_MAJOR=tiles_c_major,
           PLAIN=plain, ONE=scratch is not None, EVICT_FIRST=evict_first(R * C * x.element_size(), x.device),
           num_warps=4, enable_fp_fusion=False)
    return parts


def amax_partials_rht(x: torch.Tensor, stride_r: int, stride_c: int, R: int, C: int,
                      BR: int, BC: int, vec_r: int, tiles_c_major: bool) -> torch.Tensor:
    """int32 partial maxima of |RHT(t)| for the logical view t [R, C] of x (RHT along C)."""
    return _rht_partials(x, stride_r, stride_c, R, C, BR, BC, vec_r, tiles_c_major, False)


def amax_pair_partials(x: torch.Tensor, stride_r: int, stride_c: int, R: int, C: int,
                       BR: int, BC: int, vec_r: int, tiles_c_major: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 partial maxima of |t| and of |RHT(t)| for the logical view t [R, C] of x, in one pass."""
    parts = _rht_partials(x, stride_r, stride_c, R, C, BR, BC, vec_r, tiles_c_major, True)
    n = parts.numel() // 2
    return parts[:n], parts[n:]


def finish_amax(parts: torch.Tensor) -> torch.Tensor:
    out = torch.empty((), dtype=torch.float32, device=parts.device)
    launch(_amax_finish_kernel, (1,), parts, parts.numel(), out, N_PARTS=next_pow2(parts.numel()))
    return out


def amax_triton(x: torch.Tensor) -> torch.Tensor:
    """The Triton path of `amax` on any device (CPU tensors run in the interpreter)."""
    return finish_amax(amax_partials(x.contiguous()))


def amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as an fp32 0-dim tensor on x's device (NaN if any element is NaN); no host sync on CUDA."""
    if x.is_cuda:
        return amax_triton(x)
    return x.float().abs().amax() if x.numel() else torch.zeros((), dtype=torch.float32, device=x.device)
