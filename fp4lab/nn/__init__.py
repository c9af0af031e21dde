"""Quantized modules: QuantLinear (training recipes), convert / set_recipe / describe, NVFP4Linear (inference)."""
from fp4lab.nn._ops import GemmPlan, OperandQuant, gemm_plan
from fp4lab.nn.convert import convert, find_blocks, quant_linears, set_recipe
from fp4lab.nn.debug import NonFiniteError, debug_nonfinite
from fp4lab.nn.describe import describe, layer_rows
from fp4lab.nn.quant_linear import QuantLinear, quant_linear

__all__ = [
    "QuantLinear", "quant_linear", "convert", "set_recipe", "describe", "layer_rows", "find_blocks",
    "quant_linears", "debug_nonfinite", "NonFiniteError", "GemmPlan", "OperandQuant", "gemm_plan",
]

try:  # the inference module lives in its own file (W4A16 kernels)
    from fp4lab.nn.nvfp4_linear import NVFP4Linear  # noqa: F401

    __all__.append("NVFP4Linear")
except ImportError:
    pass
