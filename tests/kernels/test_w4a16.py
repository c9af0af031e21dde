"""W4A16 NVFP4 matmul against dequantize + float64 matmul.

Tolerance: the kernel accumulates exact products (e2m1 * e4m3 is exact in BF16) in fp32 and rounds
the output to BF16 once, so |y - ref| <= 1 BF16 ulp of ref (2^-8 relative) plus fp32 summation error
(K * 2^-24 relative to sum |x * w|). The CPU interpreter truncates fp32 -> bf16 instead of rounding
(checked here), so the bound is 2 ulps (2^-7) there.
"""
import os

import pytest
import torch

from fp4lab.formats.e2m1 import E2M1_VALUES
from fp4lab.kernels import w4a16
from fp4lab.kernels.w4a16 import (
    Config, dequantize_kernel_layout, dequantize_rows, from_kernel_layout, to_kernel_layout, w4a16_linear,
    w4a16_matmul,
)

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def random_weight(n, k, gen, device=DEV):
    """Random codes, random valid E4M3 scale bytes (0x00..0x7E: zero and subnormal scales included),
    and code 1 (0.5, the subnormal pitfall) forced into every row."""
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
    codes[:, 0] = 0x11
    codes[:, -1] = 0x91
    sbytes = torch.randint(0x20, 0x50, (n, k // 16), dtype=torch.uint8, generator=gen)
    sbytes[::7, 0] = 0  # zero scales
    sbytes[1::5, -1] = 0x03  # subnormal E4M3
    g = torch.rand((), generator=gen) * 0.01 + 1e-3
    return codes.to(device), sbytes.view(torch.float8_e4m3fn).to(device), g.float().to(device)


def reference(x, codes, scales, g, bias=None):
    """float64 y and sum |x * w| (computed on the tensors' device)."""
    table = E2M1_VALUES.double().to(codes.device)
    vals = table[torch.stack((codes & 0xF, codes >> 4), -1).flatten(-2).long()]
    w = (vals.unflatten(-1, (-1, 16)) * scales.double().unsqueeze(-1)).flatten(-2) * g.double()
    ref = x.double() @ w.T
    bound = x.double().abs() @ w.abs().T
    if bias is not None:
        ref = ref + bias.double()
    return ref.cpu(), bound.cpu()


def assert_close(y, x, codes, scales, g, bias=None, weight_in_bf16=False):
    """weight_in_bf16: the "cublas" paths round the dense weight to BF16 first (2^-9 relative per weight)."""
    ref, bound = reference(x, codes, scales, g, bias)
    ulp = 2.0 ** (-7 if INTERP else -8)
    tol = ulp * ref.abs() + (x.shape[1] * 2.0 ** -24 + (2.0 ** -8 if weight_in_bf16 else 0.0)) * bound + 1e-30
    err = (y.cpu().double() - ref).abs()
    assert torch.isfinite(y).all()
    assert (err <= tol).all(), f"max err/tol {(err / tol).max():.3f} at {divmod(int((err / tol).argmax()), y.shape[1])}"


CPU_CONFIGS = [
    Config("gemv", 1, 16, 32, 1),
    Config("gemv", 1, 16, 64, 2),
    Config("gemv", 1, 16, 32, 1, prefetch=1),  # register prefetch: 2-3 K steps, the last re-reads its tiles
    Config("gemv", 1, 16, 32, 2, prefetch=1),
    Config("gemv", 1, 16, 64, 4, prefetch=1),  # K = 64: three empty splits (their clamped prefetch stays in range)
    Config("gemv", 1, 16, 128, 1, 4, prefetch=1),  # a tall tile past K: masked loads only
    Config("gemvm", 4, 16, 32, 1, prefetch=1),  # M = 17: five row tiles, the last masked
    Config("gemvm", 2, 16, 64, 2),
    Config("gemvm", 4, 16, 128, 1, 4),
    Config("dot", 16, 16, 128, 1),
    Config("dot", 16, 32, 128, 2),
    Config("dot1", 16, 16, 128, 2),
    Config("swap", 16, 16, 128, 2),
    Config("swap", 16, 16, 64, 4),  # the 64 x 64 tile's K step; split-K over 4 slices (K = 96: one empty)
    Config("swap8", 16, 16, 128, 1),
    Config("cublas"),
    Config("cublas_rows"),
    None,  # the default path
]


def dense(cfg):
    return cfg is not None and cfg.dense


def _cfg_id(c):
    return "default" if c is None else (f"{c.kind}-{c.block_m}x{c.block_n}x{c.block_k}-s{c.split_k}"
                                        + ("-pf" if c.prefetch else ""))


@pytest.mark.parametrize("cfg", CPU_CONFIGS, ids=_cfg_id)
@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (1, 40, 96), (3, 40, 96), (17, 32, 64)])
def test_matches_reference(cfg, m, n, k):
    if cfg is not None and cfg.kind == "gemv" and m > 1:
        pytest.skip("the gemv kernel takes one row")
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    codes, scales, g = random_weight(n, k, gen)
    x = torch.randn(m, k, generator=gen).bfloat16().to(DEV)
    bias = torch.randn(n, generator=gen).bfloat16().to(DEV) if m == 3 else None
    y = w4a16_matmul(x, *to_kernel_layout(codes, scales), g, bias, config=cfg)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert_close(y, x, codes, scales, g, bias, weight_in_bf16=dense(cfg))


@pytest.mark.parametrize("cfg", [Config("gemv", 1, 16, 32, 2), Config("dot", 16, 16, 128, 2),
                                 Config("swap", 16, 16, 128, 2)], ids=["gemv", "dot", "swap"])
def test_code_one_is_half(cfg):
    """Every weight 0.5 (code 1) with scale 1 and g 1: y = 0.5 * sum(x), exactly; a flush-to-zero bug gives 0."""
    n, k = 16, 64
    codes = torch.full((n, k // 2), 0x11, dtype=torch.uint8, device=DEV)
    codes[1] = 0x99  # -0.5
    scales = torch.ones(n, k // 16, device=DEV).to(torch.float8_e4m3fn)
    g = torch.ones((), device=DEV)
    x = torch.ones(1, k, dtype=torch.bfloat16, device=DEV)
    y = w4a16_matmul(x, *to_kernel_layout(codes, scales), g, config=cfg).float().cpu()
    assert y[0, 0] == 32.0 and y[0, 1] == -32.0 and (y[0, 2:] == 32.0).all()


def test_zero_scales_and_nan_scale():
    n, k = 32, 64
    gen = torch.Generator().manual_seed(1)
    codes, scales, g = random_weight(n, k, gen)
    sb = scales.view(torch.uint8).clone()
    sb[:16] = 0  # zero scale: those rows decode to 0 whatever the codes
    sb[20, 1] = 0x7F  # NaN scale propagates to that row only
    scales = sb.view(torch.float8_e4m3fn)
    x = torch.randn(2, k, generator=gen).bfloat16().to(DEV)
    for cfg in (Config("dot", 16, 16, 128, 2), Config("dot1", 16, 16, 128, 1), Config("swap", 16, 16, 128, 2),
                Config("cublas_rows"), None):
        y = w4a16_matmul(x, *to_kernel_layout(codes, scales), g, config=cfg).float().cpu()
        assert (y[:, :16] == 0).all()
        assert torch.isnan(y[:, 20]).all()
        others = torch.ones(n, dtype=torch.bool)
        others[20] = False
        assert torch.isfinite(y[:, others]).all()


@pytest.mark.parametrize("prefetch", [0, 1])
def test_zero_and_nan_scale_gemv(prefetch):
    gen = torch.Generator().manual_seed(11)
    codes, scales, g = random_weight(32, 64, gen)
    sb = scales.view(torch.uint8).clone()
    sb[:8] = 0
    sb[9, 2] = 0xFF  # the negative NaN byte is a NaN scale too
    x = torch.randn(1, 64, generator=gen).bfloat16().to(DEV)
    y = w4a16_matmul(x, *to_kernel_layout(codes, sb.view(torch.float8_e4m3fn)), g,
                     config=Config("gemv", 1, 16, 32, 2, prefetch=prefetch)).float().cpu()
    assert (y[0, :8] == 0).all() and torch.isnan(y[0, 9]) and torch.isfinite(y[0, 10:]).all()


def test_scale_codes_every_e4m3_byte():
    """encode_scales / decode_scales round-trip every non-negative E4M3 byte, and the kernels' one-op
    decodes of a code (BF16 bits c * 16 + 0x7000, fp32 bits (c << 20) + 0x35000000) are the scale times
    2^110 and 2^-8 exactly (NaN for a NaN scale)."""
    b = torch.arange(0, 0x80, dtype=torch.uint8)
    c = w4a16.encode_scales(b.view(torch.float8_e4m3fn))
    assert torch.equal(w4a16.decode_scales(c).view(torch.uint8), b)
    v = b.view(torch.float8_e4m3fn).double()
    bf = (c.int() * 16 + 0x7000).short().view(torch.bfloat16).double()
    f32 = ((c.int() << 20) + 0x35000000).view(torch.float32).double()
    finite = b != 0x7F
    nz = finite & (b != 0)
    assert torch.equal(bf[nz], v[nz] * 2.0 ** 110) and torch.equal(f32[nz], v[nz] * 2.0 ** -8)
    assert c[0] == 0 and c[0x7F] == w4a16.SCALE_CODE_NAN and torch.isnan(bf[0x7F])
    assert int(c[nz].min()) >= 32 and int(c[nz].max()) <= 175  # the range the docstring promises
    assert w4a16.encode_scales(torch.tensor([0x80, 0xFF], dtype=torch.uint8).view(torch.float8_e4m3fn)).tolist() == [0, 255]
    bad = torch.full((3, 2), 0x38, dtype=torch.uint8)
    bad[2, 1] = 0xB8  # -1.0
    with pytest.raises(ValueError, match=r"negative E4M3 scale -1.0 at \[2, 1\]"):
        w4a16.encode_scales(bad.view(torch.float8_e4m3fn))


def test_kernel_layout_round_trip_and_zero_blocks():
    """Codes survive to/from_kernel_layout, except in zero-scale blocks, which come back as zeros (they
    dequantize to 0 either way)."""
    gen = torch.Generator().manual_seed(12)
    codes, scales, g = random_weight(24, 64, gen, device="cpu")
    words, scales_t = to_kernel_layout(codes, scales)
    back, back_s = from_kernel_layout(words, scales_t)
    zero = (scales.view(torch.uint8) == 0).repeat_interleave(8, dim=1)
    assert zero.any() and torch.equal(back[~zero], codes[~zero]) and (back[zero] == 0).all()
    assert torch.equal(back_s.view(torch.uint8), scales.view(torch.uint8))


def test_split_k_workspace_is_left_clean():
    """Two calls in a row give identical results: the counters reset themselves, and the last program of
    a tile sums the splits' partials in split order, whatever order the programs finish in."""
    gen = torch.Generator().manual_seed(2)
    codes, scales, g = random_weight(32, 128, gen)
    x = torch.randn(5, 128, generator=gen).bfloat16().to(DEV)
    cfg = Config("dot", 16, 16, 128, 4)
    a = w4a16_matmul(x, *to_kernel_layout(codes, scales), g, config=cfg)
    b = w4a16_matmul(x, *to_kernel_layout(codes, scales), g, config=cfg)
    assert_close(a, x, codes, scales, g)
    assert torch.equal(a, b)


def test_dequantize_matches_formats_bit_exact():
    from fp4lab.formats.nvfp4 import quantize_nvfp4

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(48, 72, generator=gen) * 3  # K = 72: padded to 80
    w[0, :16] = 0
    t = quantize_nvfp4(w)
    g = t.global_decode_scale().reshape(())
    words, scales_t = to_kernel_layout(t.codes.to(DEV), t.scales.to(DEV))
    assert all(torch.equal(a.cpu(), b) for a, b in zip(from_kernel_layout(words, scales_t), (t.codes, t.scales)))
    ours = dequantize_kernel_layout(words, scales_t, g.to(DEV), torch.float32)
    assert ours.shape == (80, 48)
    assert torch.equal(ours.cpu().t()[:, :72], t.dequantize(torch.float32))


@pytest.mark.parametrize("n,k", [(48, 80), (70, 144), (64, 2048 + 16)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dequantize_rows_is_the_transpose(n, k, dtype):
    """W [N, K] (transposed on chip in Triton, also under the interpreter) equals W^T [K, N] transposed,
    bit for bit (on the GPU; fp32 under the interpreter): N and K/8 not multiples of the tile, zero and
    NaN scales."""
    gen = torch.Generator().manual_seed(n + k)
    codes, scales, g = random_weight(n, k, gen)
    sb = scales.view(torch.uint8).clone()
    sb[3, 2] = 0x7F
    words, scales_t = to_kernel_layout(codes, sb.view(torch.float8_e4m3fn))
    rows = dequantize_rows(words, scales_t, g, dtype)
    assert rows.shape == (n, k) and rows.dtype == dtype and rows.is_contiguous()
    ref = dequantize_kernel_layout(words, scales_t, g, dtype).t()
    # the interpreter truncates fp32 -> bf16 where torch rounds (module docstring): 1 ulp there
    tol = 2.0 ** -7 if INTERP and dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(rows.float(), ref.float(), rtol=tol, atol=0, equal_nan=True)
    assert torch.isnan(rows[3, 32:48]).all() and torch.isfinite(rows[3, :32]).all()


def test_against_quantize_nvfp4_unpadded_k():
    """A real quantized weight with K = 40 (padded to 48): w4a16_linear pads x and matches dequantize()."""
    from fp4lab.formats.nvfp4 import quantize_nvfp4

    gen = torch.Generator().manual_seed(4)
    w = torch.randn(24, 40, generator=gen)
    t = quantize_nvfp4(w)
    x = torch.randn(2, 3, 40, generator=gen).bfloat16()
    g = t.global_decode_scale().reshape(())
    y = w4a16_linear(x.to(DEV), *to_kernel_layout(t.codes.to(DEV), t.scales.to(DEV)), g.to(DEV)).cpu()
    ref = x.double() @ t.dequantize(torch.float64).T
    assert y.shape == (2, 3, 24)
    assert ((y.double() - ref).abs() <= 2 ** -7 * ref.abs() + 1e-6).all()


def test_empty_and_bad_input():
    gen = torch.Generator().manual_seed(5)
    codes, scales, g = random_weight(16, 32, gen)
    words, scales_t = to_kernel_layout(codes, scales)
    assert w4a16_matmul(torch.empty(0, 32, dtype=torch.bfloat16, device=DEV), words, scales_t, g).shape == (0, 16)
    with pytest.raises(TypeError, match="bfloat16"):
        w4a16_matmul(torch.randn(2, 32, device=DEV), words, scales_t, g)
    with pytest.raises(ValueError, match="K=48"):
        w4a16_matmul(torch.randn(2, 48, device=DEV).bfloat16(), words, scales_t, g)
    with pytest.raises(TypeError, match="scales"):
        w4a16_matmul(torch.randn(2, 32, device=DEV).bfloat16(), words, scales_t[:1], g)
    with pytest.raises(TypeError, match="int32"):
        w4a16_matmul(torch.randn(2, 32, device=DEV).bfloat16(), codes, scales, g)
    with pytest.raises(ValueError, match="multiple of 16"):
        w4a16_matmul(torch.randn(2, 8, device=DEV).bfloat16(), words[:1], scales_t[:0], g)
    with pytest.raises(ValueError, match="multiple of 16"):
        to_kernel_layout(codes[:, :3], scales)


def test_candidates_are_valid():
    """Every config the dispatcher may time is launchable: gemv only for M = 1, power-of-two split-K with
    at least one K step per split, and the cuBLAS fallbacks always last (both layouts from M = 128)."""
    for m in (1, 2, 7, 16, 64, 200, 4096):
        for n, k in ((4096, 4096), (28672, 4096), (4096, 14336), (48, 64)):
            cands = w4a16.candidates(m, n, k)
            fallbacks = 2 if m >= 128 else 1
            assert [c.kind for c in cands[-fallbacks:]] == ["cublas", "cublas_rows"][:fallbacks]
            assert len(set(cands)) == len(cands)
            for c in cands[:-fallbacks]:
                assert c.kind in ("gemv", "gemvm", "dot", "dot1", "swap", "swap8") and (c.kind != "gemv" or m == 1)
                assert c.kind != "gemvm" or (1 < m <= 4 and c.block_m >= m and c.block_m in (2, 4))
                assert c.split_k & (c.split_k - 1) == 0 and c.split_k * c.block_k <= max(k, c.block_k)


# ----------------------------------------------------------------------------------- GPU, large shapes

GPU_CONFIGS = [Config("gemv", 1, 256, 128, 4), Config("gemv", 1, 512, 64, 1),
               Config("gemv", 1, 16, 2048, 1, 16, 1, prefetch=1), Config("gemv", 1, 32, 512, 2, 4, 1, prefetch=1),
               Config("gemv", 1, 16, 1024, 1, 8, 1), Config("gemvm", 2, 32, 512, 1, 4, 1, prefetch=1),
               Config("gemvm", 4, 16, 2048, 1, 16, 1), Config("dot", 16, 64, 128, 4),
               Config("dot", 64, 128, 128, 2), Config("dot", 128, 128, 128, 1, 8, 3), Config("dot1", 16, 128, 128, 2),
               Config("dot1", 128, 256, 64, 1, 8, 4), Config("swap", 16, 64, 128, 4, 4, 4),
               Config("swap", 64, 128, 256, 2, 8, 3), Config("swap", 256, 128, 128, 1, 8, 2),
               Config("swap", 16, 64, 64, 8, 4, 6), Config("swap", 64, 64, 128, 4, 4, 2),
               Config("swap", 128, 128, 64, 1, 8, 4), Config("swap", 128, 64, 64, 2, 4, 3),
               Config("swap", 256, 128, 64, 1, 8, 3), Config("swap", 256, 64, 64, 4, 4, 3),
               Config("swap", 64, 128, 64, 1, 4, 4), Config("swap", 128, 128, 64, 2, 4, 4),
               Config("swap8", 32, 64, 128, 2, 4, 3), Config("cublas"), Config("cublas_rows"), None]


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", GPU_CONFIGS, ids=lambda c: "dispatch" if c is None else
                         f"{c.kind}-{c.block_m}x{c.block_n}x{c.block_k}-s{c.split_k}" + ("-pf" if c.prefetch else ""))
@pytest.mark.parametrize("m", [1, 2, 3, 77, 300])
def test_gpu_large(cfg, m):
    if cfg is not None and cfg.kind == "gemv" and m > 1:
        pytest.skip("the gemv kernel takes one row")
    n, k = 4096, 4096 + 512
    gen = torch.Generator().manual_seed(m)
    codes, scales, g = random_weight(n, k, gen)
    x = torch.randn(m, k, generator=gen).bfloat16().cuda()
    y = w4a16_matmul(x, *to_kernel_layout(codes, scales), g, config=cfg)
    if cfg is None:
        cfg = w4a16._CHOICES[w4a16._key(m, n, k, x.device, False)]
    assert_close(y, x, codes, scales, g, weight_in_bf16=dense(cfg))


@pytest.mark.gpu
def test_gpu_odd_n_and_bias():
    n, k = 1000, 1024 + 16
    gen = torch.Generator().manual_seed(9)
    codes, scales, g = random_weight(n, k, gen)
    bias = torch.randn(n, generator=gen).bfloat16().cuda()
    for m in (1, 5, 33):
        x = torch.randn(m, k, generator=gen).bfloat16().cuda()
        y = w4a16_matmul(x, *to_kernel_layout(codes, scales), g, bias)
        cfg = w4a16._CHOICES[w4a16._key(m, n, k, x.device, True)]
        assert_close(y, x, codes, scales, g, bias, weight_in_bf16=dense(cfg))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8])
def test_gpu_precompile_leaves_nothing_to_compile(m):
    """The dispatcher compiles every candidate on a thread pool before timing them: launching them
    afterwards must not compile anything (Triton calls jit_cache_hook only on a cache miss)."""
    import triton
    if not hasattr(getattr(triton, "knobs", None), "runtime") or not hasattr(triton.knobs.runtime, "jit_cache_hook"):
        pytest.skip("Triton < 3.4: no async compile mode")
    n, k = 1040, 1024 + 48  # a shape no other test compiles for
    gen = torch.Generator().manual_seed(m)
    codes, scales, g = random_weight(n, k, gen)
    words, scales_t = to_kernel_layout(codes, scales)
    x = torch.randn(m, k, generator=gen).bfloat16().cuda()
    y = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    g = g.cuda()
    cands = [c for c in w4a16.candidates(m, n, k) if not dense(c)]
    w4a16._precompile(cands, x, words, scales_t, g, None, y)
    misses = []
    old = triton.knobs.runtime.jit_cache_hook
    triton.knobs.runtime.jit_cache_hook = lambda *a, **kw: misses.append(kw.get("key", a[:1])) and False
    try:
        for cfg in cands:
            w4a16._launch(cfg, x, words, scales_t, g, None, y)
        torch.cuda.synchronize()
    finally:
        triton.knobs.runtime.jit_cache_hook = old
    assert not misses, f"{len(misses)} of {len(cands)} candidates compiled at launch"
    assert_close(y, x, codes, scales, g)
