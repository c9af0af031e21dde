"""Bad input gets a clear error or the documented behaviour: NaN/Inf, dtypes, padding, empty tensors."""
import pytest
import torch

from fp4lab.formats import fake_quantize, quantize_fp8, quantize_mxfp4, quantize_nvfp4, random_hadamard_16

QUANTIZERS = [quantize_nvfp4, quantize_mxfp4, quantize_fp8]


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_raises_with_flat_index(quantize, bad):
    x = torch.randn(4, 32)
    x[2, 5] = bad
    with pytest.raises(ValueError, match=r"flat index 69 .*shape \(4, 32\)"):
        quantize(x)


def test_nonfinite_propagate_makes_everything_nan():
    x = torch.randn(4, 32)
    x[1, 3] = float("nan")
    t = quantize_nvfp4(x, nonfinite="propagate")
    assert (t.scales.view(torch.uint8) == 0x7F).all()
    assert torch.isnan(t.dequantize(torch.float32)).all()
    x[1, 3] = float("inf")
    assert torch.isnan(fake_quantize(x, "nvfp4", nonfinite="propagate")).all()


def test_nonfinite_mode_is_checked():
    with pytest.raises(ValueError, match="nonfinite"):
        quantize_nvfp4(torch.randn(16), nonfinite="ignore")


@pytest.mark.parametrize("quantize", QUANTIZERS + [random_hadamard_16])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool, torch.complex64])
def test_non_float_dtypes_raise_type_error(quantize, dtype):
    x = torch.ones(4, 32).to(dtype)
    with pytest.raises(TypeError, match="float32, bfloat16"):
        quantize(x)


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="scale_order"):
        quantize_nvfp4(torch.randn(16), scale_order="mine")
    with pytest.raises(ValueError, match="rounding"):
        quantize_nvfp4(torch.randn(16), rounding="up")
    with pytest.raises(ValueError, match="scale_rule"):
        quantize_mxfp4(torch.randn(32), scale_rule="ceil")
    with pytest.raises(ValueError, match="fmt"):
        fake_quantize(torch.randn(16), "int4")
    with pytest.raises(ValueError, match="global_amax"):
        quantize_nvfp4(torch.randn(16), global_amax=float("nan"))


@pytest.mark.parametrize("cols", [1, 15, 17, 33, 100])
def test_unaligned_last_dim_is_padded_and_shape_preserved(cols):
    x = torch.randn(3, cols)
    t = quantize_nvfp4(x)
    padded = -(-cols // 16) * 16
    assert t.codes.shape == (3, padded // 2) and t.scales.shape == (3, padded // 16)
    assert t.shape == x.shape and t.dequantize().shape == x.shape
    # padding with zeros changes nothing: same result as quantizing the explicitly padded tensor
    xp = torch.nn.functional.pad(x, (0, padded - cols))
    assert torch.equal(quantize_nvfp4(xp).codes, t.codes)
    m = quantize_mxfp4(x)
    assert m.dequantize().shape == x.shape
    assert quantize_fp8(x, granularity="block128").dequantize().shape == x.shape


def test_unaligned_2d_pads_rows_too():
    x = torch.randn(20, 40)
    t = quantize_nvfp4(x, block_2d=True)
    assert t.codes.shape == (32, 24) and t.dequantize().shape == (20, 40)


@pytest.mark.parametrize("shape", [(0,), (0, 32), (4, 0), (2, 0, 16)])
def test_empty_tensor_gives_empty_result(shape):
    x = torch.empty(shape)
    for fmt in ("nvfp4", "mxfp4", "fp8_e4m3"):
        out = fake_quantize(x, fmt)
        assert out.shape == x.shape and out.numel() == 0


def test_zero_dim_and_2d_on_1d_raise():
    with pytest.raises(ValueError, match="dims"):
        quantize_nvfp4(torch.tensor(1.0))
    with pytest.raises(ValueError, match="dims"):
        quantize_nvfp4(torch.randn(32), block_2d=True)


def test_bf16_and_fp32_containers_agree():
    x = torch.randn(64, 64).bfloat16()
    a, b = quantize_nvfp4(x), quantize_nvfp4(x.float())
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))


# FP8 baselines -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,fmax", [("e4m3", 448.0), ("e5m2", 57344.0)])
def test_fp8_tensor_scaling(fmt, fmax):
    x = torch.randn(64, 256)
    t = quantize_fp8(x, fmt=fmt)
    assert float(t.scales) == pytest.approx(float(x.abs().max()) / fmax)
    assert t.data.float().abs().max() == fmax  # the amax element maps to the format's max
    rel = ((t.dequantize(torch.float32) - x).norm() / x.norm()).item()
    assert rel < (0.04 if fmt == "e4m3" else 0.08)


def test_fp8_block128_1d_and_2d():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 384, generator=g) * torch.exp(torch.randn(256, 1, generator=g) * 2)
    b1 = quantize_fp8(x, granularity="block128")
    assert b1.scales.shape == (256, 3)
    torch.testing.assert_close(b1.scales, x.abs().unflatten(-1, (3, 128)).amax(-1) / 448)
    b2 = quantize_fp8(x, granularity="block128", block_2d=True)
    assert b2.scales.shape == (2, 3)
    # finer scales: per-row blocks beat per-tensor on rows of very different magnitude
    err = lambda t: ((t.dequantize(torch.float32) - x).norm() / x.norm()).item()  # noqa: E731
    assert err(b1) <= err(quantize_fp8(x))


def test_fp8_all_zero():
    t = quantize_fp8(torch.zeros(8, 128), granularity="block128")
    assert torch.equal(t.dequantize(torch.float32), torch.zeros(8, 128))
