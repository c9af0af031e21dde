"""`load_quantized(DIR)`: a compressed-tensors or ModelOpt checkpoint -> a torch model that runs.

On CUDA, NVFP4 weights become `fp4lab.nn.NVFP4Linear` (the W4A16 Triton kernel) when that module exists
and the global scale maps back to an exact fp4lab.formats tensor. Elsewhere (and with use_kernel=False)
they become an nn.Linear holding the dequantized weight q * fp32(scale / G), compressed-tensors' own
decode, bit for bit. W4A4 (nvfp4) and W8A8 (fp8)
checkpoints also fake-quantize each layer's input with its static activation scale, as vLLM does.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fp4lab.export.checkpoint import PackedWeight, detect_format, read_config
from fp4lab.export.dialects import read_checkpoint


def _nvfp4_linear_class():
    try:
        from fp4lab.nn.nvfp4_linear import NVFP4Linear
    except ImportError:
        return None
    return NVFP4Linear


def _build_model(config: dict, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ValueError("config.json has no model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)


def input_quantizer(w: PackedWeight):
    """A forward pre-hook that fake-quantizes a layer's input with the checkpoint's static scale, or None."""
    if w.scheme == "nvfp4":
        from fp4lab.export.scales import amax_for_encode_scale
        from fp4lab.kernels import fake_quantize_nvfp4

        amax = amax_for_encode_scale(w.input_scale)
        if amax is None:  # a foreign scale with no exact amax: the nearest one decodes within an ulp
            amax = torch.tensor(2688.0) / w.input_scale

        def hook(module, args):  # the fused Triton kernel on CUDA (no host sync), fp4lab.formats elsewhere
            x = args[0]
            return (fake_quantize_nvfp4(x, global_amax=amax.to(x.device), scale_order="compressed-tensors"),
                    ) + tuple(args[1:])

        return hook
    if w.scheme == "fp8":
        scale = w.input_scale

        def hook(module, args):
            x = args[0]
            s = scale.to(x.device)
            q = (x.float() / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
            return ((q.float() * s).to(x.dtype),) + tuple(args[1:])

        return hook
    return None


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def load_quantized(model_dir: str | Path, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.bfloat16, use_kernel: bool | None = None) -> nn.Module:
    """Load a quantized (or plain BF16) Hugging Face causal-LM directory into a runnable model (eval mode)."""
    model_dir = Path(model_dir)
    if detect_format(model_dir) is None:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    ckpt, fmt = read_checkpoint(model_dir)
    model = _build_model(ckpt.config, dtype)
    where = str(model_dir)

    # unquantized tensors: every parameter not owned by a quantized layer must be in the file
    expected = dict(model.state_dict())
    quant_weights = {f"{m}.weight" for m in ckpt.layers}
    unknown = [n for n in ckpt.tensors if n not in expected]
    if unknown:
        raise ValueError(f"{where}: tensor(s) not in the model: {unknown[:5]}")
    for name, t in ckpt.tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ValueError(f"{where}: tensor {name} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(expected[name].shape)}")
    model.load_state_dict(ckpt.tensors, strict=False)
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [n for n in expected if n not in ckpt.tensors and n not in quant_weights
               and not (tied and n == "lm_head.weight")]
    if missing:
        raise ValueError(f"{where}: missing tensor(s) {missing[:5]}")

    if use_kernel is None:  # the kernel pays off on CUDA; on CPU a dense weight is faster and exact
        use_kernel = torch.device(device).type == "cuda"
    linear_cls = _nvfp4_linear_class() if use_kernel else None
    if use_kernel and linear_cls is None and any(w.scheme.startswith("nvfp4") for w in ckpt.layers.values()):
        warnings.warn("fp4lab.nn.nvfp4_linear is not available: NVFP4 layers run as dequantized nn.Linear")
    for name, w in ckpt.layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: quantized layer {name} is not a module of the model") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{where}: {name} is a {type(module).__name__}, not a Linear layer")
        if tuple(w.shape) != (module.out_features, module.in_features):
            pname = "weight" if fmt == "modelopt" or w.scheme == "fp8" else "weight_packed"
            raise ValueError(
                f"{where}: tensor {name}.{pname} of shape {tuple(w.data.shape)} holds a [{w.shape[0]}, {w.shape[1]}] "
                f"weight, but {name} is Linear({module.in_features} -> {module.out_features})")
        new = None
        if linear_cls is not None and w.scheme.startswith("nvfp4"):
            t = w.to_formats()
            if t is not None:
                new = linear_cls.from_nvfp4(t, bias=module.bias.data if module.bias is not None else None)
        if new is None:
            module.weight.data = w.dequantize(dtype)
            new = module
        hook = input_quantizer(w)
        if hook is not None:
            new.register_forward_pre_hook(hook)
        parent, child = _get_parent(model, name)
        setattr(parent, child, new)
    if tied:
        model.tie_weights()
    model.fp4lab_scheme = ckpt.scheme
    return model.to(device).eval()


def model_scheme(model_dir: str | Path) -> str:
    """'bf16' for an unquantized directory, else the checkpoint's scheme."""
    if detect_format(model_dir) is None:
        return str(read_config(model_dir).get("torch_dtype", "bf16"))
    return read_checkpoint(model_dir)[0].scheme
