"""NVFP4: E2M1 elements, one E4M3 decode scale per 16 elements, one FP32 amax per tensor.

value = e2m1(code) * e4m3(scale_block) * g, with the global decode factor g = amax / (6 * 448)
(spec §2). Three reference op orders are implemented bit-exactly (spec §2.2, §2.5):

* ``"torchao"`` — torchao ``nvfp4_quantize`` with ``per_tensor_amax_to_scale`` (also TE <= 2.13):
  g = fp32(amax / 2688); s = e4m3(fp32(fp32(amax_b / 6) / g)); y = x * fp32(fp32(1 / g) / s);
  decode q * fp32(g * s).
* ``"te"`` — Transformer Engine >= 2.14: S = fp32(2688 / amax); s = e4m3(amax_b * fp32(S * fp32(1/6)));
  y = x * fp32(1 / fp32(s * fp32(1 / S))); decode q * fp32(fp32(s * amax) * fp32(1/2688)).
* ``"compressed-tensors"`` — llm-compressor / compressed-tensors on fp32 tensors:
  G = fp32(fp32(1 / amax) * 2688) (PyTorch evaluates ``2688 / t`` as a reciprocal times 2688);
  s = e4m3(fp32(G * fp32(amax_b / 6))); y = x / fp32(s / G); decode q * fp32(s / G).

Zero and tiny scales follow TE in all three orders (spec §2.4): an all-zero tensor gives scales 0x00,
codes 0 and never NaN; a block whose scale rounds to 0 (or to an E4M3 subnormal) keeps it, and its
elements are encoded with the factor FLT_MAX (a zero scale decodes to 0 whatever the codes). This is
where the torchao order differs from torchao itself, which clamps scales to >= 2^-6 and returns NaN
scales (0xFF) for an all-zero tensor; compressed-tensors replaces a zero scale by 0.125.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4lab.formats._checks import check_input, const, pad_to_multiple
from fp4lab.formats.e2m1 import E2M1_MAX, e2m1_to_float, pack_e2m1, round_to_e2m1, unpack_e2m1

BLOCK = 16
E4M3_MAX = 448.0
FP32_MAX = torch.finfo(torch.float32).max
SCALE_ORDERS = ("torchao", "te", "compressed-tensors")


@dataclass
class NVFP4Tensor:
    """Packed NVFP4 data along the last dimension (padded to a multiple of 16; `shape` is logical)."""

    codes: torch.Tensor  # uint8 [..., Kp/2]
    scales: torch.Tensor  # float8_e4m3fn [..., Kp/16] (or [..., Mp, Kp/16] for 2D; tile scale replicated on its 16 rows)
    global_amax: torch.Tensor  # fp32, 0-dim
    shape: torch.Size
    scale_order: str = "torchao"
    block_2d: bool = False

    def global_decode_scale(self) -> torch.Tensor:
        """g such that value = e2m1(code) * float(scale) * g (up to the order's rounding of the product)."""
        amax = self.global_amax.float()
        if self.scale_order == "te":
            return amax * const(1.0 / 2688.0, amax)
        if self.scale_order == "compressed-tensors":
            return 1.0 / ct_global_scale(amax)
        return amax / const(2688.0, amax)

    def block_decode_scales(self) -> torch.Tensor:
        """fp32 per-block factor multiplying the E2M1 values, in the order's exact arithmetic."""
        s = self.scales.float()
        amax = self.global_amax.float()
        if self.scale_order == "te":
            return (s * amax) * const(1.0 / 2688.0, amax)
        if self.scale_order == "compressed-tensors":
            return s / ct_global_scale(amax)
        return (amax / const(2688.0, amax)) * s

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        values = e2m1_to_float(unpack_e2m1(self.codes))
        f = self.block_decode_scales()
        out = (values.unflatten(-1, (-1, BLOCK)) * f.unsqueeze(-1)).flatten(-2)
        return _crop(out, self.shape).to(dtype)

    def to(self, device) -> "NVFP4Tensor":
        return NVFP4Tensor(
            self.codes.to(device), self.scales.to(device), self.global_amax.to(device),
            self.shape, self.scale_order, self.block_2d,
        )

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + self.scales.numel() + 4


def _crop(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return x[tuple(slice(0, n) for n in shape)]


def ct_global_scale(amax: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' encode factor 2688/amax, computed as it is (reciprocal first, tiny clamp)."""
    tiny = torch.finfo(torch.float32).tiny
    g = torch.reciprocal(amax.clamp(min=tiny)) * 2688.0
    return torch.nan_to_num(g, nan=1.0, posinf=1.0, neginf=1.0)


def to_e4m3(sf: torch.Tensor) -> torch.Tensor:
    """Round fp32 scales to E4M3 (RNE); clamp at 448 first because torch's cast gives NaN above 464."""
    return sf.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)


def _block_amax(xb: torch.Tensor, block_2d: bool) -> torch.Tensor:
    """amax per 1x16 block ([..., R, nb]) or per 16x16 tile, replicated on the tile's 16 rows."""
    a = xb.abs().amax(-1)  # [..., R, nb]
    if not block_2d:
        return a
    tiles = a.unflatten(-2, (-1, BLOCK)).amax(-2)  # [..., R/16, nb]
    return tiles.repeat_interleave(BLOCK, dim=-2)


def _scales_and_factors(amax: torch.Tensor, block_amax: torch.Tensor, order: str):
    """E4M3 block scales and the fp32 element encode factor of each block, per op order."""
    if order == "te":
        s_enc = const(2688.0, amax) / amax
        s_enc = torch.where(s_enc > FP32_MAX, const(FP32_MAX, amax), s_enc)
        s_enc = torch.where((amax == 0) | (s_enc == 0), const(1.0, amax), s_enc)
        s_dec = const(1.0, amax) / s_enc
        scales = to_e4m3(block_amax * (s_enc * const(1.0 / 6.0, amax)))
        enc = const(1.0, amax) / (scales.float() * s_dec)
        enc = enc.clamp(max=FP32_MAX)
        return scales, enc, None
    if order == "torchao":
        g = amax / const(2688.0, amax)
        g = torch.where(amax == 0, const(1.0, amax), g)  # TE semantics for a zero tensor: scales 0, no NaN
        scales = to_e4m3((block_amax / const(6.0, amax)) / g)
        enc = torch.reciprocal(g) / scales.float()
        return scales, enc, None
    if order == "compressed-tensors":
        gs = ct_global_scale(amax)
        scales = to_e4m3(gs * (block_amax / const(6.0, amax)))
        # compressed-tensors divides: y = x / fp32(s / G)
        return scales, None, scales.float() / gs
    raise ValueError(f"scale_order must be one of {SCALE_ORDERS}, got {order!r}")


def quantize_nvfp4(
    x: torch.Tensor,
    *,
    block_2d: bool = False,
    global_amax: torch.Tensor | float | None = None,
    rounding: str = "nearest",
    scale_order: str = "torchao",
    generator: torch.Generator | None = None,
    nonfinite: str = "raise",
) -> NVFP4Tensor:
    """Quantize x to NVFP4 along its last dim (1x16 blocks, or 16x16 tiles over the last two dims).

    A last dim (and, for 2D, second-to-last dim) that is not a multiple of 16 is zero-padded internally;
    `shape` keeps the logical shape and `dequantize()` crops back to it. `global_amax` replaces the
    tensor amax (a static/calibrated scale; larger elements saturate to ±6 * scale, spec V8).
    `rounding="stochastic"` applies only to the elements; block scales are always round-to-nearest-even.
    NaN/Inf raise ValueError unless `nonfinite="propagate"`, in which case every scale is NaN.
    """
    check_input(x, "quantize_nvfp4", nonfinite)
    if scale_order not in SCALE_ORDERS:
        raise ValueError(f"scale_order must be one of {SCALE_ORDERS}, got {scale_order!r}")
    if x.ndim == 0 or (block_2d and x.ndim < 2):
        raise ValueError(f"quantize_nvfp4: need at least {2 if block_2d else 1} dims, got shape {tuple(x.shape)}")
    shape = x.shape
    xf = pad_to_multiple(x.float(), BLOCK, -1)
    if block_2d:
        xf = pad_to_multiple(xf, BLOCK, -2)
    if global_amax is None:
        amax = xf.abs().amax() if xf.numel() else torch.zeros((), device=x.device)
    else:
        amax = torch.as_tensor(global_amax, dtype=torch.float32, device=x.device).reshape(())
        if not bool(torch.isfinite(amax)) or float(amax) < 0:
            raise ValueError(f"quantize_nvfp4: global_amax must be finite and >= 0, got {float(amax)}")
    amax = amax.float()

    xb = xf.unflatten(-1, (-1, BLOCK))  # [..., R, nb, 16]
    scales, enc, divisor = _scales_and_factors(amax, _block_amax(xb, block_2d), scale_order)
    zero_scale = scales.float() == 0
    if divisor is None:
        # a zero scale encodes with FLT_MAX (TE): 0 stays 0, anything else saturates to ±6 (decodes to 0)
        enc = torch.where(zero_scale, const(FP32_MAX, amax), enc)
        y = xb * enc.unsqueeze(-1)
    else:
        y = torch.where(zero_scale.unsqueeze(-1), xb * FP32_MAX, xb / divisor.unsqueeze(-1))
    y = y.clamp(-E2M1_MAX, E2M1_MAX)
    codes = round_to_e2m1(y.flatten(-2), rounding, generator)
    if nonfinite == "propagate":
        scales = torch.where(torch.isfinite(amax), scales.float(), torch.nan).to(torch.float8_e4m3fn)
    return NVFP4Tensor(pack_e2m1(codes), scales, amax, shape, scale_order, block_2d)


def dequantize_nvfp4(t: NVFP4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return t.dequantize(dtype)
