"""NVFP4Linear: inference linear layer with NVFP4 weights and BF16 activations (W4A16).

y = x @ W^T + b with W = e2m1(code) * float(e4m3 scale) * g, g = the tensor's global decode scale.
On CUDA the product runs in the Triton kernel of fp4lab.kernels.w4a16 (fp32 accumulation, BF16
output); elsewhere it is `t.dequantize() + F.linear`, so the CPU result is the reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK = 16


class NVFP4Linear(nn.Module):
    """Weight-only NVFP4 linear layer; its state_dict holds the standard NVFP4 tensors.

    state_dict entries (standard fp4lab / compressed-tensors layout, Kp = in_features rounded up to 16):
      weight_packed       uint8 [N, Kp/2], element 2j in the low nibble
      weight_scale        float8_e4m3fn [N, Kp/16], per-16 *decode* scale (before g)
      weight_global_scale fp32 [], the *decode* factor g (compressed-tensors stores 1/g under this name)
      weight_global_amax  fp32 [], the tensor amax the scales were built from (for `to_nvfp4`)
      bias (optional), and the scale order in the extra state.
    In memory the codes and scales live only in the kernel layout (`weight_words` int32 [Kp/8, N],
    `weight_scale_t` uint8 scale codes [Kp/16, N], see fp4lab.kernels.w4a16.to_kernel_layout); the
    properties `weight_packed` / `weight_scale` rebuild the standard tensors (copies) on access. The codes
    of a block whose scale is 0 come back as zeros (they dequantize to 0 either way); negative scales
    are refused at load.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 device=None, scale_order: str = "torchao"):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scale_order = scale_order
        kp = -(-in_features // BLOCK) * BLOCK
        self.register_buffer("weight_words", torch.zeros(kp // 8, out_features, dtype=torch.int32, device=device),
                             persistent=False)
        self.register_buffer("weight_scale_t", torch.zeros(kp // BLOCK, out_features, dtype=torch.uint8,
                                                           device=device), persistent=False)
        self.register_buffer("weight_global_scale", torch.ones((), dtype=torch.float32, device=device))
        self.register_buffer("weight_global_amax", torch.full((), 2688.0, dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16, device=device))
        else:
            self.bias = None

    @classmethod
    def from_nvfp4(cls, t, bias: torch.Tensor | None = None) -> "NVFP4Linear":
        """Build from an NVFP4Tensor of logical shape [out_features, in_features] (1D or 2D blocks)."""
        if len(t.shape) != 2:
            raise ValueError(f"NVFP4Linear.from_nvfp4: weight must be 2-D [out, in], got shape {tuple(t.shape)}")
        n, k = t.shape
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(f"NVFP4Linear.from_nvfp4: bias must have shape [{n}], got {tuple(bias.shape)}")
        m = cls(k, n, bias=bias is not None, device=t.codes.device, scale_order=t.scale_order)
        m._set_weight(t.codes, t.scales, "NVFP4Linear.from_nvfp4")
        m.weight_global_scale.copy_(t.global_decode_scale().reshape(()))
        m.weight_global_amax.copy_(t.global_amax.float().reshape(()))
        if bias is not None:
            m.bias.copy_(bias.detach())
        return m

    def _set_weight(self, codes: torch.Tensor, scales: torch.Tensor, where: str) -> None:
        from fp4lab.kernels.w4a16 import to_kernel_layout

        n, kp = self.out_features, self.weight_words.shape[0] * 8
        if codes.dtype != torch.uint8 or tuple(codes.shape) != (n, kp // 2):
            raise ValueError(f"{where}: weight_packed must be uint8 [{n}, {kp // 2}], "
                             f"got {codes.dtype} {tuple(codes.shape)}")
        if scales.dtype != torch.float8_e4m3fn or tuple(scales.shape) != (n, kp // BLOCK):
            raise ValueError(f"{where}: weight_scale must be float8_e4m3fn [{n}, {kp // BLOCK}], "
                             f"got {scales.dtype} {tuple(scales.shape)}")
        words, scales_t = to_kernel_layout(codes.to(self.weight_words.device), scales.to(self.weight_words.device))
        self.weight_words.copy_(words)
        self.weight_scale_t.copy_(scales_t)

    @property
    def weight_packed(self) -> torch.Tensor:
        from fp4lab.kernels.w4a16 import from_kernel_layout
        return from_kernel_layout(self.weight_words, self.weight_scale_t)[0]

    @property
    def weight_scale(self) -> torch.Tensor:
        from fp4lab.kernels.w4a16 import from_kernel_layout
        return from_kernel_layout(self.weight_words, self.weight_scale_t)[1]

    def to_nvfp4(self):
        """The weight as an fp4lab NVFP4Tensor (a copy)."""
        from fp4lab.formats.nvfp4 import NVFP4Tensor
        return NVFP4Tensor(self.weight_packed, self.weight_scale, self.weight_global_amax.clone(),
                           torch.Size((self.out_features, self.in_features)), self.scale_order)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """Dense weight [out, in]: e2m1 * fp32(scale * g), rounded once to `dtype`."""
        from fp4lab.kernels.w4a16 import dequantize_kernel_layout
        wt = dequantize_kernel_layout(self.weight_words, self.weight_scale_t, self.weight_global_scale, dtype)
        return wt.t()[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"NVFP4Linear: input last dim {x.shape[-1]} != in_features {self.in_features}")
        if torch.compiler.is_compiling():  # opaque to Dynamo: it must not trace the kernel nor its tuner
            y = torch.ops.fp4lab.nvfp4_linear(x, self.weight_words, self.weight_scale_t, self.weight_global_scale,
                                              self.bias, self.in_features)
            return y if y.dtype == x.dtype else y.to(x.dtype)
        return _nvfp4_linear(x, self.weight_words, self.weight_scale_t, self.weight_global_scale, self.bias,
                             self.in_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        codes, scales = self.weight_packed, self.weight_scale
        destination[prefix + "weight_packed"] = codes
        destination[prefix + "weight_scale"] = scales

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        keys = [prefix + "weight_packed", prefix + "weight_scale"]
        for key in keys:
            if key in unexpected_keys:
                unexpected_keys.remove(key)
        if all(key in state_dict for key in keys):
            self._set_weight(state_dict[keys[0]], state_dict[keys[1]], f"NVFP4Linear ({prefix or 'root'})")
        else:
            missing_keys.extend(key for key in keys if key not in state_dict)

    def get_extra_state(self):
        return {"scale_order": self.scale_order, "in_features": self.in_features}

    def set_extra_state(self, state):
        if state.get("in_features", self.in_features) != self.in_features:
            raise ValueError(f"NVFP4Linear: checkpoint in_features {state['in_features']} != {self.in_features}")
        self.scale_order = state.get("scale_order", self.scale_order)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format=nvfp4 ({self.scale_order})")


def quantize_linears_to_nvfp4(model: nn.Module, skip: tuple[str, ...] = ("lm_head",),
                              scale_order: str = "torchao") -> nn.Module:
    """Replace every nn.Linear (except names containing an entry of `skip`) by an NVFP4Linear holding
    its round-to-nearest NVFP4 weight, in place; returns the model."""
    from fp4lab.formats.nvfp4 import quantize_nvfp4

    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.Linear and not any(s in full for s in skip):
                t = quantize_nvfp4(child.weight.detach(), scale_order=scale_order)
                setattr(parent, name, NVFP4Linear.from_nvfp4(t, child.bias))
    return model


def _nvfp4_linear(x, words, scales_t, g, bias, in_features: int) -> torch.Tensor:
    """NVFP4Linear's product: the W4A16 kernel on CUDA (BF16 compute, the caller's dtype out), else
    dequantize + F.linear (the reference)."""
    if x.is_cuda:
        from fp4lab.kernels.w4a16 import w4a16_linear
        y = w4a16_linear(x, words, scales_t, g, bias)
        return y if x.dtype == torch.bfloat16 else y.to(x.dtype)
    from fp4lab.kernels.w4a16 import dequantize_kernel_layout
    dtype = x.dtype if x.dtype.is_floating_point else torch.bfloat16
    w = dequantize_kernel_layout(words, scales_t, g, dtype).t()[:, :in_features]
    return F.linear(x.to(dtype), w, None if bias is None else bias.to(dtype))


@torch.library.custom_op("fp4lab::nvfp4_linear", mutates_args=())
def _nvfp4_linear_op(x: torch.Tensor, words: torch.Tensor, scales_t: torch.Tensor, g: torch.Tensor,
                     bias: torch.Tensor | None, in_features: int) -> torch.Tensor:
    return _nvfp4_linear(x, words, scales_t, g, bias, in_features)


@_nvfp4_linear_op.register_fake
def _(x, words, scales_t, g, bias, in_features):
    dtype = x.dtype if x.dtype.is_floating_point else torch.bfloat16
    return x.new_empty((*x.shape[:-1], words.shape[1]), dtype=dtype)
