"""fake_quantize: quantize then dequantize, the building block of emulated low-precision training."""
from __future__ import annotations

import torch

from fp4lab.formats.fp8 import quantize_fp8
from fp4lab.formats.mxfp4 import quantize_mxfp4
from fp4lab.formats.nvfp4 import quantize_nvfp4

FORMATS = ("nvfp4", "mxfp4", "fp8_e4m3", "fp8_e5m2")


def fake_quantize(x: torch.Tensor, fmt: str, **kw) -> torch.Tensor:
    """Return dequantize(quantize(x)) in x's dtype and shape; `kw` goes to the matching quantizer.

    fmt: "nvfp4" (quantize_nvfp4), "mxfp4" (quantize_mxfp4), "fp8_e4m3" / "fp8_e5m2" (quantize_fp8).
    """
    if fmt == "nvfp4":
        q = quantize_nvfp4(x, **kw)
    elif fmt == "mxfp4":
        q = quantize_mxfp4(x, **kw)
    elif fmt in ("fp8_e4m3", "fp8_e5m2"):
        q = quantize_fp8(x, fmt=fmt[4:], **kw)
    else:
        raise ValueError(f"fake_quantize: fmt must be one of {FORMATS}, got {fmt!r}")
    return q.dequantize(x.dtype)
