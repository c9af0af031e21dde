"""NVFP4 Triton kernels vs fp4lab.formats, bit-exact (interpreter on CPU; small shapes)."""
import importlib
import types
import zlib

import pytest
import torch
import triton
import triton.language as tl

from fp4lab import formats
from fp4lab.kernels import amax_parts_nvfp4, amax_triton, dequantize_nvfp4_triton, nvfp4_triton
from fp4lab.kernels.numerics import e2m1_encode, e2m1_round, e4m3_encode, e4m3_value

from ._helpers import (
    ORDERS, VARIANTS, RhtReference, assert_bitwise_equal, assert_matches_reference, assert_same_nvfp4, check_fake,
    check_quantize, spread_input,
)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("order", ORDERS)
def test_quantize_matches_reference(variant, order):
    check_quantize(spread_input(40, 72, seed=zlib.crc32(f"{variant} {order}".encode()) % 1000), variant, order)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("order", ORDERS)
def test_fake_quantize_matches_reference(variant, order):
    check_fake(spread_input(33, 48, seed=7 + len(variant) + len(order)), variant, order)


@pytest.mark.parametrize("shape", [(1, 16), (3, 5), (17, 33), (48, 130)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_odd_shapes_and_dtypes(shape, dtype):
    x = spread_input(*shape, dtype=dtype, seed=shape[0])
    check_quantize(x, "rowwise", "te")
    check_quantize(x, "columnwise", "torchao")


def test_leading_dims_are_flattened():
    x = spread_input(24, 40, seed=3).reshape(2, 12, 40)
    check_quantize(x, "rowwise", "torchao")
    q = nvfp4_triton(x, columnwise=True)
    r = formats.quantize_nvfp4(x.reshape(-1, 40).T)
    assert_same_nvfp4(q, r)


def test_fake_quantize_out_dtype_and_fp32_input():
    check_fake(spread_input(16, 64, dtype=torch.float32), "rowwise", "te")
    check_fake(spread_input(16, 64), "rht_columnwise", "torchao", out_dtype=torch.float32)
    check_fake(spread_input(16, 64), "columnwise", "compressed-tensors", out_dtype=torch.float16)


@pytest.mark.parametrize("order", ORDERS)
def test_all_zero_tensor(order):
    q, _ = check_quantize(torch.zeros(16, 32, dtype=torch.bfloat16), "rowwise", order)
    assert not q.scales.float().isnan().any() and (q.codes == 0).all()


def test_spec_vectors_through_the_kernel():
    v1 = [2688.0] + [0.0] * 15 + [0, .5, 1, 1.5, 2, 3, 4, 6, -.1, -.5, -1, -1.5, -2, -3, -4, -6] + \
        [.25, .75, 1.25, 1.75, 2.5, 3.5, 5, 6, -.25, -.75, -1.25, -1.75, -2.5, -3.5, -5, -6]
    v4 = [73.0] + [0.0] * 15 + [6.84375] + [0.0] * 15 + [0.0] * 16
    v6 = [2688.0] + [0.0] * 15 + [1e-4, -1e-4, 5e-5] + [0.0] * 13 + [0.0] * 16
    x = torch.tensor([v1, v4, v6])
    for order in ORDERS:
        for row in x:
            check_quantize(row[None, :], "rowwise", order)
    # V4 distinguishes the op orders: TE >= 2.14 rounds the scale of 6.84375 up to 44 (0x63)
    assert nvfp4_triton(x[1:2], scale_order="te").scales.view(torch.uint8)[0, 1] == 0x63
    assert nvfp4_triton(x[1:2], scale_order="torchao").scales.view(torch.uint8)[0, 1] == 0x62


@pytest.mark.parametrize("order", ORDERS)
def test_given_global_amax(order):
    x = spread_input(16, 48, seed=5)
    check_quantize(x, "rowwise", order, global_amax=torch.tensor(2.5))  # smaller than the data: saturates
    check_fake(x, "columnwise", order, global_amax=torch.tensor(1000.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_input_propagates(bad):
    x = spread_input(16, 32, seed=1)
    x[5, 7] = bad
    q = nvfp4_triton(x)
    assert (q.scales.view(torch.uint8) == 0x7F).all()
    assert not torch.isfinite(q.global_amax)
    assert torch.isnan(nvfp4_triton(x, fake=True, columnwise=True)).all()
    assert torch.isnan(dequantize_nvfp4_triton(q)).all()


def test_empty_tensors():
    for shape in [(0, 32), (4, 0)]:
        x = torch.zeros(shape, dtype=torch.bfloat16)
        q = nvfp4_triton(x)
        r = formats.quantize_nvfp4(x)
        assert q.codes.shape == r.codes.shape and q.scales.shape == r.scales.shape
        assert nvfp4_triton(x, fake=True).shape == x.shape


@pytest.mark.parametrize("order", ORDERS)
def test_dequantize_kernel(order):
    r = formats.quantize_nvfp4(spread_input(20, 40, seed=11), scale_order=order)
    for dtype in (torch.bfloat16, torch.float32):
        assert_bitwise_equal(dequantize_nvfp4_triton(r, dtype), r.dequantize(dtype))
    r2 = formats.quantize_nvfp4(spread_input(20, 40, seed=12), scale_order=order, block_2d=True)
    assert_bitwise_equal(dequantize_nvfp4_triton(r2), r2.dequantize())


def test_2d_codes_are_exact_transposes():
    x = spread_input(40, 56, seed=2)
    row = nvfp4_triton(x, block_2d=True)
    col = nvfp4_triton(x, block_2d=True, columnwise=True)
    rc = formats.unpack_e2m1(row.codes)  # [48, 64] (padded)
    cc = formats.unpack_e2m1(col.codes)  # [64, 48]
    assert torch.equal(rc, cc.T)
    # one scale per 16x16 tile, replicated on the tile's 16 rows (and on 16 columns of the transpose)
    rs = row.scales.view(torch.uint8)
    assert torch.equal(rs, rs[::16].repeat_interleave(16, 0))
    assert torch.equal(rs[::16], col.scales.view(torch.uint8)[::16].T)


def test_rht_spec_vector():
    # spec §6.5: columnwise amax 15.5 after RHT; scale bytes of transposed rows 0..2 are 0x4E, 0x66, 0x7E
    x = torch.zeros(16, 16, dtype=torch.bfloat16)
    x[0, 0] = 1
    x[:, 1] = 1
    x[:, 2] = torch.arange(16.0)
    q = nvfp4_triton(x, columnwise=True, rht=True, scale_order="te")
    assert float(q.global_amax) == 15.5
    assert q.scales.view(torch.uint8)[:3, 0].tolist() == [0x4E, 0x66, 0x7E]
    check_quantize(x, "rht_columnwise", "te")


def test_rht_reference_allows_the_other_rounding_only_where_an_fp32_sum_may_take_it():
    # operand row [1, 2^-8, 2^-24, 0, 2^-24, 0...]: output 0 is 0.25 * (1 + 2^-8 + 2^-23), just above a BF16
    # midpoint, so the reference rounds it up; an fp32 sum adding the 2^-24s one at a time lands on the
    # midpoint and rounds to even, so a kernel may give 0.25 there (which one depends on its sum order)
    x = torch.zeros(16, 16, dtype=torch.bfloat16)
    x[0, 0], x[1, 0], x[2, 0], x[4, 0] = 1.0, 2.0**-8, 2.0**-24, 2.0**-24
    r = RhtReference(x.T)
    assert float(r.ref[0, 0]) == 0.25 * (1 + 2**-7) and float(r.other[0, 0]) == 0.25 and r.near[0, 0]
    check_quantize(x, "rht_columnwise", "te")  # whichever way the kernel's sums went
    check_fake(x, "rht_columnwise", "te")
    choices = r.operands(16)
    assert len(choices) == 2 ** int(r.near.sum())  # all 16 outputs are in one block
    for operand in choices[:: len(choices) // 8]:  # a kernel giving any of these roundings passes
        assert_matches_reference(formats.quantize_nvfp4(operand, scale_order="te"), x, "rht_columnwise", "te")
    # the allowance is narrow: a fraction of a percent of a spread input's elements
    y = spread_input(64, 80, seed=11)
    r = RhtReference(y.T)
    assert r.near.float().mean() < 0.01 and r.free.float().mean() < 0.001
    # and it accepts nothing else: one changed code byte in a block without allowances fails
    q, _ = check_quantize(y, "rht_columnwise", "torchao")
    row, blk = (~(r.near | r.free).unflatten(-1, (-1, 16)).any(-1)).nonzero()[0].tolist()
    q.codes[row, blk * 8] ^= 0x01
    with pytest.raises(AssertionError, match="code bytes differ"):
        assert_matches_reference(q, y, "rht_columnwise", "torchao")


def test_amax_kernel():
    x = spread_input(37, 70, seed=4)
    assert torch.equal(amax_triton(x), x.float().abs().amax())
    assert float(amax_triton(torch.zeros(0, 3))) == 0.0
    x[3, 3] = float("nan")
    assert torch.isnan(amax_triton(x))
    x[3, 3] = -float("inf")
    assert amax_triton(x) == float("inf")


def test_amax_passes_fold_into_one_value_and_leave_the_scratch_zeroed(monkeypatch):
    amax_mod = importlib.import_module("fp4lab.kernels.amax")  # the package exports a function of that name
    x = spread_input(100, 300, seed=4)  # 4 programs of the flat pass, 7 of the RHT pair pass
    want = x.float().abs().amax()
    want_h = formats.random_hadamard_16(x.T, nonfinite="propagate").float().abs().amax()
    one = amax_mod.amax_partials(x)
    rows, cols = amax_parts_nvfp4(x, rht=True)
    assert one.numel() == rows.numel() == cols.numel() == 1
    assert _as_amax(one) == want and _as_amax(rows) == want and _as_amax(cols) == want_h
    assert all(int(v) == 0 for scratch in amax_mod._SCRATCH.values() for v in scratch)
    # without a scratch (a CUDA-graph capture on a new stream) every program writes its partial max
    monkeypatch.setattr(amax_mod, "_scratch", lambda device: None)
    many = amax_mod.amax_partials(x)
    rows2, cols2 = amax_parts_nvfp4(x, rht=True)
    assert many.numel() == 4 and rows2.numel() == cols2.numel() == 7
    assert _as_amax(many) == want and _as_amax(rows2) == want and _as_amax(cols2) == want_h
    assert_same_nvfp4(nvfp4_triton(x, amax_parts=many), nvfp4_triton(x, amax_parts=one))


def test_bin_edges_and_extrema():
    # values v ± 1e-3 around every E2M1 bin edge, scaled to span ±12 (spec §6.3 "bin edges")
    edges = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    v = torch.cat([edges - 1e-3, edges, edges + 1e-3])
    row = torch.cat([v, -v, torch.tensor([12.0, -12.0, 6.0, 0.0])]) * 2
    x = row[: (row.numel() // 16) * 16].reshape(1, -1).repeat(16, 1)
    for order in ORDERS:
        check_quantize(x, "rowwise", order)
        check_quantize(x, "2d", order)
    for dtype in (torch.bfloat16, torch.float32):
        big = torch.full((16, 32), torch.finfo(dtype).max, dtype=dtype)
        for order in ORDERS:
            check_quantize(big, "rowwise", order)


def test_float16_input():
    check_quantize(spread_input(16, 48, dtype=torch.float16), "columnwise", "te")
    check_fake(spread_input(16, 48, dtype=torch.float16), "rht_columnwise", "torchao")


def test_fresh_random_input():
    seed = int(torch.randint(0, 2**31 - 1, ()))  # a new tensor every run; the seed is in the failure message
    for variant, order in [("rowwise", "torchao"), ("columnwise", "te"), ("2d_columnwise", "compressed-tensors"),
                           ("rht_columnwise", "torchao")]:
        try:
            check_quantize(spread_input(24, 80, seed=seed), variant, order)
        except AssertionError as err:
            raise AssertionError(f"seed {seed}: {err}") from err


@pytest.mark.parametrize("tile,vec_r", [((16, 16), 4), ((32, 16), 2), ((16, 32), 0), ((64, 16), 8)])
def test_columnwise_tiling_does_not_change_numerics(tile, vec_r):
    # several tiles per dimension, masked edges (72 features, 40 tokens), vectorized feature loads
    x = spread_input(40, 72, seed=sum(tile) + vec_r)
    t = x.T
    kw = dict(columnwise=True, tile=tile, vec_r=vec_r, num_warps=1)
    assert_same_nvfp4(nvfp4_triton(x, scale_order="te", **kw),
                      formats.quantize_nvfp4(t, scale_order="te", nonfinite="propagate"))
    ct = dict(block_2d=True, scale_order="compressed-tensors")
    assert_same_nvfp4(nvfp4_triton(x, **ct, **kw), formats.quantize_nvfp4(t, **ct, nonfinite="propagate"))
    assert_bitwise_equal(nvfp4_triton(x, fake=True, **kw),
                         formats.quantize_nvfp4(t, nonfinite="propagate").dequantize(t.dtype))
    # stochastic rounding draws by element position, so the tiling must not change it either
    sr = dict(columnwise=True, rounding="stochastic")
    a = nvfp4_triton(x, generator=torch.Generator().manual_seed(3), **sr, tile=tile, vec_r=vec_r, num_warps=1)
    b = nvfp4_triton(x, generator=torch.Generator().manual_seed(3), **sr)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))


@pytest.mark.parametrize("tile", [(8, 64), (16, 32), (32, 128)])
def test_rowwise_tiling_does_not_change_numerics(tile):
    # rowwise tiles load whole 16-blocks per thread (two [blocks, rows, 8] halves); masked edges on both dims
    x = spread_input(37, 88, seed=sum(tile))
    kw = dict(tile=tile, num_warps=1)
    assert_same_nvfp4(nvfp4_triton(x, scale_order="te", **kw),
                      formats.quantize_nvfp4(x, scale_order="te", nonfinite="propagate"))
    if tile[0] % 16 == 0:  # 2D blocks need whole 16-row tiles
        x2 = spread_input(48, 96, seed=sum(tile) + 1)
        ct = dict(block_2d=True, scale_order="compressed-tensors")
        assert_same_nvfp4(nvfp4_triton(x2, **ct, **kw), formats.quantize_nvfp4(x2, **ct, nonfinite="propagate"))
    assert_bitwise_equal(nvfp4_triton(x, fake=True, **kw),
                         formats.quantize_nvfp4(x, nonfinite="propagate").dequantize(x.dtype))
    # SR random bits are keyed by element position: the same draws as the columnwise kernel (whose tiles
    # split nothing) reading x as the transposed view of x.T
    sr = dict(rounding="stochastic")
    for fake in (False, True):
        a = nvfp4_triton(x, generator=torch.Generator().manual_seed(3), fake=fake, **sr, **kw)
        b = nvfp4_triton(x.T.contiguous(), columnwise=True, generator=torch.Generator().manual_seed(3), fake=fake, **sr)
        if fake:
            assert_bitwise_equal(a, b)
        else:
            assert_same_nvfp4(a, b)


@triton.jit
def _e2m1_probe_kernel(y_ptr, code_ptr, value_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    y = tl.load(y_ptr + offs, mask=offs < n, other=0.0)
    tl.store(code_ptr + offs, e2m1_encode(y, 0.0, False), mask=offs < n)
    tl.store(value_ptr + offs, e2m1_round(y), mask=offs < n)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_e2m1_bit_rounding_matches_reference(device):
    # the kernels round to E2M1 by bit and magic-number arithmetic; the reference counts bin edges. Every bf16 value,
    # and fp32 values 0..3 ulps around every bin edge and grid point, both signs, NaN, Inf, subnormals
    bf16 = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    points = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 1e-40])
    bits = points.view(torch.int32)[:, None] + torch.arange(-3, 4, dtype=torch.int32)
    near = bits.flatten().view(torch.float32)
    y = torch.cat([bf16, near, -near, torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf")])])
    codes = torch.empty(y.shape, dtype=torch.int32, device=device)
    values = torch.empty(y.shape, dtype=torch.float32, device=device)
    _e2m1_probe_kernel[(triton.cdiv(y.numel(), 8192),)](y.to(device), codes, values, y.numel(), BLOCK=8192)
    codes, values = codes.cpu(), values.cpu()
    ref = formats.round_to_e2m1(y)
    assert torch.equal(codes, ref.to(torch.int32)), y[codes != ref.to(torch.int32)][:8]
    got, want = values.view(torch.int32), formats.e2m1_to_float(ref).view(torch.int32)
    assert torch.equal(got, want), y[got != want][:8]


@triton.jit
def _e4m3_probe_kernel(sf_ptr, code_ptr, byte_ptr, value_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    sf = tl.load(sf_ptr + offs, mask=offs < n, other=0.0)
    tl.store(code_ptr + offs, e4m3_encode(sf), mask=offs < n)
    byte = tl.load(byte_ptr + offs, mask=offs < 256, other=0)
    tl.store(value_ptr + offs, e4m3_value(byte), mask=offs < 256)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_e4m3_scale_rounding_matches_reference(device):
    # block scales: bit arithmetic in the interpreter, the conversion instructions on the GPU. Non-negative
    # fp32 values 0..3 ulps around every E4M3 grid point and midpoint (subnormals, carries into the
    # exponent, 448 and above), Inf and NaN; and the value of all 256 bytes, signed ones included
    grid = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    mids = (grid[1:] + grid[:-1]) / 2
    points = torch.cat([grid, mids, torch.tensor([464.0, 480.0, 1e6, 1e-12])])
    bits = points.view(torch.int32)[:, None] + torch.arange(-3, 4, dtype=torch.int32)
    sf = torch.cat([bits.flatten().clamp(min=0).view(torch.float32),
                    torch.tensor([float("inf"), float("nan"), 0.0])])
    codes = torch.empty(sf.shape, dtype=torch.int32, device=device)
    values = torch.empty(256, dtype=torch.float32, device=device)
    byte = torch.arange(256, dtype=torch.int32)
    _e4m3_probe_kernel[(triton.cdiv(sf.numel(), 4096),)](sf.to(device), codes, byte.to(device), values, sf.numel(),
                                                         BLOCK=4096)
    ref = formats.nvfp4.to_e4m3(sf).view(torch.uint8).to(torch.int32)
    codes = codes.cpu()
    assert torch.equal(codes, ref), sf[codes != ref][:8]
    want = byte.to(torch.uint8).view(torch.float8_e4m3fn).float()
    got = values.cpu()
    same = (got.view(torch.int32) == want.view(torch.int32)) | (got.isnan() & want.isnan())
    assert same.all(), byte[~same][:8]


def _as_amax(parts):
    return parts.max().reshape(1).view(torch.float32).reshape(())


@pytest.mark.parametrize("shape", [(37, 70), (32, 48), (16, 16), (5, 3)])
@pytest.mark.parametrize("rht", [True, False])
def test_shared_amax_parts(shape, rht):
    # one pass gives both amaxes of a QuantLinear operand: |x| (rowwise) and |RHT(x^T)| (columnwise)
    x = spread_input(*shape, seed=6)
    rows, cols = amax_parts_nvfp4(x, rht=rht)
    assert torch.equal(_as_amax(rows), x.float().abs().amax())
    col_refs = RhtReference(x.T).amax_candidates() if rht else [x.float().abs().amax()]
    assert any(torch.equal(_as_amax(cols), a) for a in col_refs), (_as_amax(cols), col_refs)
    # and quantization from them is the quantization that ran its own amax pass (zero rows appended too)
    pad = torch.nn.functional.pad(x, (0, 0, 0, (-shape[0]) % 16))
    assert_same_nvfp4(nvfp4_triton(x, amax_parts=rows), nvfp4_triton(x))
    assert_same_nvfp4(nvfp4_triton(pad, columnwise=True, rht=rht, amax_parts=cols),
                      nvfp4_triton(pad, columnwise=True, rht=rht))
    assert_bitwise_equal(nvfp4_triton(x, fake=True, amax_parts=rows, rounding="stochastic", generator=torch.Generator().manual_seed(1)),
                         nvfp4_triton(x, fake=True, rounding="stochastic", generator=torch.Generator().manual_seed(1)))
    assert_bitwise_equal(nvfp4_triton(pad, fake=True, columnwise=True, rht=rht, amax_parts=cols, forward_walk=True),
                         nvfp4_triton(pad, fake=True, columnwise=True, rht=rht))
    assert_same_nvfp4(nvfp4_triton(x, amax_parts=rows, forward_walk=True), nvfp4_triton(x))


def test_shared_amax_parts_propagate_nonfinite():
    x = spread_input(32, 32, seed=2)
    x[7, 9] = float("nan")
    rows, cols = amax_parts_nvfp4(x)
    assert torch.isnan(_as_amax(rows)) and torch.isnan(_as_amax(cols))
    assert torch.isnan(nvfp4_triton(x, fake=True, amax_parts=rows)).all()
    x[7, 9] = float("inf")
    rows, cols = amax_parts_nvfp4(x)
    assert _as_amax(rows) == float("inf")
    assert not torch.isfinite(_as_amax(cols))  # the transform of an Inf group holds Inf or NaN
    with pytest.raises(ValueError, match="2-D"):
        amax_parts_nvfp4(x[0])


def test_evict_first_threshold(monkeypatch):
    amax_mod = importlib.import_module("fp4lab.kernels.amax")  # the package exports a function of that name
    assert not amax_mod.evict_first(1 << 40, torch.device("cpu"))
    monkeypatch.setitem(amax_mod._PROPS, 0, types.SimpleNamespace(L2_cache_size=50 << 20))
    cuda0 = torch.device("cuda", 0)
    assert not amax_mod.evict_first(50 << 20, cuda0)
    assert amax_mod.evict_first((50 << 20) + 1, cuda0)
    assert not amax_mod.evict_first(64 << 20, cuda0, passes=2)  # a second pass still finds part of it in L2
    assert amax_mod.evict_first(128 << 20, cuda0, passes=2)
