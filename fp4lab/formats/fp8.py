"""FP8 (OCP E4M3 / E5M2) with current scaling: the paper's FP8 baselines.

Decode scale s = amax / fmt_max (1.0 for an all-zero block), data = cast(clamp(x / s)) RNE,
value = data * s. Granularity ``"tensor"`` is one scale per tensor (TE's current scaling);
``"block128"`` is DeepSeek-V3 style: 1x128 blocks along the last dim, or 128x128 tiles with
``block_2d=True`` (weights). Scales stay fp32 (not rounded to powers of two).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4lab.formats._checks import check_input, const, pad_to_multiple
from fp4lab.formats.nvfp4 import _crop

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
BLOCK = 128
GRANULARITIES = ("tensor", "block128")


@dataclass
class FP8Tensor:
    data: torch.Tensor  # float8, padded shape
    scales: torch.Tensor  # fp32 decode scales: [] | [..., Kp/128] | [..., Mp/128, Kp/128]
    shape: torch.Size
    fmt: str = "e4m3"
    granularity: str = "tensor"
    block_2d: bool = False

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        d = self.data.float()
        if self.granularity == "tensor":
            out = d * self.scales
        elif self.block_2d:
            s = self.scales.repeat_interleave(BLOCK, -2).repeat_interleave(BLOCK, -1)
            out = d * s
        else:
            out = (d.unflatten(-1, (-1, BLOCK)) * self.scales.unsqueeze(-1)).flatten(-2)
        return _crop(out, self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        return self.data.numel() + 4 * self.scales.numel()


def quantize_fp8(
    x: torch.Tensor,
    *,
    fmt: str = "e4m3",
    granularity: str = "tensor",
    block_2d: bool = False,
    nonfinite: str = "raise",
) -> FP8Tensor:
    """Quantize x to FP8 with just-in-time (current) amax scaling."""
    check_input(x, "quantize_fp8", nonfinite)
    if fmt not in FP8_DTYPES:
        raise ValueError(f"fmt must be one of {tuple(FP8_DTYPES)}, got {fmt!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if x.ndim == 0 or (block_2d and x.ndim < 2):
        raise ValueError(f"quantize_fp8: too few dims for this granularity: shape {tuple(x.shape)}")
    fmax = FP8_MAX[fmt]
    xf = x.float()
    if granularity == "tensor":
        amax = xf.abs().amax() if xf.numel() else torch.zeros((), device=x.device)
        scale = amax / const(fmax, amax)
        scale = torch.where(amax == 0, 1.0, scale)
        y = xf / scale
    else:
        xf = pad_to_multiple(xf, BLOCK, -1)
        if block_2d:
            xf = pad_to_multiple(xf, BLOCK, -2)
            tiles = xf.unflatten(-1, (-1, BLOCK)).unflatten(-3, (-1, BLOCK))  # [..., Mb, 128, Kb, 128]
            amax = tiles.abs().amax(dim=(-3, -1))
        else:
            amax = xf.unflatten(-1, (-1, BLOCK)).abs().amax(-1)
        scale = torch.where(amax == 0, 1.0, amax / const(fmax, amax))
        if block_2d:
            full = scale.repeat_interleave(BLOCK, -2).repeat_interleave(BLOCK, -1)
            y = xf / full
        else:
            y = (xf.unflatten(-1, (-1, BLOCK)) / scale.unsqueeze(-1)).flatten(-2)
    data = y.clamp(-fmax, fmax).to(FP8_DTYPES[fmt])
    return FP8Tensor(data, scale, x.shape, fmt, granularity, block_2d)
