"""Quantized checkpoints: compressed-tensors and ModelOpt writers/readers, conversion, `load_quantized`."""
from importlib import import_module

_LAZY = {
    "load_quantized": "fp4lab.export.load",
    "read_checkpoint": "fp4lab.export.dialects",
    "write_checkpoint": "fp4lab.export.dialects",
    "convert_checkpoint": "fp4lab.export.convert",
    "PackedWeight": "fp4lab.export.checkpoint",
    "QuantizedCheckpoint": "fp4lab.export.checkpoint",
    "detect_format": "fp4lab.export.checkpoint",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fp4lab.export' has no attribute {name!r}")
