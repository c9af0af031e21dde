"""Triton device functions for the NVFP4/MXFP4 element and scale numerics.

Everything is bit arithmetic or exact float arithmetic (adds of a magic number, multiplies by a power
of two): the Triton interpreter's float8 casts are wrong when rounding carries into the exponent
(research/triton-interpreter.md), and these are exact on both the interpreter and the GPU. The one
cast used, fp32 -> bf16, is the GPU's RNE instruction and bit arithmetic in the interpreter (whose
cast truncates). The rules are those of fp4lab.formats (spec §1.2 for E2M1, §2.1 for E4M3, RHT from
§4.2).
"""
from __future__ import annotations

import triton
import triton.language as tl

from fp4lab.kernels._grid import interpreting

# module-level values used inside @triton.jit functions must be constexpr
FP32_MAX = tl.constexpr(3.4028234663852886e38)
RHT_SIGN_MASK = tl.constexpr(0xD7E8)  # bit i set where the RHT sign s_i is -1 (spec §4.2)
INTERPRETED = tl.constexpr(interpreting())  # kernels run by the CPU interpreter (TRITON_INTERPRET=1)
TWO_POW_126 = tl.constexpr(2.0**126)
TWO_POW_120 = tl.constexpr(2.0**120)


@triton.jit
def fdiv(a, b):
    # Triton's `/` on fp32 may lower to an approximate division on the GPU; the reference divides exactly
    return tl.math.div_rn(a, b)


@triton.jit
def recip_estimate(b):
    """1/b to about an ulp, the reciprocal that ptxas's div.rn.f32 fast path refines (MUFU.RCP, one
    Newton step), for fdiv_fast. b must be a normal float. The interpreter never uses it (fdiv_fast
    divides exactly there)."""
    if INTERPRETED:
        return 1.0 / b
    r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [b], dtype=tl.float32, is_pure=True, pack=1)
    return tl.fma(r, tl.fma(-b, r, 1.0), r)


@triton.jit
def fdiv_fast(a, b, y):
    """a / b rounded to nearest even, given y = recip_estimate(b) (or RN(1/b) for a constant b): the
    quotient a * y corrected by one fma with its exact remainder. This is ptxas's fast path for div.rn
    without the FCHK range test and branch around it, so the caller guarantees what FCHK would check:
    a, b and a / b normal and far from overflow (block_scales guards a whole tensor at once). The three
    per-block divisions took about 2 of the packed pass's 24 instructions per element (benchmarks/README.md,
    session 14). The interpreter divides exactly, which the fast path equals in that range."""
    if INTERPRETED:
        return fdiv(a, b)
    q = a * y
    return tl.fma(tl.fma(-b, q, a), y, q)


@triton.jit
def with_sign_of(m, y):
    """m >= 0 (fp32) with the sign bit of y (so -0.0 where m is 0 and y negative)."""
    return (m.to(tl.int32, bitcast=True) | (y.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def e2m1_clamp(a):
    """a = |y| clamped to [0, 6] with NaN -> 0: max and min return their non-NaN operand (on the GPU and in
    the interpreter alike), two instructions where a compare-and-select for NaN took three."""
    return tl.minimum(tl.maximum(a, 0.0), 6.0)


@triton.jit
def e2m1_magnitude(a):
    """E2M1 magnitude code 0..7 of |y| = a >= 0 by round-to-nearest-even with saturation at 6 (NaN -> 0).

    In code space the grid is evenly spaced: the code is RNE(f(a)) with f(a) = min(2a, a + 2, a/2 + 4)
    (slope 1 / grid step on [0, 2], [2, 4], [4, 6]; a tie lands on a half-integer and goes to the even
    code, which is the even mantissa). Each line is rounded to an integer by adding 2^23 (ulp 1, one
    rounding: the products by 2 and 1/2 are exact), and RNE is monotonic, so the min of the three rounded
    lines is RNE(f(a)): 7 float instructions (sm_90 SASS) where bit arithmetic on the exponent took 8;
    the packed quantize pass is bound by instruction issue (benchmarks/README.md, sessions 13-14).
    Checked against fp4lab.formats on every non-negative fp32 (tests/kernels/test_numerics_exhaustive.py).
    """
    a = e2m1_clamp(a)
    # tl.fma: the kernels compile without fp contraction, and the products are exact either way
    g = tl.minimum(tl.minimum(tl.fma(a, 2.0, 8388608.0), a + 8388610.0), tl.fma(a, 0.5, 8388612.0))
    return g.to(tl.int32, bitcast=True) & 7


@triton.jit
def e2m1_round(y):
    """y rounded to the E2M1 grid as fp32 (RNE, saturating at ±6, NaN -> ±0, sign of y kept): equal to
    e2m1_value(e2m1_encode(y, 0, False)) without forming the code, for the fake-quantize path.

    The grid step is 0.5 below 2, then a quarter of the binade's power of two; adding and subtracting
    2^22 times the larger of 1 and that power rounds a to a multiple of the step (RNE, exact: the
    magic number's ulp is the step).
    """
    a = e2m1_clamp(tl.abs(y))
    binade = (a.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    magic = tl.maximum(binade * 4194304.0, 4194304.0)
    return with_sign_of((a + magic) - magic, y)


@triton.jit
def e2m1_stochastic_bits(a, r):
    """Stochastic rounding of a = |y| on the E2M1 grid (saturating at 6, NaN -> 0) with 8 random bits r
    (0..255) per element, TE's software model of Blackwell's cvt.rs (nvfp4-spec.md §1.4): round up when
    p + r / 256 >= 1, p the fractional position between the two neighbours, so P(up) = floor(256 p) / 256.
    Returns (bits, small): the fp32 bits of the result, or of result + 1 where small (a < 1).

    From 1 up the grid keeps one mantissa bit and p is the 22 dropped bits: adding r at their top and
    truncating is that rule exactly. A carry moves to the next binade; grid points, whose dropped bits
    are 0, never move. Below 1 the grid is k * 0.5, the one-bit grid of a + 1 in [1, 2); a + 1 is
    rounded to 2^-23, which moves P(up) only where a is within 2^-24 of a multiple of 2^-9.
    """
    a = e2m1_clamp(a)
    small = a < 1.0
    f = tl.where(small, a + 1.0, a)
    bits = (f.to(tl.int32, bitcast=True) + (r << 14)) & -4194304
    return bits, small


@triton.jit
def e2m1_encode(y, r, STOCHASTIC: tl.constexpr):
    """E2M1 code (int32 0..15) of fp32 y: sign bit copied from y (so -0.0 -> 0x8, as the reference).
    STOCHASTIC: rounded with the element's 8 random bits r (e2m1_stochastic_bits)."""
    sign = (y.to(tl.int32, bitcast=True) >> 31) & 1
    if STOCHASTIC:
        bits, small = e2m1_stochastic_bits(tl.abs(y), r)
        # 1.0 -> code 2, 1.5 -> 3, ... (2 * (exponent - 127) + 2 + mantissa bit); a + 1 in [1, 2] -> 0..2
        mag = (bits >> 22) - tl.where(small, 254, 252)
    else:
        mag = e2m1_magnitude(tl.abs(y))
    return mag | (sign << 3)


@triton.jit
def e2m1_stochastic_round(y, r):
    """y stochastically rounded to the E2M1 grid as fp32 (sign of y kept, NaN -> ±0): equal to
    e2m1_value(e2m1_encode(y, r, True)) without forming the code, for the fake-quantize path."""
    bits, small = e2m1_stochastic_bits(tl.abs(y), r)
    g = bits.to(tl.float32, bitcast=True)
    return with_sign_of(tl.where(small, g - 1.0, g), y)  # exact: g is 1, 1.5 or 2 where small


@triton.jit
def e2m1_value(code):
    """fp32 value of an E2M1 code (int32 0..15); code 0x8 gives -0.0 like the reference table.

    The code's three magnitude bits, put at the bottom of an fp32 exponent and the top of its mantissa,
    read as a subnormal float (codes 0, 1) or a normal one with a biased exponent of 1..3; times 2^126
    that is the E2M1 value, exactly (the kernels' multiplies keep subnormals)."""
    bits = ((code & 7) << 22) | ((code & 8) << 28)
    return bits.to(tl.float32, bitcast=True) * TWO_POW_126


@triton.jit
def e4m3_encode(sf):
    """E4M3 byte (int32) of fp32 sf >= 0 by round-to-nearest-even, after clamping to 448; NaN -> 0x7F.

    On the GPU that is the conversion instruction (cvt.rn.satfinite.e4m3x2.f32), written as inline PTX
    with one value per instruction: Triton 3.6's own fp32 -> float8 cast, which pairs values, mixed up
    neighbouring scales in some tiles (2D with fp32 input, columnwise te; benchmarks/quantize.md). The
    interpreter's float8 casts are wrong where rounding carries into the exponent
    (research/triton-interpreter.md), so there it is bit arithmetic (what the GPU tests compare)."""
    if not INTERPRETED:
        code = tl.inline_asm_elementwise(
            "{ .reg .b16 t; cvt.rn.satfinite.e4m3x2.f32 t, 0f00000000, $1; cvt.u32.u16 $0, t; }",
            "=r,r", [sf], dtype=tl.int32, is_pure=True, pack=1)
        return code & 0x7F  # a NaN's sign dropped
    sf = tl.where(sf > 448.0, 448.0, sf)  # keeps NaN (a comparison with NaN is false)
    bits = sf.to(tl.int32, bitcast=True)
    # normal range: keep 3 mantissa bits, RNE over the 20 dropped ones; a carry bumps the exponent
    r = bits + 0x7FFFF + ((bits >> 20) & 1)
    normal = (((r >> 23) - 120) << 3) | ((r >> 20) & 7)
    # below 2^-6 the grid is k * 2^-9 (k = 0..8); adding 2^23 rounds sf * 512 to an integer (RNE)
    sub = (sf * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    code = tl.where(sf < 0.015625, sub, normal)
    return tl.where(sf != sf, 0x7F, code)


@triton.jit
def e4m3_value(code):
    """fp32 value of an E4M3 byte (int32 0..255); 0x7F and 0xFF are NaN.

    The byte's exponent and mantissa bits, put at the bottom of an fp32 exponent and the top of its
    mantissa, read as a float (subnormal for E4M3 subnormals); times 2^120 that is the E4M3 value,
    exactly (the kernels' multiplies keep subnormals), as e2m1_value does: about half the instructions of
    decoding exponent and mantissa apart, and no float8 cast (see e4m3_encode)."""
    v = ((code & 0x7F) << 20).to(tl.float32, bitcast=True) * TWO_POW_120
    v = (v.to(tl.int32, bitcast=True) | ((code & 0x80) << 24)).to(tl.float32, bitcast=True)  # -0.0 kept
    return tl.where((code & 0x7F) == 0x7F, float("nan"), v)


@triton.jit
def round_to_bf16(v):
    """fp32 -> nearest BF16 value (RNE, kept in fp32). On the GPU the conversion instruction rounds to
    nearest even (two instructions, or none before a BF16 store); the interpreter's fp32 -> bf16 cast
    truncates, so there the rounding is done by bit arithmetic (the numerics the GPU tests compare)."""
    if INTERPRETED:
        bits = v.to(tl.int32, bitcast=True)
        r = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return tl.where(v != v, v, r.to(tl.float32, bitcast=True))
    return v.to(tl.bfloat16).to(tl.float32)


@triton.jit
def rht_rows(t, BR: tl.constexpr, BC: tl.constexpr, ROUND: tl.constexpr = True):
    """Apply the RHT (t @ diag(s) @ H16 / 4) to each group of 16 along the last dim of the tile t [BR, BC];
    BF16-rounded result (TE rounds the transform output to BF16 before amax and quantization, spec
    §4.2), returned as fp32.

    Products with ±0.25 are exact; the 16 are summed in fp32 by a constant-geometry (Pease) Walsh-Hadamard
    butterfly: each stage pairs neighbours (sum first, difference second, in the next index bit), so
    after 4 stages the outputs are in H16's Sylvester order. 64 adds per group in registers: the
    tl.dot it replaces spent more time converting layouts than on the math (benchmarks/quantize.md).
    """
    n: tl.constexpr = BR * BC // 16
    j = tl.arange(0, 16)
    negative = (tl.full([16], RHT_SIGN_MASK, tl.int32) >> j) & 1
    g = tl.reshape(t, [n, 16]) * tl.where(negative == 1, -0.25, 0.25)[None, :]
    for _ in tl.static_range(4):
        a, b = tl.split(tl.reshape(g, [n, 8, 2]))
        g = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 2, 1)), [n, 16])
    if ROUND:  # ROUND=False: the fp32 sums, for an amax pass that rounds only its maximum (rounding is monotonic)
        g = round_to_bf16(g)
    return tl.reshape(g, [BR, BC])


@triton.jit
def tile_coords(idx, n_tiles_r, n_tiles_c, TILES_C_MAJOR: tl.constexpr):
    """(row tile, column tile) of tile number idx, column-major (neighbours share columns) or row-major."""
    if TILES_C_MAJOR:
        tr = idx % n_tiles_r
        tc = idx // n_tiles_r
    else:
        tr = idx // n_tiles_c
        tc = idx % n_tiles_c
    return tr, tc


@triton.jit
def half_block_coords(r0, c0, BR: tl.constexpr, BC: tl.constexpr):
    """Row [1, BR, 1] and column [BC/16, 1, 8] indices of the first halves of a rowwise tile's 16-blocks
    (column 16b + e, at [b, r, e]); the second halves are 8 columns on. A tile is loaded as these two
    halves and joined in registers, so one thread holds each whole block: loaded as one [.., 16] (or
    [2, .., 8]) tensor, Triton 3.6's coalescing pass spread a block over two lanes. Blocks come first
    because that pass breaks ties by dimension: lanes then run along a row and the code stores coalesce
    (benchmarks/quantize.md)."""
    r3 = r0 + tl.arange(0, BR)[None, :, None]
    c3 = c0 + tl.arange(0, BC // 16)[:, None, None] * 16 + tl.arange(0, 8)[None, None, :]
    return r3, c3


@triton.jit
def load_or_zero(ptrs, mask, EVICT_FIRST: tl.constexpr):
    """tl.load with zeros where masked, at L2 priority evict_first if EVICT_FIRST (Triton wants the policy as
    a literal, so the flag picks between two loads)."""
    if EVICT_FIRST:
        v = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
    else:
        v = tl.load(ptrs, mask=mask, other=0.0)
    return v


@triton.jit
def load_tile(x_ptr, stride_r, stride_c, R, C, r0, c0,
              BR: tl.constexpr, BC: tl.constexpr, RHT: tl.constexpr, VEC_R: tl.constexpr,
              WHOLE_BLOCKS: tl.constexpr = False, EVICT_FIRST: tl.constexpr = False):
    """Tile [BR, BC] of the logical view t[r, c] = x[r * stride_r + c * stride_c] as fp32, zero outside.

    VEC_R > 0 (columnwise, stride_r == 1) caps the run of contiguous r the compiler sees at VEC_R, so
    each thread loads VEC_R features (8 bytes for VEC_R=4 in bf16) and keeps a whole 16-block along c
    in its registers: the block max then needs no shuffle and the threads of a warp read consecutive
    addresses. EVICT_FIRST: load with L2 priority evict_first (a tensor read once that L2 cannot keep
    anyway: its lines are then replaced before other kernels' lines; see `evict_first` in amax.py).
    """
    if WHOLE_BLOCKS:
        r3, c3 = half_block_coords(r0, c0, BR, BC)
        p = x_ptr + r3.to(tl.int64) * stride_r + c3.to(tl.int64) * stride_c
        lo = load_or_zero(p, (r3 < R) & (c3 < C), EVICT_FIRST)
        hi = load_or_zero(p + 8 * stride_c, (r3 < R) & (c3 + 8 < C), EVICT_FIRST)
        t = tl.reshape(tl.permute(tl.join(lo, hi), (1, 0, 3, 2)), [BR, BC])
    else:
        i = tl.arange(0, BR)
        if VEC_R > 0:
            i = (i // VEC_R) * VEC_R + i % VEC_R
        r = r0 + i
        c = c0 + tl.arange(0, BC)
        ptrs = x_ptr + r[:, None].to(tl.int64) * stride_r + c[None, :].to(tl.int64) * stride_c
        t = load_or_zero(ptrs, (r[:, None] < R) & (c[None, :] < C), EVICT_FIRST)
    if RHT:
        return rht_rows(t.to(tl.float32), BR, BC)
    return t.to(tl.float32)


@triton.jit
def sr_random_bits(seed, seed_ptr, r0, c0, Cp, BR: tl.constexpr, BC: tl.constexpr, STOCHASTIC: tl.constexpr,
                   SEED_FROM_PTR: tl.constexpr):
    """The tile's SR random bits (zeros, unused, for round-to-nearest), keyed by `seed` or by the seed
    state that seed_ptr points at (read on the device: fp4lab.formats.seeds)."""
    r = tl.zeros([BR, BC], dtype=tl.int32)
    if STOCHASTIC:
        if SEED_FROM_PTR:
            r = random_tile(tl.load(seed_ptr), r0, c0, Cp, BR, BC)
        else:
            r = random_tile(seed, r0, c0, Cp, BR, BC)
    return r


@triton.jit
def random_tile(seed, r0, c0, Cp, BR: tl.constexpr, BC: tl.constexpr):
    """8 random bits (int32 0..255) per element of the tile at (r0, c0) of a [*, Cp] grid (Cp and BC multiples
    of 16), a function of the element's position only. One Philox call gives 128 bits and covers 16
    neighbouring elements of a row; Philox was most of SR's cost (8 bits per element is also what
    Blackwell's cvt.rs consumes, nvfp4-spec.md §1.4)."""
    rows = r0 + tl.arange(0, BR)
    groups = c0 // 16 + tl.arange(0, BC // 16)
    w0, w1, w2, w3 = tl.randint4x(seed, rows[:, None] * (Cp // 16) + groups[None, :])
    w = tl.join(tl.join(w0, w1), tl.join(w2, w3)).to(tl.int32, bitcast=True)  # [BR, BC/16, 2, 2]
    b = tl.join(tl.join(w & 0xFF, (w >> 8) & 0xFF), tl.join((w >> 16) & 0xFF, (w >> 24) & 0xFF))
    return tl.reshape(b, [BR, BC])


@triton.jit
def reduce_amax_bits(src_ptr, n_src, N_SRC: tl.constexpr):
    """fp32 max of n_src non-negative values stored as int32 bit patterns (NaN's bits beat Inf's, so a
    NaN anywhere propagates)."""
    i = tl.arange(0, N_SRC)
    bits = tl.load(src_ptr + i, mask=i < n_src, other=0)
    return tl.max(bits, axis=0).to(tl.float32, bitcast=True)
