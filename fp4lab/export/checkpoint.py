"""Quantized checkpoints in memory: one `PackedWeight` per quantized linear layer, plus every other tensor.

The same in-memory form is written as compressed-tensors or as ModelOpt (fp4lab/export/dialects.py);
reading either back gives it again, so `convert` is read-then-write and round trips are exact.
NVFP4 global scales are kept as compressed-tensors *encode* factors G = 2688/amax (fp32, 0-dim); the
ModelOpt decode factor is fp32(1/G) (fp4lab/export/scales.py explains why that is exact both ways).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCHEMES = ("nvfp4a16", "nvfp4", "mxfp4", "fp8")
NVFP4_BLOCK = 16
MXFP4_BLOCK = 32


@dataclass
class PackedWeight:
    """One quantized linear weight [out, in] as stored in a checkpoint.

    nvfp4(a16): data = E2M1 codes uint8 [out, in/2] (low nibble first), scales = E4M3 [out, in/16],
                global_scale = encode factor G (fp32 0-dim); value = code * fp32(scale / G).
    mxfp4:      data = E2M1 codes uint8 [out, in/2], scales = E8M0 exponents uint8 [out, in/32].
    fp8:        data = float8_e4m3fn [out, in], scales = fp32 0-dim decode scale.
    input_scale: nvfp4 -> activation encode factor G_in (fp32 0-dim); fp8 -> activation decode scale.
    """

    scheme: str
    data: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.data.shape
        return (rows, cols * 2) if self.scheme != "fp8" else (rows, cols)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """Decode in the checkpoint's own arithmetic (compressed-tensors' for NVFP4: q * fp32(s / G))."""
        from fp4lab.formats.e2m1 import e2m1_to_float, unpack_e2m1

        if self.scheme == "fp8":
            return (self.data.float() * self.scales.float()).to(dtype)
        values = e2m1_to_float(unpack_e2m1(self.data))
        if self.scheme == "mxfp4":
            block = MXFP4_BLOCK
            factor = torch.exp2(self.scales.to(torch.int32).float() - 127)
        else:
            block = NVFP4_BLOCK
            # a 1-element tensor divisor, as compressed-tensors has it: fp32 arithmetic
            factor = self.scales.float() / self.global_scale.float().reshape(1)
        out = (values.unflatten(-1, (-1, block)) * factor.unsqueeze(-1)).flatten(-2)
        return out.to(dtype)

    def to_formats(self):
        """The fp4lab.formats tensor with the same decode, or None if the global scale has no exact amax."""
        from fp4lab.formats import MXFP4Tensor, NVFP4Tensor

        if self.scheme == "mxfp4":
            return MXFP4Tensor(self.data, self.scales, torch.Size(self.shape), "floor")
        if self.scheme == "fp8":
            return None
        from fp4lab.export.scales import amax_for_encode_scale

        amax = amax_for_encode_scale(self.global_scale)
        if amax is None:
            return None
        return NVFP4Tensor(self.data, self.scales, amax, torch.Size(self.shape), "compressed-tensors", False)


@dataclass
class QuantizedCheckpoint:
    """A quantized causal LM: model config, the quantized layers, every other tensor, the ignore list."""

    config: dict  # config.json without quantization_config
    scheme: str
    layers: dict[str, PackedWeight]  # module name -> weight
    tensors: dict[str, torch.Tensor]  # unquantized tensors (embeddings, norms, biases, lm_head)
    ignore: list[str] = field(default_factory=list)  # linear layers kept in high precision


WEIGHT_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODELOPT_CONFIG_FILE = "hf_quant_config.json"


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    return json.loads(path.read_text())


def load_safetensors_dir(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of every *.safetensors file in `model_dir` (sharded or not)."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            if name in tensors:
                raise ValueError(f"{model_dir}: tensor {name} appears in more than one safetensors file")
            tensors[name] = t
    return tensors


def detect_format(model_dir: str | Path) -> str | None:
    """'compressed-tensors', 'modelopt' or None (an unquantized model)."""
    config = read_config(model_dir)
    qc = config.get("quantization_config") or {}
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        return "compressed-tensors"
    if method == "modelopt" or (Path(model_dir) / MODELOPT_CONFIG_FILE).is_file():
        return "modelopt"
    if qc:
        raise ValueError(f"{model_dir}: unsupported quantization_config quant_method {method!r}")
    return None
