"""Triton kernels for NVFP4/MXFP4 quantization; each wrapper falls back to fp4lab.formats off-GPU.

CUDA tensors run fused Triton kernels that never synchronize with the host; anything else calls the
pure-PyTorch reference composition (``formats.quantize_nvfp4(random_hadamard_16(x.T)) ...``). The
``*_triton`` functions run the kernels on any device (CPU tensors under ``TRITON_INTERPRET=1``).
"""
from fp4lab.kernels.amax import amax, amax_triton
from fp4lab.kernels.fp8 import fake_quantize_fp8_tensor, fp8_tensor_fake_triton
from fp4lab.kernels.mxfp4 import fake_quantize_mxfp4, mxfp4_fake_triton
from fp4lab.kernels.nvfp4 import (
    amax_parts_nvfp4, dequantize_nvfp4, dequantize_nvfp4_triton, fake_quantize_nvfp4, nvfp4_triton, quantize_nvfp4,
)
from fp4lab.kernels.nvfp4_dual import nvfp4_dual_triton, quantize_nvfp4_rowwise_and_columnwise

__all__ = [
    "amax", "amax_parts_nvfp4", "amax_triton", "dequantize_nvfp4", "dequantize_nvfp4_triton",
    "fake_quantize_fp8_tensor", "fake_quantize_mxfp4", "fake_quantize_nvfp4", "fp8_tensor_fake_triton",
    "mxfp4_fake_triton", "nvfp4_dual_triton", "nvfp4_triton", "quantize_nvfp4",
    "quantize_nvfp4_rowwise_and_columnwise",
]
