"""MXFP4 (OCP MX v1.0): E2M1 elements, one E8M0 power-of-two scale per 32 elements, no tensor scale.

Scale rules (spec §2.7, V10), bit-exact with torchao ``to_mx``:
* ``"floor"`` (OCP-recommended): X = 2^(floor(log2 amax_b) - 2); a block max with mantissa > 1.5
  saturates at 6·X. Elements y = x / X.
* ``"rceil"`` (cuBLAS; the NVFP4 paper's MXFP4 baseline, App. B.4): X = 2^ceil(log2(amax_b / 6));
  nothing saturates, but the ±4/±6 codes may go unused. Elements y = x * 2^-e.
The E8M0 byte is the biased exponent (bias 127); 0xFF means NaN. ceil(log2) is computed exactly from
the fp32 bits (torchao uses torch.log2, which agrees for every bf16 input).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4lab.formats._checks import check_input, const, pad_to_multiple
from fp4lab.formats.e2m1 import E2M1_MAX, e2m1_to_float, pack_e2m1, round_to_e2m1, unpack_e2m1
from fp4lab.formats.nvfp4 import _crop

BLOCK = 32
SCALE_RULES = ("floor", "rceil")


@dataclass
class MXFP4Tensor:
    codes: torch.Tensor  # uint8 [..., Kp/2]
    scales: torch.Tensor  # uint8 E8M0 biased exponents [..., Kp/32]
    shape: torch.Size
    scale_rule: str = "floor"

    def scale_values(self) -> torch.Tensor:
        """fp32 value of each E8M0 scale (NaN for 0xFF; 2^-127 is an fp32 subnormal, kept exact)."""
        e = self.scales.to(torch.int32)
        v = torch.exp2((e - 127).float())
        return torch.where(e == 255, torch.nan, v)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        values = e2m1_to_float(unpack_e2m1(self.codes))
        out = (values.unflatten(-1, (-1, BLOCK)) * self.scale_values().unsqueeze(-1)).flatten(-2)
        return _crop(out, self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + self.scales.numel()


def _fp32_exponent(a: torch.Tensor) -> torch.Tensor:
    """Unbiased exponent field of fp32 values (-127 for zero/subnormals)."""
    return ((a.view(torch.int32) >> 23) & 0xFF) - 127


def quantize_mxfp4(
    x: torch.Tensor,
    *,
    scale_rule: str = "floor",
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    nonfinite: str = "raise",
) -> MXFP4Tensor:
    """Quantize x to MXFP4 along its last dim (blocks of 32, zero-padded; `shape` stays logical)."""
    check_input(x, "quantize_mxfp4", nonfinite)
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule must be one of {SCALE_RULES}, got {scale_rule!r}")
    if x.ndim == 0:
        raise ValueError("quantize_mxfp4: need at least 1 dim")
    shape = x.shape
    xb = pad_to_multiple(x.float(), BLOCK, -1).unflatten(-1, (-1, BLOCK))
    amax = xb.abs().amax(-1)
    nan = torch.isnan(amax)
    if scale_rule == "floor":
        e = (_fp32_exponent(amax) - 2).clamp(-127, 128)
        biased = torch.where(nan, 255, e + 127).to(torch.uint8)
        # torchao clamps the divisor to the smallest normal (2^-126) for an all-zero block
        scale = ((biased.to(torch.int32) << 23).view(torch.float32)).clamp(min=2.0**-126)
        y = xb / scale.unsqueeze(-1)
    else:
        d = amax / const(E2M1_MAX, amax)
        # exact ceil(log2(d)): exponent, plus one if any mantissa bit is set (d normal)
        e = _fp32_exponent(d) + ((d.view(torch.int32) & 0x7FFFFF) != 0).to(torch.int32)
        e = torch.where(d < 2.0**-126, -127, e).clamp(-127, 127)  # zero/subnormal d -> 2^-127
        biased = torch.where(nan, 255, torch.where(torch.isinf(d), 254, e + 127)).to(torch.uint8)
        rcp = torch.where(
            biased == 0, 1.0, torch.exp2((127 - biased.to(torch.int32)).float())
        )
        rcp = torch.where(biased == 254, 2.0**-127, rcp)
        rcp = torch.where(nan, torch.nan, rcp)
        y = xb * rcp.unsqueeze(-1)
    y = y.clamp(-E2M1_MAX, E2M1_MAX)
    codes = round_to_e2m1(y.flatten(-2), rounding, generator)
    return MXFP4Tensor(pack_e2m1(codes), biased, shape, scale_rule)
