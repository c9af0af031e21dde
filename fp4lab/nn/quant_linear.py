"""QuantLinear: y = x W^T + b with every GEMM operand quantized as the recipe says (spec §4.1).

Fprop  y  = Q(x) Q(W)^T            (x 1xB blocks along in_features, W 2D tiles or 1xB)
Dgrad  dx = Q_sr(dy) Q(W)          (dy blocks along out_features; with 2D tiles the same Q(W) as Fprop)
Wgrad  dW = Q_sr(H dy)^T Q(H x)    (both blocked along tokens, H = 16x16 RHT along tokens, cancels)
Quantized operands are dequantized to BF16 and multiplied with FP32 accumulation (emulation of a
block-scaled FP4 GEMM on tensor cores that have none); dW is accumulated in FP32. Backward keeps
only the columnwise (post-RHT) quantized x, packed for NVFP4 (4.5 bits per value; MXFP4 and FP8
keep it as BF16 values), and re-quantizes W from the parameter it already holds. With one FP8 scale
per tensor, t and t^T quantize to the same values: Fprop's Q(x) and Dgrad's Q(dy) serve Wgrad too.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from fp4lab.formats import seeds
from fp4lab.nn import _ops
from fp4lab.nn._ops import GemmPlan
from fp4lab.recipes import PRESETS, RecipeConfig, get_recipe

BF16 = PRESETS["bf16"]


def _mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """a @ b with BF16 operands and FP32 accumulation, result in out_dtype.

    On CUDA the BF16 tensor-core GEMM (fp32 output via out_dtype where needed); elsewhere the
    BF16 values are upcast exactly and multiplied in fp32, which is the same math.
    """
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    if a.is_cuda:
        if out_dtype == torch.bfloat16:
            return torch.mm(a, b)
        if _HAS_MM_OUT_DTYPE:
            return torch.mm(a, b, out_dtype=torch.float32).to(out_dtype)
    return torch.mm(a.float(), b.float()).to(out_dtype)


_HAS_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")  # torch >= 2.8: bf16 x bf16 -> fp32 on CUDA


def _pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero rows up to a multiple of the columnwise block: zero tokens add nothing to dW = dy^T x."""
    extra = (-t.shape[0]) % multiple
    return F.pad(t, (0, 0, 0, extra)) if extra else t


def _col_block(q) -> int:
    if q is None:
        return 1
    if q.fmt == "mxfp4":
        return 32
    return 128 if q.block128 else 16


class _QuantLinearFn(torch.autograd.Function):
    """The three GEMMs of a linear layer under a GemmPlan; SR draws from `generator` (Dgrad copy first)."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan: GemmPlan, generator, out_dtype):
        x2d = x.reshape(-1, x.shape[-1])
        # Each tensor's global amax pass runs once for both of its quantizations (W: Fprop and Dgrad;
        # x: Fprop and Wgrad, the latter of RHT(x)); None where the kernels do not apply. The two
        # quantizations of x follow their amax pass directly (the first walks back from where the
        # pass ended, the second forward from where the first ended), so part of x comes from L2.
        w_parts, w_parts_dgrad = _ops.shared_amax_parts(weight, plan.fprop_w, plan.dgrad_w)
        wq = _ops.fake_quantize(weight, plan.fprop_w, amax_parts=w_parts) if plan.fprop_w is not None else weight
        x_parts, x_parts_wgrad = _ops.shared_amax_parts(x2d, plan.fprop_x, plan.wgrad_x)
        xq = _ops.fake_quantize(x2d, plan.fprop_x, amax_parts=x_parts) if plan.fprop_x is not None else x2d

        # Dgrad re-quantizes W from the parameter (already in memory; RNE, so 2D tiles give the
        # very Q(W) of Fprop). Wgrad needs x^T quantized along tokens (post-RHT), kept packed.
        saved, metas = [weight], {}
        if plan.wgrad_x is None:
            saved.append(x2d)
            metas["x"] = None
        elif plan.single_pass_operands:
            saved.append(xq)  # Wgrad reads Fprop's values through a transposed view: no second pass
            metas["x"] = "fprop"
        elif _ops.has_packed_kernel(plan.wgrad_x):
            xp = _ops.quantize(_pad_rows(x2d, _col_block(plan.wgrad_x)), plan.wgrad_x, columnwise=True,
                               amax_parts=x_parts_wgrad, forward_walk=x_parts_wgrad is not None)
            tensors, metas["x"] = _ops.split_packed(xp)
            saved.extend(tensors)
        else:
            # no fused packing kernel (MXFP4, FP8): keep the BF16 fake-quantized values instead, the
            # same numbers the packed path dequantizes to, at 16 bits instead of 4.25-8 per value;
            # the eager packing reference costs a dozen kernel launches per layer
            saved.append(_ops.fake_quantize(_pad_rows(x2d, _col_block(plan.wgrad_x)), plan.wgrad_x, columnwise=True))
            metas["x"] = "values"

        # Fprop
        y = _mm(xq, wq.t(), out_dtype)
        if bias is not None:
            y = y + bias.to(out_dtype)
        ctx.save_for_backward(*saved)
        ctx.metas, ctx.plan, ctx.generator = metas, plan, generator
        ctx.w_parts = w_parts_dgrad
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.w_dtype = weight.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        plan, metas, gen = ctx.plan, ctx.metas, ctx.generator
        weight, *rest = ctx.saved_tensors
        n_out = dy.shape[-1]
        dy2d = dy.reshape(-1, n_out)
        dx = dw = db = None
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_dx:
            if plan.dgrad_w is None:
                w_nk = weight
            elif plan.weight_consistent:
                w_nk = _ops.fake_quantize(weight, plan.dgrad_w, amax_parts=ctx.w_parts)  # [N, K]: the Fprop Q(W)
            else:  # blocks along N
                w_nk = _ops.fake_quantize(weight, plan.dgrad_w, columnwise=True, amax_parts=ctx.w_parts).t()
        # dy's quantizations right after its one amax pass (as x's in forward); SR draws Dgrad's first
        dy_parts = dy_parts_wgrad = None
        if need_dx and need_dw and metas["x"] is not None:
            dy_parts, dy_parts_wgrad = _ops.shared_amax_parts(dy2d, plan.dgrad_dy, plan.wgrad_dy)
        # NVFP4 dy: Dgrad's rowwise and Wgrad's columnwise copies from one read of dy (the dual kernel:
        # 12-55 us less per step on an H100, benchmarks/README.md). x keeps two kernels: its packed
        # columnwise copy measured slower fused (140 against 130 us at 8192x4096)
        both = None
        if dy_parts is not None:
            both = _ops.rowwise_and_columnwise(dy2d, plan.dgrad_dy, plan.wgrad_dy, (dy_parts, dy_parts_wgrad),
                                               generator=gen, col_fake=True)
        if both is not None:
            dyq = both[0]
        elif need_dx or metas["x"] == "fprop":
            dyq = (_ops.fake_quantize(dy2d, plan.dgrad_dy, generator=gen, amax_parts=dy_parts)
                   if plan.dgrad_dy is not None else dy2d)
        if need_dw:
            if metas["x"] is None:
                x_km = rest[0].t()
                dy_nm = dy2d.t()
            elif metas["x"] == "fprop":  # Fprop's Q(x) [M, K] and Dgrad's Q(dy), transposed; no token padding
                x_km = rest[0].t()
                dy_nm = dyq.t()
            else:
                if both is not None:
                    dy_nm = both[1]
                else:
                    dy_pad = _pad_rows(dy2d, _col_block(plan.wgrad_dy))
                    dy_nm = _ops.fake_quantize(dy_pad, plan.wgrad_dy, columnwise=True, generator=gen,
                                               amax_parts=dy_parts_wgrad, forward_walk=dy_parts_wgrad is not None)
                if metas["x"] == "values":
                    x_km = rest[0]
                else:
                    x_km = _ops.dequantize(_ops.join_packed(rest, metas["x"]))  # [K, Mp]
        if need_dx:
            dx = _mm(dyq, w_nk, ctx.x_dtype).reshape(ctx.x_shape)
        if need_dw:
            dw = _mm(dy_nm, x_km.t(), ctx.w_dtype)  # fp32 accumulation, one rounding to the param dtype

        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2d.float().sum(0).to(ctx.bias_dtype)  # from the unquantized gradient, as TE does
        return dx, dw, db, None, None, None


def quant_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: GemmPlan,
    generator: "torch.Generator | int | None" = None,
) -> torch.Tensor:
    """Functional QuantLinear. Output dtype: the autocast dtype inside autocast, else x's dtype.

    `generator` drives SR: a seed state (fp4lab.formats.seeds), a key from `_ops.register_sr_source`
    (what QuantLinear passes; compile-friendly), or a CPU Generator (a host draw per call).
    """
    if not plan.quantized:
        return F.linear(x, weight, bias)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        out_dtype = torch.get_autocast_dtype(device_type)
    else:
        out_dtype = x.dtype
    with torch.autocast(device_type, enabled=False):
        return _QuantLinearFn.apply(x, weight, bias, plan, generator, out_dtype)


def unsupported_shape(in_features: int, out_features: int, recipe: RecipeConfig) -> str | None:
    """Why a layer cannot use `recipe` (dims not multiples of the block size), or None."""
    block = recipe.block_size if recipe.format in ("nvfp4", "mxfp4") else 1
    if in_features % block or out_features % block:
        return f"in/out features {in_features}x{out_features} not multiples of {block}"
    return None


class QuantLinear(nn.Linear):
    """nn.Linear whose Fprop/Dgrad/Wgrad run under a recipe; same parameters and state_dict keys.

    `recipe` drives the backward pass (and the forward unless `forward_recipe` is set, the paper's
    end-of-training switch, spec §4.7). A layer whose dims are not multiples of the block size
    (16 nvfp4, 32 mxfp4) stays BF16 with a warning: padding K would change what the GEMM reduces over.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
        recipe: "RecipeConfig | str" = "nvfp4", name: str = "", block_index: int | None = None,
        seed_offset: int = 0,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.name = name
        self.block_index = block_index
        self.seed_offset = seed_offset
        # SR seeds live on the layer's device (never read on the host: CUDA graphs replay fresh ones).
        # A plain attribute, not a buffer: DDP broadcasts buffers from rank 0, which would give every
        # rank the same rounding noise. It moves with the module (_apply) or at its first draw elsewhere
        self.sr_state = seeds.new_seed_state(0, device=device)
        self.sr_key = _ops.register_sr_source(self)
        self.set_recipe(get_recipe(recipe))

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe, *, note: str = "", **kw) -> "QuantLinear":
        """A QuantLinear that shares `linear`'s Parameter objects (optimizers keep working)."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta", recipe=BF16, **kw)
        q.weight = linear.weight
        q.bias = linear.bias
        q.sr_state = seeds.new_seed_state(0, device=linear.weight.device)
        q.set_recipe(get_recipe(recipe), note=note)
        q.reseed()
        return q

    def set_recipe(self, recipe: RecipeConfig, forward_recipe: RecipeConfig | None = None, note: str = "") -> None:
        """Set the recipe (and optionally a different one for Fprop); a new `seed` reseeds SR."""
        self.recipe, self.forward_recipe, self.note = recipe, forward_recipe, note
        reason = unsupported_shape(self.in_features, self.out_features, recipe)
        if reason and recipe.quantized:
            warnings.warn(f"{self.name or 'QuantLinear'}: {reason}; kept in BF16", stacklevel=2)
            self.recipe, self.forward_recipe, self.note = BF16, None, reason + " (kept BF16)"
        if forward_recipe is not None and unsupported_shape(self.in_features, self.out_features, forward_recipe):
            self.forward_recipe = BF16
        self.plan = _ops.gemm_plan(self.forward_recipe or self.recipe, self.recipe)
        if getattr(self, "_seed", None) != recipe.seed:
            self._seed = recipe.seed
            self.reseed()

    def reseed(self) -> None:
        """Restart the SR stream: seed * 1_000_003 + the layer's offset (its index in `convert`)."""
        self.sr_state.fill_(self._seed * 1_000_003 + self.seed_offset)

    def __setstate__(self, state):
        # a deep copy or unpickled module gets its own SR stream key (the key indexes a process-wide list)
        super().__setstate__(state)
        self.sr_key = _ops.register_sr_source(self)

    def _apply(self, fn, recurse=True):
        # .to / .cuda / .to_empty move the seed state with the parameters; a state left elsewhere (FSDP2
        # moves parameters without _apply) is moved when an SR draw looks it up (_ops.sr_state)
        out = super()._apply(fn, recurse)
        device = fn(self.sr_state).device
        if device != self.sr_state.device:
            self._move_sr_state(device)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_linear(x, self.weight, self.bias, self.plan, self.sr_key)

    def _move_sr_state(self, device: torch.device) -> None:
        if self.sr_state.is_meta:  # built on the meta device (deferred init): the stream starts at its seed
            self.sr_state = seeds.new_seed_state(0, device=device)
            self.reseed()
        else:
            self.sr_state = self.sr_state.to(device)

    def extra_repr(self) -> str:
        fwd = f", forward={self.forward_recipe.spec()}" if self.forward_recipe is not None else ""
        return f"{super().extra_repr()}, recipe={self.recipe.spec()}{fwd}"
