"""16x16 random Hadamard transform (RHT) of the NVFP4 recipe's Wgrad inputs (spec §4.2).

out = v @ H for every contiguous group v of 16 along the last dim, H = diag(s) @ H16 / 4 with H16 the
Sylvester Hadamard matrix and s the fixed sign vector TE uses for every layer (kernel mask 0xD7E8).
H @ H.T = I, so the transform cancels in dW = (dy^T H)(x^T H)^T. Computed in fp32 and rounded to BF16,
as TE's fused kernel does before taking the amax.
"""
from __future__ import annotations

import torch

from fp4lab.formats._checks import check_input, pad_to_multiple

RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
RHT_SIGN_MASK = sum(1 << i for i, s in enumerate(RHT_SIGNS) if s < 0)  # 0xD7E8


def hadamard_16() -> torch.Tensor:
    """The 16x16 Sylvester Hadamard matrix (entries ±1), built as [[H, H], [H, -H]]."""
    h = torch.ones(1, 1)
    while h.shape[0] < 16:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def rht_matrix(device=None, dtype=torch.float32) -> torch.Tensor:
    """H = diag(RHT_SIGNS) @ H16 / 4 (entries ±0.25, exact in BF16)."""
    signs = torch.tensor(RHT_SIGNS, dtype=torch.float32).unsqueeze(1)
    return (signs * hadamard_16() / 4).to(device=device, dtype=dtype)


def random_hadamard_16(x: torch.Tensor, *, nonfinite: str = "raise") -> torch.Tensor:
    """Apply the RHT to groups of 16 along the last dim; returns BF16.

    A last dim that is not a multiple of 16 is zero-padded first and the padded length is returned:
    the transformed padding is not zero, and both Wgrad operands padded the same way still give dy^T x.
    """
    check_input(x, "random_hadamard_16", nonfinite)
    xf = pad_to_multiple(x.float(), 16, -1)
    h = rht_matrix(x.device, torch.float64)
    # float64 accumulation makes the sum of 16 exact products (x * ±0.25) order-independent, so a
    # kernel summing in fp32 in any order agrees unless the fp32 sum itself is inexact (rare)
    out = (xf.double().unflatten(-1, (-1, 16)) @ h).flatten(-2)
    return out.float().to(torch.bfloat16)
