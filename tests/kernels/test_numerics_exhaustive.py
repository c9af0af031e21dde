"""Exhaustive and boundary checks of the kernels' cheapest numerics: the E2M1 encode and the fast division.

The E2M1 encode (numerics.e2m1_magnitude) runs on every fp32 whose rounding is not trivial (every float
in [2^-3, 8): below 0.25 the code is 0, from 6 up it saturates) plus a random sample of all bit patterns,
under the interpreter; on a GPU it runs on all 2^31 non-negative bit patterns (it was also checked that
way in numpy, 0 mismatches, when it was written). fdiv_fast's constant-divisor form is checked in numpy
with a true fp32 fma; its GPU form (rcp.approx + Newton step) against div.rn on the GPU.
"""
import pytest
import torch
import triton
import triton.language as tl

from fp4lab import formats, kernels
from fp4lab.kernels.numerics import e2m1_magnitude, fdiv, fdiv_fast, recip_estimate

from ._helpers import check_fake, check_quantize, spread_input


@triton.jit
def _magnitude_kernel(bits_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(bits_ptr + offs, mask=mask, other=0).to(tl.float32, bitcast=True)
    tl.store(out_ptr + offs, e2m1_magnitude(a).to(tl.int8), mask=mask)


@triton.jit
def _div_kernel(a_ptr, b_ptr, fast_ptr, exact_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=1.0)
    b = tl.load(b_ptr + offs, mask=mask, other=1.0)
    tl.store(fast_ptr + offs, fdiv_fast(a, b, recip_estimate(b)), mask=mask)
    tl.store(exact_ptr + offs, fdiv(a, b), mask=mask)


def _magnitudes(bits: torch.Tensor, block: int) -> torch.Tensor:
    out = torch.empty(bits.shape, dtype=torch.int8, device=bits.device)
    _magnitude_kernel[(triton.cdiv(bits.numel(), block),)](bits, out, bits.numel(), BLOCK=block)
    return out


def _reference_magnitudes(bits: torch.Tensor) -> torch.Tensor:
    return (formats.round_to_e2m1(bits.view(torch.float32)) & 7).to(torch.int8)


def _assert_magnitudes(bits, got):
    want = _reference_magnitudes(bits.cpu())
    bad = (got.cpu() != want).nonzero().flatten()
    assert bad.numel() == 0, [(hex(int(bits[i])), int(got[i]), int(want[i])) for i in bad[:5]]


@pytest.mark.slow
def test_e2m1_magnitude_every_float_that_rounds():
    start, stop = 0x3E000000, 0x41000000  # 0.125 .. 8, 6 binades, 50M floats
    step = 1 << 23
    for lo in range(start, stop, step):
        bits = torch.arange(lo, lo + step, dtype=torch.int32)
        _assert_magnitudes(bits, _magnitudes(bits, 1 << 20))


def test_e2m1_magnitude_random_bit_patterns_and_specials():
    g = torch.Generator().manual_seed(7)
    bits = torch.randint(0, 2**31, (1 << 20,), generator=g, dtype=torch.int64).to(torch.int32)
    special = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 1e30, float("inf"), float("nan"),
                            1e-45, 1.1754943508222875e-38, 3.4028234663852886e38])
    bits = torch.cat([bits, special.view(torch.int32), torch.tensor([0x7FFFFFFF, 0x7F800001], dtype=torch.int32)])
    _assert_magnitudes(bits, _magnitudes(bits, 1 << 16))


def test_fdiv_fast_by_constant_six_is_exact_above_the_subnormal_range():
    """fdiv_fast(a, 6, RN(1/6)) == RN(a / 6) for every fp32 a of the binades checked; the correction only
    depends on a's significand away from the exponent range's ends, so the middle binades stand for all
    of [2^-123, 2^127] (the bottom and top binades are checked too)."""
    np = pytest.importorskip("numpy")
    fma = pytest.importorskip("triton._C.libtriton").interpreter.fma_fp32
    c, six = np.float32(0.1666666716337204), np.float32(6.0)
    for exponent in (-123, -122, -1, 0, 1, 2, 126, 127):
        lo = (exponent + 127) << 23
        a = np.arange(lo, lo + (1 << 23), dtype=np.uint32).view(np.float32)
        q = a * c
        got = fma(fma(-q, np.full_like(a, six), a), np.full_like(a, c), q)
        want = (a.astype(np.float64) / 6.0).astype(np.float32)  # a / 6 is never an fp32 tie: no double rounding
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), exponent


@pytest.mark.parametrize("scale_exp", [-100, -61, -59, 0, 59, 61, 100])
@pytest.mark.parametrize("order", ["torchao", "te"])
def test_scales_on_both_sides_of_the_fast_division_range(scale_exp, order):
    """block_scales divides fast only for a tensor amax in [2^-60, 2^60]; fp32 inputs around both ends."""
    x = spread_input(64, 128, dtype=torch.float32, seed=abs(scale_exp)) * 2.0**scale_exp
    check_quantize(x, "rowwise", order)
    check_fake(x, "columnwise", order)


@pytest.mark.gpu
def test_e2m1_magnitude_every_nonnegative_float_on_gpu():
    step = 1 << 28
    for lo in range(0, 1 << 31, step):
        bits = torch.arange(lo, lo + step, dtype=torch.int32, device="cuda")
        got = _magnitudes(bits, 1024)
        a = bits.view(torch.float32)
        # the reference's bin counting, on the GPU (round_to_e2m1 itself allocates per comparison)
        want = ((a > 0.25).to(torch.int8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5)
                + (a > 5.0)).to(torch.int8)
        assert torch.equal(got, want), lo


@pytest.mark.gpu
def test_fdiv_fast_matches_div_rn_on_gpu():
    """The quotients block_scales takes fdiv_fast for: d / g (g log-uniform over the guarded range),
    (1/g) / s for every positive E4M3 s, and 1 / (s * s_dec) (te order)."""
    g = torch.Generator(device="cuda").manual_seed(3)
    n = 1 << 24

    def log_uniform(lo, hi):
        return torch.exp2(torch.rand(n, generator=g, device="cuda", dtype=torch.float64) * (hi - lo) + lo).float()

    e4m3 = torch.arange(1, 127, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn).float()
    g_ = log_uniform(-72, 49)
    cases = [
        # d / g: block_scales clamps d to 512 g, and a quotient below 2^-10 gives scale byte 0 whatever its
        # last bits, so the range that matters is [2^-30, 512]
        ((g_.double() * log_uniform(-30, 9).double()).float(), g_),
        (log_uniform(-49, 72), e4m3[torch.randint(0, 126, (n,), generator=g, device="cuda")]),  # (1/g) / s
        (torch.ones(n, device="cuda"), log_uniform(-81, 58)),  # 1 / (s * s_dec)
    ]
    for a, b in cases:
        fast, exact = torch.empty_like(a), torch.empty_like(a)
        _div_kernel[(triton.cdiv(n, 1024),)](a, b, fast, exact, n, BLOCK=1024)
        bad = (fast.view(torch.int32) != exact.view(torch.int32)).nonzero().flatten()
        assert bad.numel() == 0, [(a[i].item(), b[i].item(), fast[i].item(), exact[i].item()) for i in bad[:4]]
        assert torch.equal(exact, (a.double() / b.double()).float())


@pytest.mark.gpu
@pytest.mark.parametrize("order", ["torchao", "te"])
def test_fast_division_guard_on_gpu(order):
    """Tensor amax on both sides of the fast range, a given global amax far below the data (the d clamp),
    and a NaN block under a given finite global amax (its scale byte must stay NaN)."""
    for scale_exp in (-100, -61, -60, 0, 60, 61, 100):
        x = spread_input(512, 1024, dtype=torch.float32, seed=5, device="cuda") * 2.0**scale_exp
        check_quantize(x, "rowwise", order)
        check_quantize(x, "columnwise", order)
    x = spread_input(512, 1024, seed=6, device="cuda")
    check_quantize(x, "rowwise", order, global_amax=torch.tensor(2.0**-50))
    x[7, 32:48] = float("nan")
    q = kernels.quantize_nvfp4(x, global_amax=torch.tensor(4.0, device="cuda"), scale_order=order)
    assert q.scales.view(torch.uint8)[7, 2].item() & 0x7F == 0x7F
