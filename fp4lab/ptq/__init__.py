"""Post-training quantization (RTN, GPTQ, Four Over Six), perplexity evaluation and quantization diagnostics."""
from importlib import import_module

_LAZY = {
    "PTQConfig": "fp4lab.ptq.quantize",
    "quantize_model": "fp4lab.ptq.quantize",
    "quantize_dir": "fp4lab.ptq.quantize",
    "gptq_quantize": "fp4lab.ptq.gptq",
    "quantize_weight_rtn": "fp4lab.ptq.weights",
    "perplexity": "fp4lab.ptq.eval",
    "load_tokens": "fp4lab.ptq.eval",
    "inspect_model": "fp4lab.ptq.inspect",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fp4lab.ptq' has no attribute {name!r}")
