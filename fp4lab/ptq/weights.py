"""Weight quantizers for PTQ: one linear weight [out, in] -> a checkpoint `PackedWeight`.

NVFP4 uses the compressed-tensors op order of fp4lab.formats (scale s = e4m3(G * amax_b / 6),
y = x / fp32(s / G), decode q * fp32(s / G)) so that what we export is what compressed-tensors decodes.
Four Over Six (per block: map the block max to 6 or to 4, keep whichever has the lower squared error)
only changes which E4M3 scale a block stores, so any NVFP4 decoder reads it unchanged.
"""
from __future__ import annotations

import torch

from fp4lab.export.checkpoint import PackedWeight
from fp4lab.export.scales import ct_encode_scale, exportable_amax
from fp4lab.formats.e2m1 import E2M1_MAX, e2m1_to_float, pack_e2m1, round_to_e2m1
from fp4lab.formats.nvfp4 import to_e4m3

NVFP4_BLOCK = 16
MXFP4_BLOCK = 32
E4M3_MAX = 448.0
FLT_MAX = torch.finfo(torch.float32).max


def nvfp4_scales(block_amax: torch.Tensor, G: torch.Tensor, target: float = 6.0) -> torch.Tensor:
    """E4M3 block scales mapping each block max to `target` (6: standard; 4: the Four Over Six alternative)."""
    return to_e4m3(G * (block_amax / torch.tensor(target)))


def nvfp4_encode(x: torch.Tensor, scales: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8, unpacked) and decoded fp32 values of x [..., nb*16] with fixed scales [..., nb].

    A zero scale encodes with FLT_MAX (as fp4lab.formats / TE): zeros stay 0, the rest saturate, all decode to 0.
    """
    xb = x.float().unflatten(-1, (-1, NVFP4_BLOCK))
    den, divisor = (t.unsqueeze(-1) for t in nvfp4_steps(scales, G))
    y = torch.where(divisor == 0, xb * FLT_MAX, xb / den).clamp(-E2M1_MAX, E2M1_MAX)
    codes = round_to_e2m1(y.flatten(-2))
    deq = (e2m1_to_float(codes).unflatten(-1, (-1, NVFP4_BLOCK)) * divisor).flatten(-2)
    return codes, deq


def nvfp4_steps(scales: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(what x is divided by, what a grid value is multiplied by) per block: fp32(s / G) both, except that
    a zero scale divides by 1 (and decodes to 0)."""
    d = scales.float() / G
    return torch.where(d == 0, 1.0, d), d


def choose_nvfp4_scales(x: torch.Tensor, G: torch.Tensor, four_over_six: bool = False) -> torch.Tensor:
    """Block scales for x [..., nb*16]: the standard ones, or per block the better of the 6- and 4-mappings.

    With a shared global scale the largest blocks cannot map to 4 (their scale would exceed 448 and clamps
    back to the 6-mapping), so Four Over Six never does worse than standard NVFP4 on any block.
    """
    xb = x.float().unflatten(-1, (-1, NVFP4_BLOCK))
    amax_b = xb.abs().amax(-1)
    s6 = nvfp4_scales(amax_b, G, 6.0)
    if not four_over_six:
        return s6
    s4 = nvfp4_scales(amax_b, G, 4.0)
    err = [((nvfp4_encode(x, s, G)[1] - x.float()).unflatten(-1, (-1, NVFP4_BLOCK)) ** 2).sum(-1) for s in (s6, s4)]
    return torch.where(err[1] < err[0], s4.float(), s6.float()).to(torch.float8_e4m3fn)


def nvfp4_global(weight_amax: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(exportable amax, encode factor G) for a tensor (or fused group) amax."""
    a = exportable_amax(weight_amax)
    return a, ct_encode_scale(a)


def mxfp4_scale_bytes(x: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes of x [..., nb*32] (OCP floor rule, as fp4lab.formats.quantize_mxfp4)."""
    from fp4lab.formats import quantize_mxfp4

    return quantize_mxfp4(x.float(), scale_rule="floor").scales


def mxfp4_encode(x: torch.Tensor, scale_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and decoded values of x [..., nb*32] with fixed E8M0 scales (y = x / 2^(e-127), floor rule)."""
    xb = x.float().unflatten(-1, (-1, MXFP4_BLOCK))
    div, mul = (t.unsqueeze(-1) for t in mxfp4_steps(scale_bytes))
    codes = round_to_e2m1((xb / div).clamp(-E2M1_MAX, E2M1_MAX).flatten(-2))
    deq = e2m1_to_float(codes).unflatten(-1, (-1, MXFP4_BLOCK)) * mul
    return codes, deq.flatten(-2)


def mxfp4_steps(scale_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(divide by, multiply the grid value by) per block: 2^(e-127), the divisor at least 2^-126 as in
    fp4lab.formats (never a division by 0)."""
    e = scale_bytes.to(torch.int32)
    return (e << 23).view(torch.float32).clamp(min=2.0**-126), torch.exp2(e.float() - 127)


def fp8_encode(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, q.float() * scale


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor decode scale amax / 448 (1 for an all-zero tensor), as fp4lab.formats.quantize_fp8."""
    amax = torch.as_tensor(amax, dtype=torch.float32).reshape(())
    return torch.where(amax == 0, torch.tensor(1.0), amax / torch.tensor(E4M3_MAX))


def quantize_weight_rtn(w: torch.Tensor, scheme: str, *, global_amax=None, four_over_six: bool = False,
                        input_scale: torch.Tensor | None = None) -> PackedWeight:
    """Round-to-nearest quantization of one weight. `global_amax`: the (fused-group) amax for NVFP4."""
    w = w.detach().float()
    if scheme in ("nvfp4", "nvfp4a16"):
        amax, G = nvfp4_global(w.abs().amax() if global_amax is None else global_amax)
        if four_over_six:
            scales = choose_nvfp4_scales(w, G, True)
            codes = pack_e2m1(nvfp4_encode(w, scales, G)[0])
        else:
            from fp4lab.formats import quantize_nvfp4

            t = quantize_nvfp4(w, global_amax=amax, scale_order="compressed-tensors")
            codes, scales = t.codes, t.scales
        return PackedWeight(scheme, codes, scales, G, input_scale)
    if four_over_six:
        raise ValueError(f"--four-over-six applies to NVFP4 only, not {scheme}")
    if scheme == "mxfp4":
        from fp4lab.formats import quantize_mxfp4

        t = quantize_mxfp4(w, scale_rule="floor")
        return PackedWeight(scheme, t.codes, t.scales)
    if scheme == "fp8":
        s = fp8_scale(w.abs().amax())
        return PackedWeight(scheme, fp8_encode(w, s)[0], s, None, input_scale)
    raise ValueError(f"unknown scheme {scheme!r}")
