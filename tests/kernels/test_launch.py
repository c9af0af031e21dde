"""The direct launcher: its key separates every case Triton specializes on, and launches stay correct."""
import pytest
import torch
import triton
import triton.language as tl

from fp4lab.kernels import _launch
from fp4lab.kernels._grid import interpreting
from fp4lab.kernels._launch import _layout, launch

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, a, n, stride, BLOCK: tl.constexpr):  # a: int or float
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs * stride, mask=m, other=0.0)
    y = tl.load(y_ptr + offs, mask=m, other=0.0)
    tl.store(out_ptr + offs, a * x + y, mask=m)


def test_layout_learns_tensor_and_int_positions_and_refuses_other_types():
    t = torch.zeros(4)
    layout = _layout((t, 3, t, 16))
    assert layout[2:] == ((0, 2), (1, 3))
    assert layout[1]((t, 3, t, 16)) == (3, 16) and layout[0]((t, 3, t, 16)) == (t, t)
    assert _layout((t, 3))[1]((t, 3)) == (3,)  # one position: still a tuple
    assert _layout((t, 2.0, 3)) is False and _layout((t, True)) is False and _layout((t, None)) is False


def _run_axpy(x, y, a, stride, n):
    out = torch.empty(n, dtype=torch.float32, device=y.device)
    # no fma contraction: the product is rounded before the add, as torch does
    launch(_axpy_kernel, (triton.cdiv(n, 64),), x, y, out, a, n, stride, BLOCK=64, num_warps=1,
           enable_fp_fusion=False)
    return out


def test_launch_in_the_interpreter_is_the_ordinary_launch():
    if not interpreting():
        pytest.skip("CPU tensors need TRITON_INTERPRET=1")
    x, y = torch.randn(100), torch.randn(100)
    torch.testing.assert_close(_run_axpy(x, y, 2, 1, 100), 2 * x + y, rtol=0, atol=0)
    assert not any(k[0] is _axpy_kernel for k in _launch._CACHE)


@gpu
@needs_cuda
def test_direct_launches_are_cached_and_correct_across_specializations():
    torch.manual_seed(0)
    base = torch.randn(4096 + 8, device="cuda")
    y = torch.randn(4096, device="cuda")
    for x, stride, n, a in [
        (base[:4096], 1, 4096, 2),        # aligned, n divisible by 16
        (base[1:4097], 1, 4096, -3),      # misaligned x
        (base[:4096], 1, 4095, 5),        # n not divisible by 16
        (base[:4096], 1, 1, 3),           # n == 1 (Triton makes it a constant)
        (base, 2, 2048, 1),               # stride 2, a == 1
    ]:
        for _ in range(3):  # first launch compiles through kernel[grid], the next two go direct
            out = _run_axpy(x, y, a, stride, n)
            ref = a * x[: n * stride : stride] + y[:n]
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
    entries = [v for k, v in _launch._CACHE.items() if k[0] is _axpy_kernel]
    assert len(entries) == 5 and all(entries), "one direct-launch entry per key"


@gpu
@needs_cuda
def test_a_float_argument_keeps_the_ordinary_path():
    x, y = torch.randn(256, device="cuda"), torch.randn(256, device="cuda")
    _launch._LAYOUTS.pop(_axpy_kernel, None)
    for _ in range(2):
        out = _run_axpy(x, y, 0.5, 1, 256)
    torch.testing.assert_close(out, 0.5 * x + y, rtol=0, atol=0)
    assert _launch._LAYOUTS[_axpy_kernel] is False
    _launch._LAYOUTS.pop(_axpy_kernel)


@gpu
@needs_cuda
def test_a_tensor_by_keyword_keeps_the_ordinary_path_and_is_not_kept():
    x, y = torch.randn(256, device="cuda"), torch.randn(256, device="cuda")
    _launch._LAYOUTS.pop(_axpy_kernel, None)
    out = torch.empty(256, device="cuda")
    for _ in range(2):
        launch(_axpy_kernel, (4,), x, y, out_ptr=out, a=2, n=256, stride=1, BLOCK=64, num_warps=1,
               enable_fp_fusion=False)
        torch.testing.assert_close(out, 2 * x + y, rtol=0, atol=0)
    assert _launch._LAYOUTS.pop(_axpy_kernel) is False
    assert not any(v is out for k in _launch._CACHE for _, v in k[-1])


@gpu
@needs_cuda
def test_launch_hooks_take_the_ordinary_path():
    from triton import knobs
    seen = []

    def hook(meta):
        seen.append(meta)

    chain = knobs.runtime.launch_enter_hook
    chain.add(hook)
    try:
        x, y = torch.randn(256, device="cuda"), torch.randn(256, device="cuda")
        for _ in range(2):
            out = _run_axpy(x, y, 2, 1, 256)
        torch.testing.assert_close(out, 2 * x + y, rtol=0, atol=0)
    finally:
        chain.remove(hook)
    assert len(seen) == 2
