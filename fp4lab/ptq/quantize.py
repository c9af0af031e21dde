"""Post-training quantization of a Hugging Face causal LM: pick the linear layers, calibrate, quantize
each weight (RTN or GPTQ, optionally Four Over Six) and return/write a quantized checkpoint.

Fused projections (q/k/v and gate/up of one block) share one NVFP4 global scale (the max of the members'
amax; vLLM fuses them into one GEMM with one scale) and one activation scale. lm_head is excluded by
default; embeddings are not nn.Linear and are never quantized.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fp4lab.export.checkpoint import SCHEMES, PackedWeight, QuantizedCheckpoint, load_safetensors_dir, read_config
from fp4lab.export.scales import ct_encode_scale, exportable_amax
from fp4lab.ptq.calibrate import calibration_windows, collect_stats
from fp4lab.ptq.gptq import gptq_quantize
from fp4lab.ptq.weights import fp8_scale, quantize_weight_rtn

METHODS = ("rtn", "gptq")
FUSED = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})
BLOCKS = {"nvfp4a16": 16, "nvfp4": 16, "mxfp4": 32, "fp8": 1}


@dataclass(frozen=True)
class PTQConfig:
    scheme: str = "nvfp4a16"
    method: str = "rtn"
    four_over_six: bool = False
    ignore: tuple[str, ...] = ("lm_head",)  # regexes, matched (re.search) against module names
    calib_samples: int = 128
    calib_len: int = 512
    damp: float = 0.01
    block_size: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"--scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.four_over_six and not self.scheme.startswith("nvfp4"):
            raise ValueError(f"--four-over-six applies to NVFP4 schemes only, not {self.scheme}")

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq" or self.scheme in ("nvfp4", "fp8")


def select_layers(model: nn.Module, config: PTQConfig) -> tuple[list[str], list[str]]:
    """(linear layers to quantize, linear layers left in high precision)."""
    chosen, ignored = [], []
    block = BLOCKS[config.scheme]
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if any(re.search(p, name) for p in config.ignore) or (tied and name == "lm_head"):
            ignored.append(name)
        elif m.in_features % block:
            warnings.warn(f"{name}: in_features {m.in_features} is not a multiple of {block}; kept in high precision")
            ignored.append(name)
        else:
            chosen.append(name)
    return chosen, ignored


def fused_groups(names: list[str]) -> list[list[str]]:
    """Layers that share a global scale: q/k/v and gate/up of the same parent; everything else alone."""
    groups: dict[tuple, list[str]] = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        key = next(((parent, i) for i, fam in enumerate(FUSED) if leaf in fam), (n,))
        groups.setdefault(key, []).append(n)
    return list(groups.values())


@torch.no_grad()
def quantize_model(model: nn.Module, config: PTQConfig, calib_ids: torch.Tensor | None = None,
                   progress=None, weights: dict[str, torch.Tensor] | None = None
                   ) -> tuple[dict[str, PackedWeight], list[str], dict]:
    """Quantize the linear layers of `model` (not modified). Returns (layers, ignored names, stats).

    `weights` ({"<layer>.weight": tensor}) gives the exact original weights when the model itself runs in a
    lower precision (BF16 calibration on GPU); by default the model's own weights are quantized."""
    names, ignored = select_layers(model, config)
    if not names:
        raise ValueError("no linear layer to quantize (all ignored?)")
    stats = {}
    if config.needs_calibration:
        if calib_ids is None:
            why = ("GPTQ needs a Hessian" if config.method == "gptq"
                   else f"{config.scheme} needs static activation scales")
            raise ValueError(f"{why}: pass calibration data (--calib FILE)")
        windows = calibration_windows(calib_ids, config.calib_samples, config.calib_len, config.seed)
        stats = collect_stats(model, windows, names, hessian=config.method == "gptq")
    layers: dict[str, PackedWeight] = {}
    for group in fused_groups(names):
        own = {n: model.get_submodule(n).weight.detach() for n in group}
        ws = {n: (own[n] if weights is None else weights[f"{n}.weight"].to(own[n].device)).float() for n in group}
        w_amax = max(w.abs().amax() for w in ws.values())
        input_scale = None
        if config.scheme == "nvfp4":
            input_scale = ct_encode_scale(exportable_amax(max(stats[n]["amax"].cpu() for n in group)))
        elif config.scheme == "fp8":
            input_scale = fp8_scale(max(stats[n]["amax"].cpu() for n in group))
        for n in group:
            kw = dict(global_amax=w_amax.cpu() if config.scheme.startswith("nvfp4") else None,
                      four_over_six=config.four_over_six, input_scale=input_scale)
            if config.method == "gptq":
                pw = gptq_quantize(ws[n], stats[n]["H"], config.scheme, block_size=config.block_size,
                                   damp=config.damp, **kw)
            else:
                pw = quantize_weight_rtn(ws[n], config.scheme, **kw)
            layers[n] = _to_cpu(pw)
            if progress:
                progress(n)
    return layers, ignored, stats


def _to_cpu(w: PackedWeight) -> PackedWeight:
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return PackedWeight(w.scheme, cpu(w.data), cpu(w.scales), cpu(w.global_scale), cpu(w.input_scale))


def load_model_for_ptq(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """The unquantized model in fp32 on CPU (bf16 on CUDA) for calibration."""
    from transformers import AutoModelForCausalLM

    dtype = dtype or (torch.float32 if str(device) == "cpu" else torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()


def quantize_dir(model_dir: str | Path, out_dir: str | Path, config: PTQConfig, *, calib_ids=None,
                 fmt: str = "compressed-tensors", device: str = "cpu", progress=None) -> Path:
    """`fp4lab quantize`: read a BF16 HF directory, quantize, write `fmt` to out_dir (tokenizer etc. copied)."""
    from fp4lab.export.checkpoint import detect_format
    from fp4lab.export.dialects import write_checkpoint

    if detect_format(model_dir) is not None:
        raise ValueError(f"{model_dir} is already quantized; quantize the original high-precision model")
    if fmt == "modelopt" and config.scheme not in ("nvfp4", "fp8"):
        raise ValueError(f"ModelOpt has no layout for {config.scheme}: use --format compressed-tensors")
    model = load_model_for_ptq(model_dir, device)
    originals = load_safetensors_dir(model_dir)
    layers, ignored, _ = quantize_model(model, config, calib_ids, progress, weights=originals)
    tensors = {k: v for k, v in originals.items() if k[: -len(".weight")] not in layers or not k.endswith(".weight")}
    ckpt = QuantizedCheckpoint(read_config(model_dir), config.scheme, layers, tensors, ignored)
    return write_checkpoint(ckpt, out_dir, fmt, source_dir=model_dir)
