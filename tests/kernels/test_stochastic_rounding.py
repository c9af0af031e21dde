"""Stochastic rounding in the kernels: unbiased, grid points fixed, saturation, same seed -> same output."""
import math

import pytest
import torch
import triton
import triton.language as tl

from fp4lab import formats
from fp4lab.kernels import dequantize_nvfp4_triton, mxfp4_fake_triton, nvfp4_triton
from fp4lab.kernels.numerics import e2m1_encode, e2m1_stochastic_round


def _sr_input(v, rows=64, blocks=8):
    """amax 2688 (so the global scale is 1) and blocks [6, v x 15] whose scale is exactly 1.0 (spec §6.6)."""
    x = torch.full((rows, 16 * blocks), v)
    x[:, ::16] = 6.0
    x[0, 0] = 2688.0
    return x


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("v", [1.25, 1.1, 3.3])
def test_unbiased_within_3_sigma(v):
    x = _sr_input(v)
    y = nvfp4_triton(x, rounding="stochastic", generator=_gen(1), fake=True, out_dtype=torch.float32)
    sample = y.reshape(-1, 16)[:, 1:][1:]  # drop block 0 of row 0 (its max is 2688)
    lo, hi = {1.25: (1.0, 1.5), 1.1: (1.0, 1.5), 3.3: (3.0, 4.0)}[v]
    assert set(sample.unique().tolist()) <= {lo, hi}
    p = math.floor(256 * (v - lo) / (hi - lo)) / 256  # TE's 8-bit model (spec §6.6)
    sigma = (hi - lo) * math.sqrt(p * (1 - p) / sample.numel())
    want = lo + (hi - lo) * p
    assert abs(sample.mean().item() - want) < 3 * sigma, (sample.mean().item(), want, sigma)


def test_grid_points_fixed_and_saturation():
    grid = torch.tensor(formats.E2M1_VALUES.tolist())
    x = torch.zeros(33, 32)
    x[:32, :16] = grid  # block max 6 -> scale 1.0: every element is on the grid
    x[:32, 16] = 6.2  # scale e4m3(6.2/6) = 1.0: 6.2 scales to 6.2 and must saturate to 6
    x[:32, 17:32] = -6.0
    x[32, 0] = -2688.0  # amax 2688 -> global scale 1
    for seed in range(3):
        y = nvfp4_triton(x, rounding="stochastic", generator=_gen(seed), fake=True)
        assert torch.equal(y[:32, :16], x[:32, :16])
        assert (y[:32, 16] == 6.0).all() and (y[:32, 17:] == -6.0).all()


def test_same_seed_same_output_and_fake_matches_dequantize():
    x = torch.randn(32, 64, generator=_gen(10))
    a = nvfp4_triton(x, rounding="stochastic", generator=_gen(5))
    b = nvfp4_triton(x, rounding="stochastic", generator=_gen(5))
    c = nvfp4_triton(x, rounding="stochastic", generator=_gen(6))
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)
    f = nvfp4_triton(x, rounding="stochastic", generator=_gen(5), fake=True)
    assert torch.equal(f, dequantize_nvfp4_triton(a, x.dtype))
    m1 = mxfp4_fake_triton(x, rounding="stochastic", generator=_gen(5), columnwise=True)
    m2 = mxfp4_fake_triton(x, rounding="stochastic", generator=_gen(5), columnwise=True)
    assert torch.equal(m1, m2)


@triton.jit
def _sr_probe_kernel(y_ptr, code_ptr, value_ptr, N_R: tl.constexpr):
    # program i rounds y[i] with each of the N_R values of the random bits
    r = tl.arange(0, N_R)
    y = tl.load(y_ptr + tl.program_id(0) + r * 0)
    out = tl.program_id(0) * N_R + r
    tl.store(code_ptr + out, e2m1_encode(y, r, True))
    tl.store(value_ptr + out, e2m1_stochastic_round(y, r))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_sr_probability_over_all_random_bits(device):
    """Each y, rounded with every one of the 2^8 values of its random bits: only the two grid neighbours
    come out, and exactly floor(256 p) of them round up (TE's model of cvt.rs, spec §1.4), p being y's
    fractional position (below 1 measured on fp32(|y| + 1), as the kernel rounds it); codes and values
    agree; NaN -> ±0, beyond 6 saturates."""
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    g = torch.Generator().manual_seed(21)
    near = torch.tensor(grid[1:]).view(torch.int32)[:, None] + torch.tensor([-1, 1], dtype=torch.int32)
    # 1.1 and 2.6 (p = 0.2, 0.6) are the spec's examples: 51 and 153 of 256; k / 512 +- 1 ulp sit at the
    # edges of the 1/256 steps of p below 1
    edges = (torch.arange(1, 512, 37) / 512.0).view(torch.int32)[:, None] + torch.tensor([-1, 0, 1], dtype=torch.int32)
    y = torch.cat([torch.tensor(grid), torch.rand(40, generator=g) * 6.5, torch.rand(8, generator=g) * 1e-3,
                   near.flatten().view(torch.float32), edges.flatten().view(torch.float32),
                   torch.tensor([1e-40, 5.9999, 6.0001, 1.75, 0.25, 2**-17, 1.1, 2.6, 5.0 + 2**-8])])
    y = torch.cat([y, -y[::7], torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf")])])
    n_r = 1 << 8
    codes = torch.empty(y.numel() * n_r, dtype=torch.int32, device=device)
    values = torch.empty(y.numel() * n_r, dtype=torch.float32, device=device)
    _sr_probe_kernel[(y.numel(),)](y.to(device), codes, values, N_R=n_r)
    codes, values = codes.view(-1, n_r).cpu(), values.view(-1, n_r).cpu()
    assert torch.equal(formats.e2m1_to_float(codes.to(torch.uint8)).view(torch.int32), values.view(torch.int32))
    grid_t = torch.tensor(grid, dtype=torch.float64)
    for i, v in enumerate(y.tolist()):
        sign = math.copysign(1.0, v)
        if math.isnan(v):
            assert set(codes[i].tolist()) == {8 if sign < 0 else 0}
            continue
        a = min(abs(v), 6.0)
        k = int((grid_t <= a).nonzero().max())
        lo, hi = grid[k], grid[min(k + 1, 7)]
        assert set(values[i].abs().unique().tolist()) <= {lo, hi}, (v, values[i].unique())
        assert (values[i].view(torch.int32) < 0).all() == (sign < 0), v
        a_k = float(torch.tensor(a + 1.0, dtype=torch.float32)) - 1.0 if a < 1 else a
        p = 0.0 if hi == lo else (a_k - lo) / (hi - lo)
        n_up = int((values[i].abs() == hi).sum()) if hi != lo else 0
        assert n_up == math.floor(256 * p), (v, n_up, p)


def test_sr_error_not_below_rne():
    x = torch.randn(64, 64, generator=_gen(11))
    q = nvfp4_triton(x)
    rne = nvfp4_triton(x, fake=True)
    sr = nvfp4_triton(x, rounding="stochastic", generator=_gen(0), fake=True)
    assert (sr - x).abs().mean() >= (rne - x).abs().mean()
    # SR moves a value to one of its two grid neighbours, so it is within one grid step (at most
    # 2 * the block's decode scale) of the RNE result; the scales themselves are always RNE
    step = (2 * q.block_decode_scales()).repeat_interleave(16, -1)
    assert ((sr - rne).abs() <= step * (1 + 2**-20)).all()  # slack: 6f - 4f is rounded in fp32


@pytest.mark.parametrize("kernel", ["nvfp4", "mxfp4"])
def test_seed_state_is_read_on_the_device_and_advanced(kernel, monkeypatch):
    """A seed state (one int64 on the data's device) gives the numbers of the same seed passed by value,
    moves by SEED_STEP per call, and nothing about it is read on the host (CUDA-graph safe)."""
    from fp4lab.formats import seeds
    from fp4lab.kernels import nvfp4 as nv

    x = torch.randn(48, 64, generator=_gen(12))
    run = {"nvfp4": lambda g: nvfp4_triton(x, columnwise=True, rht=True, rounding="stochastic", generator=g,
                                           fake=True),
           "mxfp4": lambda g: mxfp4_fake_triton(x, columnwise=True, rounding="stochastic", generator=g)}[kernel]
    state = seeds.new_seed_state(1234)
    a = run(state)
    assert int(state) == 1234 + seeds.SEED_STEP
    b = run(state)
    assert int(state) == 1234 + 2 * seeds.SEED_STEP and not torch.equal(a, b)
    state.fill_(1234)
    assert torch.equal(run(state), a)  # same state, same numbers
    # the seed read through the pointer is the seed passed by value
    real = nv._stochastic_seed
    monkeypatch.setattr(nv, "_stochastic_seed", lambda r, g, d: (1234, None) if r == "stochastic" else real(r, g, d))
    if kernel == "mxfp4":
        import fp4lab.kernels.mxfp4 as mx
        monkeypatch.setattr(mx, "_stochastic_seed", nv._stochastic_seed)
    assert torch.equal(run(None), a)


def test_seed_state_errors_and_reference_fallback():
    from fp4lab import kernels
    from fp4lab.formats import seeds

    x = torch.randn(16, 32)
    with pytest.raises(ValueError, match="int64"):
        nvfp4_triton(x, rounding="stochastic", generator=torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="int64"):
        nvfp4_triton(x, rounding="stochastic", generator=torch.zeros(2, dtype=torch.int64))
    # off CUDA the public wrappers run the reference, seeded from the state (which advances the same way)
    state = seeds.new_seed_state(7)
    got = kernels.fake_quantize_nvfp4(x, rounding="stochastic", generator=state)
    ref = formats.quantize_nvfp4(x, rounding="stochastic", generator=_gen(7)).dequantize(x.dtype)
    assert torch.equal(got, ref) and int(state) == 7 + seeds.SEED_STEP
    got = kernels.fake_quantize_mxfp4(x, rounding="stochastic", generator=state)
    ref = formats.quantize_mxfp4(x, scale_rule="rceil", rounding="stochastic",
                                 generator=_gen(7 + seeds.SEED_STEP)).dequantize(x.dtype)
    assert torch.equal(got, ref) and int(state) == 7 + 2 * seeds.SEED_STEP
