"""Per-tensor FP8 fake-quantize kernel: the bit-arithmetic rounding against torch's float8 casts, and the
fused kernel against fp4lab.formats (interpreter on CPU; GPU at a large shape)."""
import pytest
import torch
import triton
import triton.language as tl

from fp4lab import formats
from fp4lab.kernels.fp8 import FP8_FORMATS, fake_quantize_fp8_tensor, fp8_round, fp8_tensor_fake_triton

from ._helpers import assert_bitwise_equal, spread_input

DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


@triton.jit
def _round_kernel(x_ptr, out_ptr, n, MBITS: tl.constexpr, EMIN: tl.constexpr, MAGIC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + offs, fp8_round(x, MBITS, EMIN, MAGIC), mask=offs < n)


def _grid_and_ties(fmt):
    """Every finite FP8 value of fmt, the midpoints between neighbours (ties) and 1 fp32 ulp either side."""
    codes = torch.arange(256, dtype=torch.uint8).view(DTYPES[fmt]).float()
    grid = codes[torch.isfinite(codes)].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    ulp = lambda t, d: (t.view(torch.int32) + d).view(torch.float32)  # noqa: E731
    return torch.cat([grid, mids, ulp(mids.abs(), 1) * mids.sign(), ulp(mids.abs(), -1) * mids.sign()])


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_round_matches_torch_cast(fmt):
    fmax, mbits, emin = FP8_FORMATS[fmt]
    bf16 = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    x = torch.cat([_grid_and_ties(fmt), bf16[torch.isfinite(bf16) & (bf16.abs() <= fmax)], torch.tensor([-0.0])])
    out = torch.empty_like(x)
    _round_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), MBITS=mbits, EMIN=emin,
                                                    MAGIC=2.0 ** (emin - mbits + 23), BLOCK=1024)
    ref = x.to(DTYPES[fmt]).float()
    assert_bitwise_equal(out, ref)
    nan = torch.full((4,), float("nan"))
    _round_kernel[(1,)](nan, out, 4, MBITS=mbits, EMIN=emin, MAGIC=2.0 ** (emin - mbits + 23), BLOCK=1024)
    assert torch.isnan(out[:4]).all()


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fake_quantize_fp8_tensor_matches_formats(fmt, out_dtype):
    x = spread_input(37, 70, seed=3)
    got = fp8_tensor_fake_triton(x, fmt, out_dtype)
    ref = formats.quantize_fp8(x, fmt=fmt, nonfinite="propagate").dequantize(out_dtype)
    assert got.dtype == out_dtype
    assert_bitwise_equal(got, ref)


def test_fake_quantize_fp8_tensor_bad_input():
    with pytest.raises(ValueError, match="fmt"):
        fake_quantize_fp8_tensor(torch.zeros(4), "e3m4")
    with pytest.raises(ValueError, match="fmt"):
        fp8_tensor_fake_triton(torch.zeros(4), "e3m4")
    with pytest.raises(ValueError, match="out_dtype"):
        fp8_tensor_fake_triton(torch.zeros(4), "e4m3", torch.int8)
    assert fp8_tensor_fake_triton(torch.zeros(0, 3)).shape == (0, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fake_quantize_fp8_tensor_gpu(fmt):
    x = spread_input(2048, 1000, seed=4, device="cuda")
    got = fake_quantize_fp8_tensor(x, fmt, torch.bfloat16)
    ref = formats.fake_quantize(x.cpu(), f"fp8_{fmt}", nonfinite="propagate").to(torch.bfloat16)
    assert_bitwise_equal(got, ref)
