"""MXFP4 fake-quantize kernel vs fp4lab.formats, bit-exact (interpreter on CPU; small shapes)."""
import pytest
import torch

from fp4lab.kernels import mxfp4_fake_triton

from ._helpers import check_mxfp4, spread_input


@pytest.mark.parametrize("rule", ["floor", "rceil"])
@pytest.mark.parametrize("columnwise,rht", [(False, False), (True, False), (True, True)])
def test_matches_reference(rule, columnwise, rht):
    check_mxfp4(spread_input(36, 70, seed=len(rule) + 2 * columnwise + rht), rule, columnwise, rht)


def test_fp32_and_spec_vector():
    check_mxfp4(spread_input(8, 40, dtype=torch.float32), "floor")
    rows = torch.tensor([[7.0] + [1.0] * 31, [3.0001] + [0.5] * 31, [6.0] + [0.25] * 31])
    for rule in ("floor", "rceil"):
        check_mxfp4(rows, rule)


def test_nan_stays_in_its_block():
    x = spread_input(4, 64, dtype=torch.float32)
    x[1, 40] = float("nan")
    y = mxfp4_fake_triton(x)
    assert torch.isnan(y[1, 32:64]).all()
    assert torch.isfinite(y[:, :32]).all() and torch.isfinite(y[0]).all()
    check_mxfp4(x.nan_to_num(), "rceil")
