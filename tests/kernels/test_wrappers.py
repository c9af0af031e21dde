"""Public wrappers: reference fallback off-GPU, argument errors, shapes."""
import pytest
import torch

from fp4lab import formats, kernels

from ._helpers import assert_bitwise_equal, assert_same_nvfp4, spread_input


def test_cpu_tensors_use_the_reference():
    x = spread_input(16, 48)
    assert_same_nvfp4(kernels.quantize_nvfp4(x, columnwise=True), formats.quantize_nvfp4(x.T))
    t = formats.random_hadamard_16(x.T)
    ref = formats.quantize_nvfp4(t).dequantize(torch.bfloat16)
    assert_bitwise_equal(kernels.fake_quantize_nvfp4(x, columnwise=True, rht=True), ref)
    assert kernels.fake_quantize_mxfp4(x, columnwise=True).shape == (48, 16)
    assert torch.equal(kernels.amax(x), x.float().abs().amax())
    q = formats.quantize_nvfp4(x)
    assert torch.equal(kernels.dequantize_nvfp4(q), q.dequantize())


@pytest.mark.parametrize("kw,err", [
    (dict(scale_order="bogus"), ValueError),
    (dict(rounding="up"), ValueError),
    (dict(block_2d=True), ValueError),  # 3-D input with block_2d
])
def test_bad_arguments_raise(kw, err):
    x = torch.randn(2, 16, 32)
    with pytest.raises(err):
        kernels.nvfp4_triton(x, **kw)


def test_bad_dtype_raises():
    with pytest.raises(TypeError):
        kernels.nvfp4_triton(torch.ones(4, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="scale_rule"):
        kernels.mxfp4_fake_triton(torch.ones(4, 32), scale_rule="even")


def test_float64_input_runs_the_same_numerics():
    x = spread_input(16, 32, dtype=torch.float64)
    assert_same_nvfp4(kernels.nvfp4_triton(x, scale_order="te"), formats.quantize_nvfp4(x, scale_order="te"))
    y = kernels.nvfp4_triton(x, fake=True)
    assert y.dtype == torch.float64
    assert torch.equal(y, formats.quantize_nvfp4(x).dequantize(torch.float64))


def test_cuda_generator_is_refused_for_stochastic_rounding():
    class FakeGen:
        device = torch.device("cuda")
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        kernels.nvfp4_triton(torch.randn(4, 16), rounding="stochastic", generator=FakeGen())


def test_stochastic_rounding_refuses_cuda_graph_capture(monkeypatch):
    # a capture would freeze the host-drawn seed: every replay would repeat the same random numbers
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    x = spread_input(16, 32)
    with pytest.raises(RuntimeError, match="CUDA graph"):
        kernels.nvfp4_triton(x, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="CUDA graph"):
        kernels.mxfp4_fake_triton(x, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    kernels.nvfp4_triton(x)  # round-to-nearest has nothing to freeze
