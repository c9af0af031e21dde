"""Reference numerics in pure PyTorch: NVFP4, MXFP4, FP8, the 16x16 RHT and fake quantization.

Everything else in fp4lab (Triton kernels, the training recipe, PTQ and export) is tested against
these functions. See docs/formats.md for the conventions and how they compare with the peers.
"""
from fp4lab.formats.e2m1 import E2M1_MAX, E2M1_VALUES, e2m1_to_float, pack_e2m1, round_to_e2m1, unpack_e2m1
from fp4lab.formats.fake import FORMATS, fake_quantize
from fp4lab.formats.fp8 import FP8_MAX, FP8Tensor, quantize_fp8
from fp4lab.formats.hadamard import RHT_SIGN_MASK, RHT_SIGNS, hadamard_16, random_hadamard_16, rht_matrix
from fp4lab.formats.mxfp4 import MXFP4Tensor, quantize_mxfp4
from fp4lab.formats.nvfp4 import SCALE_ORDERS, NVFP4Tensor, ct_global_scale, dequantize_nvfp4, quantize_nvfp4, to_e4m3

__all__ = [
    "E2M1_MAX", "E2M1_VALUES", "FORMATS", "FP8_MAX", "FP8Tensor", "MXFP4Tensor", "NVFP4Tensor",
    "RHT_SIGNS", "RHT_SIGN_MASK", "SCALE_ORDERS", "ct_global_scale", "dequantize_nvfp4", "e2m1_to_float", "fake_quantize",
    "hadamard_16", "pack_e2m1", "quantize_fp8", "quantize_mxfp4", "quantize_nvfp4", "random_hadamard_16",
    "rht_matrix", "round_to_e2m1", "to_e4m3", "unpack_e2m1",
]
