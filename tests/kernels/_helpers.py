"""Shared inputs and reference comparisons for the kernel tests (reference always runs on the CPU)."""
from __future__ import annotations

import dataclasses

import torch

from fp4lab import formats
from fp4lab.formats._checks import pad_to_multiple
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


class RhtReference:
    """The reference RHT of t, and what a kernel summing the same 16 products in fp32 may give instead.

    The reference rounds the exact sum to fp32, then to BF16. An fp32 sum (in any order) is exact when
    every partial sum fits fp32's 24 bits, i.e. when sum|terms| < 2^24 * the finest quantum among the
    terms. Otherwise it lands within 16 * 2^-24 * sum|terms| of the exact sum, which can show two ways:
    - `near`: the exact sum is that close to a BF16 rounding midpoint, so the kernel may round to the
      other BF16 neighbour, `other`;
    - `free`: the bound reaches 1/256 of the value (cancellation), so the kernel's value may be anything
      that small. Such a value is below 2^-12 of its group's sum|x|/4, hence below 2^-10 of the group's
      amax (||out||_2 = ||x||_2): it quantizes to a zero FP4 code, whose sign is then free.
    """

    def __init__(self, t):
        self.ref = formats.random_hadamard_16(t, nonfinite="propagate")
        groups = pad_to_multiple(t.double(), 16, -1).unflatten(-1, (-1, 16))
        h = formats.rht_matrix(dtype=torch.float64)
        exact = (groups @ h).flatten(-2)
        total = (groups.abs() @ h.abs()).flatten(-2)  # sum|terms|, the same for a group's 16 outputs
        bits = {torch.bfloat16: 8, torch.float16: 11}.get(t.dtype, 24)
        exp = torch.frexp(groups / 4).exponent
        quantum = torch.where(groups != 0, torch.ldexp(torch.ones_like(groups), exp - bits), torch.inf)
        finest = quantum.amin(-1, keepdim=True).expand(groups.shape).flatten(-2)
        inexact = (total >= 2.0**24 * finest) & torch.isfinite(exact)
        bound = torch.where(inexact, 16 * 2.0**-24 * total + 2.0**-24 * exact.abs(), 0.0)
        self.free = inexact & (256 * bound >= exact.abs())
        ref_bits = self.ref.view(torch.int16).int()
        mag, sign = ref_bits & 0x7FFF, ref_bits & 0x8000
        away = exact.abs() > self.ref.double().abs()  # the other neighbour is one BF16 step from zero
        self.other = (sign | torch.where(away, mag + 1, (mag - 1).clamp(min=0))).to(torch.int16).view(torch.bfloat16)
        midpoint = (self.ref.double() + self.other.double()) / 2
        self.near = inexact & ~self.free & ((exact - midpoint).abs() <= bound)

    def amax_candidates(self):
        """Every global amax some choice of roundings on the near elements gives (the reference's first)."""
        a = self.ref.float().abs()
        lo = torch.where(self.near, torch.minimum(a, self.other.float().abs()), a).amax()
        hi = torch.where(self.near, torch.maximum(a, self.other.float().abs()), a)
        extra = hi[self.near & (hi > lo)].unique().tolist()
        return [a.amax()] + [v for v in [lo, *map(torch.tensor, extra)] if v != a.amax()]

    def operands(self, block, limit=1024):
        """Operands covering every rounding choice within each block: choice c gives the k-th near element
        of every `block`-long block its other rounding iff bit k of c is set."""
        near = pad_to_multiple(self.near, block, -1).unflatten(-1, (-1, block))
        rank = (near.cumsum(-1) - 1).clamp(min=0).flatten(-2)[..., : self.near.shape[-1]]
        n = int(near.sum(-1).max()) if near.numel() else 0
        assert 2**n <= limit, f"{n} near ties in one block: too many rounding choices to enumerate"
        return [torch.where(self.near & ((c >> rank) & 1).bool(), self.other, self.ref) for c in range(2**n)]


def _clear_free_code_signs(codes, free):
    nib = formats.unpack_e2m1(codes)
    return formats.pack_e2m1(torch.where(free & (nib & 0x7 == 0), nib & 0x7, nib))


def _clear_free_value_signs(v, free):
    return torch.where(free & (v == 0), torch.zeros_like(v), v)


def _pick_per_block(got, candidates, block):
    """The expected tensor: per block along the last dim, the first candidate that got matches bitwise."""
    if len(candidates) == 1 or got.shape != candidates[0].shape:
        return candidates[0]

    def blocks(a):
        a = a.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()])
        return pad_to_multiple(a, block, -1).unflatten(-1, (-1, block))
    g = blocks(got)
    expected = blocks(candidates[0]).clone()
    for c in candidates[1:]:
        cb = blocks(c)
        use = (g == cb).all(-1) & ~(g == expected).all(-1)
        expected[use] = cb[use]
    return expected.flatten(-2)[..., : got.shape[-1]].view(got.dtype)


def _quantize_each(operands, block_2d, order, **kw):
    g = kw.get("generator")
    state = g.get_state() if g is not None else None
    refs = []
    for o in operands:  # each candidate draws the same stochastic-rounding randoms
        if g is not None:
            g.set_state(state)
        refs.append(formats.quantize_nvfp4(o, block_2d=block_2d, scale_order=order, nonfinite="propagate", **kw))
    return refs


# On the GPU the RHT's 16-term sums run on tensor cores, whose fp32 accumulation may round differently
# from the reference's exact sum by more than RhtReference allows for, so a handful of bytes in a million
# may differ there. Everywhere else the tolerance is zero: the interpreter sums in fp32.
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
    return q, assert_matches_reference(q, x, variant, order, **kw)


def assert_matches_reference(q, x, variant, order="torchao", **kw):
    """q is x's `variant` quantization, bit-exact (up to RhtReference's allowances); returns the reference."""
    columnwise, rht, block_2d = VARIANTS[variant]
    t = reference_operand(x, columnwise, False)
    if not rht:
        r = _quantize_each([t], block_2d, order, **kw)[0]
        assert_same_nvfp4(q, r)
        return r
    R = RhtReference(t)
    plain = _quantize_each([R.ref], block_2d, order, **kw)[0]
    if R.near.any() and "global_amax" not in kw:
        amax = q.global_amax.cpu()
        assert any(torch.equal(amax, a) for a in R.amax_candidates()), (amax, R.amax_candidates())
        kw = dict(kw, global_amax=amax)  # the kernel's amax, from one of the allowed roundings
    refs = _quantize_each(R.operands(16), block_2d, order, **kw)

    def joined(t):  # per 16-element block: its 8 code bytes (free signs cleared), then its scale byte
        codes = _clear_free_code_signs(t.codes.cpu(), R.free).unflatten(-1, (-1, 8))
        return torch.cat([codes, t.scales.cpu().view(torch.uint8)[..., None]], -1).flatten(-2)
    pick = _pick_per_block(joined(q), [joined(c) for c in refs], 9).unflatten(-1, (-1, 9))
    q = dataclasses.replace(q, codes=_clear_free_code_signs(q.codes.cpu(), R.free))
    r = dataclasses.replace(refs[0], codes=pick[..., :8].flatten(-2).contiguous(),
                            scales=pick[..., 8].contiguous().view(torch.float8_e4m3fn))
    assert_same_nvfp4(q, r, rht_tol(x, rht))
    return plain


def check_fake(x, variant, order="torchao", out_dtype=None, **kw):
    columnwise, rht, block_2d = VARIANTS[variant]
    y = nvfp4_triton(x, columnwise=columnwise, rht=rht, block_2d=block_2d, scale_order=order, fake=True,
                     out_dtype=out_dtype, **kw)
    t = reference_operand(x, columnwise, False)
    out = out_dtype or x.dtype
    if not rht:
        ref = _quantize_each([t], block_2d, order, **kw)[0].dequantize(x.dtype).to(out)
        assert_bitwise_equal(y, ref)
        return y
    R = RhtReference(t)
    amaxes = R.amax_candidates() if R.near.any() and "global_amax" not in kw else [None]
    for i, amax in enumerate(amaxes):  # the output does not show the amax: try each allowed one
        kwa = kw if amax is None else dict(kw, global_amax=amax)
        refs = [r.dequantize(torch.bfloat16).to(out) for r in _quantize_each(R.operands(16), block_2d, order, **kwa)]
        try:
            _compare_fake(y, refs, R.free, 16, rht_tol(x, rht))
            return y
        except AssertionError:
            if i == len(amaxes) - 1:
                raise


def check_mxfp4(x, rule, columnwise=False, rht=False):
    y = mxfp4_fake_triton(x, scale_rule=rule, columnwise=columnwise, rht=rht)
    t = reference_operand(x, columnwise, False)
    R = RhtReference(t) if rht else None
    operands = R.operands(32) if rht else [t]
    refs = [formats.quantize_mxfp4(o, scale_rule=rule, nonfinite="propagate").dequantize(o.dtype).to(x.dtype)
            for o in operands]
    _compare_fake(y, refs, R.free if rht else None, 32, rht_tol(x, rht))


def _compare_fake(y, refs, free, block, tol):
    y = y.cpu()
    if free is not None:
        y = _clear_free_value_signs(y, free)
        refs = [_clear_free_value_signs(r, free) for r in refs]
    assert_bitwise_equal(y, _pick_per_block(y, refs, block), tol)
