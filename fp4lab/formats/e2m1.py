"""E2M1 (FP4) elements: the 16 codes, round-to-nearest-even and stochastic rounding, nibble packing.

Code layout: bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa; no Inf/NaN; max |value| 6.
Packing: element 2j in the low nibble of byte j, element 2j+1 in the high nibble (spec §3.1).
"""
from __future__ import annotations

import torch

# value of each code 0x0..0xF (spec §1.1)
E2M1_VALUES = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
E2M1_MAX = 6.0


def round_to_e2m1(y: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """E2M1 codes (uint8, unpacked) of fp32 values `y`, saturating at ±6.

    "nearest": round to nearest, ties to the even code (spec §1.2 decision table).
    "stochastic": TE's software model of Blackwell's cvt.rs (spec §1.4): with u = r / 256, r 8 uniform
    random bits from `torch.randint(generator=...)`, round up when p + u >= 1, p = (|y| - lo) / (hi - lo)
    between the two neighbouring grid points; so P(up) = floor(256 p) / 256 (p = 0.2 gives 51/256, biased
    towards zero by < 1/256 of a step, as on the hardware) and grid points never move. The Triton kernels
    apply the same rule to their own Philox bits (kernels.numerics.e2m1_stochastic_bits): the same
    distribution, not the same draws.
    The sign bit is copied from y, so -0.0 and small negatives that round to zero give 0x8 (as torchao,
    ml_dtypes and CUDA's conversion model do; TE's reference gives 0x0 for an exact -0.0).
    """
    y = y.float()
    a = y.abs()
    if rounding == "stochastic":
        a = a.clamp(max=E2M1_MAX)
        # grid spacing is 0.5 below 2, 1 in [2, 4), 2 in [4, 6]; all powers of two, so exact
        step = torch.where(a < 2.0, 0.5, torch.where(a < 4.0, 1.0, 2.0))
        lo = torch.floor(a / step) * step
        r = torch.randint(256, a.shape, generator=generator, device=a.device, dtype=torch.int32)
        # exact in float64: p has at most 24 significant bits and r + 256 p at most 33
        up = r.double() + 256.0 * ((a - lo) / step).double() >= 256.0
        a = torch.where(up, lo + step, lo).clamp(max=E2M1_MAX)
    elif rounding != "nearest":
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    # the magnitude code counts the bin edges at or below |y|; '>' vs '>=' makes every tie go to the even code
    mag = (
        (a > 0.25).to(torch.uint8)
        + (a >= 0.75)
        + (a > 1.25)
        + (a >= 1.75)
        + (a > 2.5)
        + (a >= 3.5)
        + (a > 5.0)
    )
    return mag.to(torch.uint8) | (torch.signbit(y).to(torch.uint8) << 3)


# round_to_e2m1's magnitude bins for torch.bucketize (which counts the edges strictly below |y|): an edge
# round_to_e2m1 takes with '>=' (the ties that go up to an even code) sits one float below itself
E2M1_BUCKET_EDGES = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
E2M1_BUCKET_EDGES[1::2] = torch.nextafter(E2M1_BUCKET_EDGES[1::2], torch.zeros(3))


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """fp32 values of unpacked E2M1 codes."""
    return E2M1_VALUES.to(codes.device)[codes.long()]


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Pack unpacked codes [..., 2n] into bytes [..., n], element 2j in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_e2m1 needs an even last dimension, got shape {tuple(codes.shape)}")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Unpack bytes [..., n] into codes [..., 2n] (low nibble first)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed E2M1 data must be uint8, got {packed.dtype}")
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)
