"""GPTQ (Frantar et al. 2022, arXiv:2210.17323) adapted to block-scaled FP4/FP8 grids.

Columns are quantized left to right; each column's rounding error is spread over the not-yet-quantized
columns through the inverse Hessian H^-1 (H = 2 X^T X from calibration inputs), in lazy batches of
`block_size` columns (the paper's §4 "lazy batch" update). For NVFP4/MXFP4 the scale of a 16-/32-element
block is chosen when the first column of that block is reached, from the *updated* weights of the block
(GPTQ's "groupwise" variant), so scales absorb earlier error compensation; NVFP4's global scale is fixed
beforehand (from the original weights, shared by fused projections). Four Over Six may pick the scales.
"""
from __future__ import annotations

import torch

from fp4lab.export.checkpoint import PackedWeight
from fp4lab.formats.e2m1 import E2M1_BUCKET_EDGES, E2M1_VALUES, pack_e2m1
from fp4lab.ptq.weights import (
    choose_nvfp4_scales,
    fp8_encode,
    fp8_scale,
    mxfp4_encode,
    mxfp4_scale_bytes,
    mxfp4_steps,
    nvfp4_encode,
    nvfp4_global,
    nvfp4_steps,
)


def inverse_hessian_factor(H: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1, and the mask of dead (never active) inputs."""
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True).float(), dead


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, scheme: str, *, global_amax=None, four_over_six: bool = False,
                  input_scale: torch.Tensor | None = None, block_size: int = 128, damp: float = 0.01) -> PackedWeight:
    """GPTQ-quantize one weight [out, in] given its input Hessian [in, in]; returns the checkpoint tensors."""
    W = w.detach().float().clone()
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"gptq: Hessian shape {tuple(H.shape)} does not match weight in_features {cols}")
    Hinv, dead = inverse_hessian_factor(H.to(W.device), damp)
    W[:, dead] = 0

    if scheme in ("nvfp4", "nvfp4a16"):
        group = 16
        _, G = nvfp4_global(w.detach().float().abs().amax() if global_amax is None else global_amax)
        G = G.to(W.device)

        def choose(wg):
            return choose_nvfp4_scales(wg, G, four_over_six)

        def steps(s):
            return nvfp4_steps(s, G)
        scale_dtype = torch.float8_e4m3fn
    elif scheme == "mxfp4":
        if four_over_six:
            raise ValueError("--four-over-six applies to NVFP4 only")
        group = 32
        choose, steps = mxfp4_scale_bytes, mxfp4_steps
        scale_dtype = torch.uint8
    elif scheme == "fp8":
        group = 0
        s_fp8 = fp8_scale(w.detach().float().abs().amax()).to(W.device)
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    if group and (cols % group or block_size % group):
        raise ValueError(f"gptq: in_features {cols} and block_size {block_size} must be multiples of {group}")

    # Per column only the decoded value is needed (for the error feedback); the codes are encoded once at the
    # end from the values each column had when it was quantized, with the same scales, so they match.
    edges = E2M1_BUCKET_EDGES.to(W.device)
    grid = E2M1_VALUES[:8].to(W.device)
    seen = torch.zeros_like(W)
    scales = torch.zeros(rows, cols // group if group else 0, dtype=scale_dtype if group else torch.float32,
                         device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            x = W1[:, i]
            if group and col % group == 0:
                g = choose(W1[:, i:i + group])  # [rows, 1]: the block's scale, from the updated weights
                scales[:, col // group] = g[:, 0]
                den, mul = steps(g[:, 0])
            seen[:, col] = x
            if group:
                y = x / den
                q = torch.copysign(grid[torch.bucketize(y.abs(), edges)], y) * mul
            else:
                q = fp8_encode(x, s_fp8)[1]
            err = (x - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if scheme == "fp8":
        return PackedWeight(scheme, fp8_encode(seen, s_fp8)[0], s_fp8, None, input_scale)
    if scheme == "mxfp4":
        return PackedWeight(scheme, pack_e2m1(mxfp4_encode(seen, scales)[0]), scales)
    return PackedWeight(scheme, pack_e2m1(nvfp4_encode(seen, scales, G)[0]), scales, G, input_scale)

