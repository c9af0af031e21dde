"""Global scales of NVFP4 checkpoints: encode factors (compressed-tensors) vs decode factors (ModelOpt).

compressed-tensors stores G = 2688 / amax (computed as fp32(fp32(1/amax) * 2688)); ModelOpt stores
g = amax / 2688. Converters (compressed-tensors' own ModelOpt converter, vLLM) turn one into the other
with a single fp32 reciprocal. About 11% of fp32 values x have fp32(1/fp32(1/x)) != x, so fp4lab nudges
the tensor amax up by a few ulps until G is "reciprocal-stable": then G -> 1/G -> G round-trips exactly,
which makes ModelOpt <-> compressed-tensors conversions byte-identical in both directions.
"""
from __future__ import annotations

import torch

from fp4lab.formats import ct_global_scale

FP4_MAX = 6.0
E4M3_MAX = 448.0
# a weight whose implied amax exceeds 6*448 means the global factor is most likely inverted: a decode
# factor read as an encode factor gives amax' = 2688^2 / amax (7.2e6 for amax = 1)
MAX_PLAUSIBLE_WEIGHT_AMAX = FP4_MAX * E4M3_MAX
# activations: beyond fp16's range is implausible (an inverted factor gives 2688^2/amax, > 65504 for amax < 110)
MAX_PLAUSIBLE_INPUT_AMAX = 65504.0


def ct_encode_scale(amax: torch.Tensor | float) -> torch.Tensor:
    """compressed-tensors' encode factor G = fp32(fp32(1/amax) * 2688) (PyTorch evaluates `2688 / t` as a
    reciprocal times 2688); 1 for an all-zero tensor. The same arithmetic as fp4lab.formats'
    "compressed-tensors" order (tests/export checks the decoded weights against it bit for bit)."""
    return ct_global_scale(torch.as_tensor(amax, dtype=torch.float32).reshape(()))


def reciprocal(x: torch.Tensor) -> torch.Tensor:
    """fp32 1/x, as compressed-tensors' converter and vLLM compute it (`1 / t`)."""
    return 1 / x.float()


def is_reciprocal_stable(g: torch.Tensor) -> bool:
    return bool(reciprocal(reciprocal(g)) == g)


def exportable_amax(amax: torch.Tensor | float, max_steps: int = 256) -> torch.Tensor:
    """The smallest fp32 a >= amax whose encode factor G(a) is reciprocal-stable (see module docstring).

    a grows by at most a few ulps (relative change < 1e-5), so no element needs a larger code.
    """
    a = torch.as_tensor(amax, dtype=torch.float32).reshape(()).clone()
    if not bool(torch.isfinite(a)) or float(a) < 0:
        raise ValueError(f"tensor amax must be finite and >= 0, got {float(a)}")
    if float(a) == 0:
        return a  # all-zero tensor: G = 1 (formats' convention), stable
    inf = torch.tensor(float("inf"))
    for _ in range(max_steps):
        if is_reciprocal_stable(ct_encode_scale(a)):
            return a
        a = torch.nextafter(a, inf)
    raise RuntimeError(f"no reciprocal-stable global scale within {max_steps} ulps of amax={float(amax)}")


def amax_for_encode_scale(g: torch.Tensor, max_ulps: int = 16) -> torch.Tensor | None:
    """An fp32 amax a with ct_encode_scale(a) == g exactly, or None if there is none nearby."""
    g = torch.as_tensor(g, dtype=torch.float32).reshape(())
    a0 = torch.tensor(2688.0) / g
    up, down = a0.clone(), a0.clone()
    inf = torch.tensor(float("inf"))
    for _ in range(max_ulps):
        for a in (up, down):
            if bool(ct_encode_scale(a) == g):
                return a
        up, down = torch.nextafter(up, inf), torch.nextafter(down, -inf)
    if float(g) == 1.0:
        return torch.zeros(())  # formats gives G = 1 for an all-zero tensor
    return None
