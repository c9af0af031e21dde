"""fp4lab: NVFP4 / MXFP4 / FP8 formats, emulated 4-bit training and post-training quantization.

The heavy submodules are imported lazily so that ``import fp4lab`` (and ``fp4lab --help``) stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "quantize_nvfp4": "fp4lab.formats",
    "quantize_mxfp4": "fp4lab.formats",
    "quantize_fp8": "fp4lab.formats",
    "fake_quantize": "fp4lab.formats",
    "NVFP4Tensor": "fp4lab.formats",
    "RecipeConfig": "fp4lab.recipes",
    "get_recipe": "fp4lab.recipes",
    "convert": "fp4lab.nn",
    "describe": "fp4lab.nn",
    "set_recipe": "fp4lab.nn",
    "load_quantized": "fp4lab.export",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fp4lab' has no attribute {name!r}")
