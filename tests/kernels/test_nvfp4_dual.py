"""The dual kernel (rowwise + columnwise quantization from one read) against the two separate kernel
calls it replaces, bit for bit, and those against fp4lab.formats (interpreter on CPU; GPU below)."""
import pytest
import torch
import torch.nn.functional as F

from fp4lab import formats
from fp4lab.formats import seeds
from fp4lab.kernels import amax_parts_nvfp4, nvfp4_dual_triton, nvfp4_triton, quantize_nvfp4_rowwise_and_columnwise

from ._helpers import ORDERS, assert_bitwise_equal, assert_matches_reference, assert_same_nvfp4, spread_input


def assert_same(got, want):
    """Bit equality of two kernel outputs (values or packed NVFP4) on any device."""
    if isinstance(want, torch.Tensor):
        assert_bitwise_equal(got, want.cpu())
    else:
        assert_same_nvfp4(got, formats.NVFP4Tensor(want.codes.cpu(), want.scales.cpu(), want.global_amax.cpu(),
                                                   want.shape, want.scale_order, want.block_2d))


def check_dual(x, *, order="torchao", rht=True, col_fake=False, stochastic=False, out_dtype=None, **tuning):
    rows, cols = amax_parts_nvfp4(x, rht=rht)
    pad = F.pad(x, (0, 0, 0, (-x.shape[0]) % 16))
    kw = dict(scale_order=order, rounding="stochastic" if stochastic else "nearest")
    state, state_sep = seeds.new_seed_state(11, x.device), seeds.new_seed_state(11, x.device)
    row, col = nvfp4_dual_triton(x, row_parts=rows, col_parts=cols, col_fake=col_fake, rht=rht, out_dtype=out_dtype,
                                 generator=state if stochastic else None, **kw, **tuning)
    gen = state_sep if stochastic else None
    assert_same(row, nvfp4_triton(x, fake=True, amax_parts=rows, out_dtype=out_dtype, generator=gen, **kw))
    if col_fake:
        assert_same(col, nvfp4_triton(pad, fake=True, columnwise=True, rht=rht, amax_parts=cols, out_dtype=out_dtype,
                                      generator=gen, **kw))
    else:
        assert_same(col, nvfp4_triton(pad, columnwise=True, rht=rht, amax_parts=cols, generator=gen, **kw))
    if stochastic:  # the state moved on by two draws, as after the two separate calls
        assert torch.equal(state, state_sep)
    return row, col


@pytest.mark.parametrize("shape", [(37, 48), (32, 64), (16, 16), (5, 32)])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("rht", [True, False])
def test_packed_columnwise_equals_the_separate_kernels(shape, order, rht):
    x = spread_input(*shape, seed=shape[0] + len(order))
    _, col = check_dual(x, order=order, rht=rht, tile=(32, 16), vec=2)
    pad = F.pad(x, (0, 0, 0, (-shape[0]) % 16))
    assert_matches_reference(col, pad, "rht_columnwise" if rht else "columnwise", order)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stochastic", [False, True])
def test_fake_columnwise_with_sr_equals_the_separate_kernels(order, stochastic):
    x = spread_input(45, 64, seed=3)
    check_dual(x, order=order, col_fake=True, stochastic=stochastic, out_dtype=torch.bfloat16, tile=(32, 32), vec=1)


@pytest.mark.parametrize("tile,vec", [((16, 16), 1), ((64, 32), 4), ((128, 16), 0)])
def test_tiling_does_not_change_numerics(tile, vec):
    x = spread_input(50, 80, seed=4)
    check_dual(x, tile=tile, vec=vec)
    check_dual(x, col_fake=True, stochastic=True, tile=tile, vec=vec)


def test_fp32_input_and_out_dtype():
    x = spread_input(33, 32, dtype=torch.float32, seed=5)
    check_dual(x, tile=(32, 16), vec=1)
    check_dual(x, col_fake=True, out_dtype=torch.bfloat16, tile=(32, 16), vec=1)


def test_host_generator_draws_rowwise_first():
    x = spread_input(32, 32, seed=6)
    rows, cols = amax_parts_nvfp4(x)
    kw = dict(rounding="stochastic", tile=(32, 16), vec=1)
    row, col = nvfp4_dual_triton(x, row_parts=rows, col_parts=cols, col_fake=True,
                                 generator=torch.Generator().manual_seed(3), **kw)
    g = torch.Generator().manual_seed(3)
    want_row = nvfp4_triton(x, fake=True, amax_parts=rows, rounding="stochastic", generator=g)
    want_col = nvfp4_triton(x, fake=True, columnwise=True, rht=True, amax_parts=cols, rounding="stochastic", generator=g)
    assert_bitwise_equal(row, want_row)
    assert_bitwise_equal(col, want_col)


def test_nonfinite_propagates_and_bad_shapes_raise():
    x = spread_input(32, 32, seed=7)
    x[3, 5] = float("nan")
    row, col = nvfp4_dual_triton(x, col_fake=True, tile=(32, 16), vec=1)
    assert torch.isnan(row).all() and torch.isnan(col).all()
    with pytest.raises(ValueError, match="multiple of 16"):
        nvfp4_dual_triton(spread_input(32, 40))
    with pytest.raises(ValueError, match="2-D"):
        nvfp4_dual_triton(spread_input(32, 32)[0])


def test_empty_tokens():
    x = torch.zeros(0, 32, dtype=torch.bfloat16)
    row, col = nvfp4_dual_triton(x)
    assert row.shape == (0, 32) and col.shape == torch.Size((32, 0)) and float(col.global_amax) == 0.0


def test_public_wrapper_off_cuda_is_the_reference_composition():
    x = spread_input(20, 32, seed=8)
    rows, cols = amax_parts_nvfp4(x)
    row, col = quantize_nvfp4_rowwise_and_columnwise(x, row_parts=rows, col_parts=cols)
    want_row, want_col = nvfp4_dual_triton(x, row_parts=rows, col_parts=cols, tile=(32, 16), vec=1)
    assert_bitwise_equal(row, want_row)
    assert_same_nvfp4(col, want_col)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1000, 1024), (4096, 2048)])
@pytest.mark.parametrize("order", ORDERS)
def test_dual_kernel_on_gpu(shape, order):
    x = spread_input(*shape, seed=shape[0], device="cuda")
    check_dual(x, order=order)
    check_dual(x, order=order, col_fake=True, stochastic=True, out_dtype=torch.bfloat16)
    check_dual(x, order=order, rht=False, col_fake=True)
    check_dual(x.float(), order=order)
