"""Hypothesis properties of the NVFP4 / MXFP4 / FP8 references."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp4lab.formats import SCALE_ORDERS, fake_quantize, quantize_nvfp4

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32).map(
    lambda v: 0.0 if abs(v) < 1e-6 else v  # keep clear of fp32 subnormals
)


@st.composite
def tensors(draw, max_rows=4, max_cols=48):
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    vals = draw(st.lists(finite, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(vals, dtype=torch.float32).reshape(rows, cols)


@settings(max_examples=150, deadline=None)
@given(tensors(), st.sampled_from(SCALE_ORDERS), st.booleans())
def test_error_within_block_bound(x, order, two_d):
    """|x - deq| <= amax_b * (1/6 + 1/16) * (1 + 2^-4): half a grid step at the top of the block
    plus the E4M3 rounding of the block scale; plus a term for subnormal scales (spacing 2^-9 * g)."""
    t = quantize_nvfp4(x, scale_order=order, block_2d=two_d)
    err = (t.dequantize(torch.float32) - x).abs()
    cols = -(-x.shape[1] // 16) * 16
    xp = torch.nn.functional.pad(x.abs(), (0, cols - x.shape[1]))
    blocks = xp.unflatten(-1, (-1, 16)).amax(-1)
    if two_d:
        blocks = blocks.amax(0, keepdim=True).expand_as(blocks)  # all rows share a tile here (rows <= 4)
    bound = blocks.repeat_interleave(16, -1)[:, : x.shape[1]] * (1 / 6 + 1 / 16) * (1 + 2**-4)
    bound = bound + 6 * 2**-9 * float(t.global_amax) / 2688 + 1e-30
    assert (err <= bound).all(), (err - bound).max()


@settings(max_examples=100, deadline=None)
@given(tensors(), st.sampled_from(SCALE_ORDERS))
def test_fake_quantize_idempotent(x, order):
    once = fake_quantize(x, "nvfp4", scale_order=order)
    twice = fake_quantize(once, "nvfp4", scale_order=order)
    torch.testing.assert_close(twice, once, rtol=1e-6, atol=0)


@settings(max_examples=100, deadline=None)
@given(tensors(), st.sampled_from(["nvfp4", "mxfp4", "fp8_e4m3", "fp8_e5m2"]))
def test_sign_symmetry(x, fmt):
    assert torch.equal(fake_quantize(-x, fmt), -fake_quantize(x, fmt))


@settings(max_examples=100, deadline=None)
@given(tensors(), st.sampled_from(SCALE_ORDERS), st.integers(-8, 8))
def test_power_of_two_invariance(x, order, k):
    s = 2.0**k
    assert torch.equal(fake_quantize(x * s, "nvfp4", scale_order=order), fake_quantize(x, "nvfp4", scale_order=order) * s)


@settings(max_examples=60, deadline=None)
@given(tensors(), st.sampled_from(["floor", "rceil"]), st.integers(-8, 8))
def test_mxfp4_power_of_two_invariance(x, rule, k):
    s = 2.0**k
    assert torch.equal(fake_quantize(x * s, "mxfp4", scale_rule=rule), fake_quantize(x, "mxfp4", scale_rule=rule) * s)
