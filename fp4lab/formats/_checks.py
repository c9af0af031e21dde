"""Input validation shared by every quantizer: dtype, non-finite values, block padding."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NONFINITE_MODES = ("raise", "propagate")


def check_input(x: torch.Tensor, where: str, nonfinite: str = "raise") -> None:
    """Raise TypeError for non-float input and ValueError (naming the flat index) for NaN/Inf."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise TypeError(
            f"{where}: input must be float32, bfloat16, float16 or float64, got {x.dtype}"
        )
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"{where}: nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    if nonfinite == "raise" and x.numel():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = int(bad.flatten().nonzero()[0])
            value = x.flatten()[idx].item()
            raise ValueError(
                f"{where}: input has a non-finite value ({value}) at flat index {idx} of a tensor of "
                f"shape {tuple(x.shape)}; pass nonfinite='propagate' to quantize it anyway (the "
                f"result is then NaN everywhere)"
            )


def pad_to_multiple(x: torch.Tensor, block: int, dim: int = -1) -> torch.Tensor:
    """Zero-pad `dim` up to a multiple of `block` (zeros never change a block's amax)."""
    n = x.shape[dim]
    extra = (-n) % block
    if not extra:
        return x
    dim = dim % x.ndim
    pad = [0, 0] * (x.ndim - 1 - dim) + [0, extra]
    return F.pad(x, pad)


def const(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim fp32 tensor on `like`'s device.

    Dividing by it instead of by a Python float keeps the arithmetic a true fp32 division on every
    device: for a Python scalar divisor CUDA's kernel multiplies by the reciprocal instead, which can
    differ in the last bit and so flip a scale byte.
    """
    return torch.tensor(value, dtype=torch.float32, device=like.device).reshape(1).squeeze()
