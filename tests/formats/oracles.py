"""The peers' own code, called the way their users call it: the oracles of the conformance suite."""
import warnings

import torch

warnings.filterwarnings("ignore")


def torchao_nvfp4(x: torch.Tensor):
    """torchao nvfp4_quantize with per_tensor_amax_to_scale: (scale bytes, packed bytes)."""
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

    amax = x.float().abs().amax()
    scales, packed = nvfp4_quantize(x.contiguous(), per_tensor_scale=per_tensor_amax_to_scale(amax))
    return scales.view(torch.uint8), packed.view(torch.uint8)


def ct_nvfp4(x: torch.Tensor):
    """compressed-tensors' NVFP4 path on an fp32 tensor [M, K]: (scale bytes, packed bytes, global scale)."""
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = preset_name_to_scheme("NVFP4A16", ["Linear"]).weights
    x = x.float()
    gs = generate_gparam(x.min(), x.max())
    xb = x.view(x.shape[0], -1, 16)
    scale, _ = calculate_qparams(xb.amin(-1), xb.amax(-1), args, global_scale=gs)
    packed = quantize_and_pack_fp4(x, scale, gs)
    return scale.to(torch.float8_e4m3fn).view(torch.uint8), packed, gs


def torchao_mxfp4(x: torch.Tensor, rule: str):
    """torchao to_mx with float4_e2m1fn_x2 elements: (E8M0 scale bytes, packed bytes)."""
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    mode = {"floor": ScaleCalculationMode.FLOOR, "rceil": ScaleCalculationMode.RCEIL}[rule]
    scales, packed = to_mx(x.contiguous(), torch.float4_e2m1fn_x2, 32, mode)
    return scales.view(torch.uint8), packed.view(torch.uint8)
