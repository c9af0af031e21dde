"""fp4lab's custom ops (what torch.compile sees of a quantized operand): schema, fake tensors, tracing."""
import pytest
import torch

from fp4lab.formats import seeds
from fp4lab.nn import _ops

T = torch.randn(40, 48, dtype=torch.bfloat16)
SEEDED = ("test_schema", "test_faketensor")  # an SR call draws new numbers: eager-vs-traced outputs differ


class _Layer:  # what register_sr_source keeps a weak reference to
    def __init__(self):
        self.sr_state = seeds.new_seed_state(0)


_LAYERS = []


def _key():
    _LAYERS.append(_Layer())
    return _ops.register_sr_source(_LAYERS[-1])


@pytest.mark.parametrize("args", [
    (T, "nvfp4", False, False, False, False, "torchao", "rceil", False, -1, torch.bfloat16),
    (T, "nvfp4", True, False, False, False, "te", "rceil", False, -1, torch.float32),
    (T[:33], "nvfp4", False, False, True, False, "compressed-tensors", "rceil", True, -1, torch.bfloat16),
    (T[:32], "mxfp4", False, False, True, False, "torchao", "floor", True, -1, torch.bfloat16),
], ids=["rowwise", "2d-fp32-out", "rht-columnwise-33-rows", "mxfp4-rht"])
def test_fake_quantize_op(args):
    torch.library.opcheck(torch.ops.fp4lab.fake_quantize.default, args)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_stochastic_fake_quantize_op(fmt):
    args = (T[:32], fmt, False, False, True, True, "torchao", "rceil", True, _key(), torch.bfloat16)
    torch.library.opcheck(torch.ops.fp4lab.fake_quantize.default, args, test_utils=SEEDED)


@pytest.mark.parametrize("rows,block_2d,columnwise,rht,stochastic", [
    (40, False, True, True, False), (33, True, False, False, False), (33, False, True, False, False),
    (32, False, True, True, True),
])
def test_quantize_and_dequantize_ops(rows, block_2d, columnwise, rht, stochastic):
    args = (T[:rows], block_2d, stochastic, "te", columnwise, rht, _key() if stochastic else -1)
    torch.library.opcheck(torch.ops.fp4lab.quantize_nvfp4.default, args, **({"test_utils": SEEDED} if stochastic else {}))
    codes, scales, amax = torch.ops.fp4lab.quantize_nvfp4(*args)
    shape = list(_ops._packed_shape(T[:rows], columnwise, rht))
    torch.library.opcheck(torch.ops.fp4lab.dequantize_nvfp4.default,
                          (codes, scales, amax, shape, "te", block_2d, torch.bfloat16))
