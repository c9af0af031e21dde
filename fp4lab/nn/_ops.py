"""Operand quantization for the three GEMMs of a linear layer (spec table §4.1), as data plus three calls.

`gemm_plan(fwd, bwd)` says, for every operand of Fprop / Dgrad / Wgrad, how it is quantized
(`OperandQuant`, or None for BF16). `quantize` / `fake_quantize` / `dequantize` run one operand
through `fp4lab.kernels` (Triton on CUDA) when it provides the op, else through the pure-PyTorch
`fp4lab.formats` reference. Non-finite values always propagate (no host sync on the hot path).
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass

import torch

from fp4lab import formats
from fp4lab.formats import seeds
from fp4lab.recipes import RecipeConfig


@dataclass(frozen=True)
class OperandQuant:
    """How one GEMM operand is quantized along its reduction dim.

    fmt: "nvfp4" | "mxfp4" | "fp8_e4m3" | "fp8_e5m2". block_2d: 16x16 (nvfp4) or 128x128 (fp8)
    tiles. block128: fp8 1x128 blocks instead of one scale per tensor. rht: 16x16 random Hadamard
    transform along the reduction dim first. stochastic: SR of the elements (scales stay RNE).
    """

    fmt: str
    block_2d: bool = False
    block128: bool = False
    rht: bool = False
    stochastic: bool = False
    scale_order: str = "torchao"
    scale_rule: str = "rceil"

    def label(self, with_format: bool = True) -> str:
        """Short human description, e.g. 'nvfp4 1x16 SR+RHT' (or '1x16 SR+RHT' without the format)."""
        if self.fmt.startswith("fp8"):
            gran = ("128x128" if self.block_2d else "1x128") if self.block128 else "tensor"
        else:
            gran = "16x16" if self.block_2d else ("1x32" if self.fmt == "mxfp4" else "1x16")
        extra = "+".join(["SR"] * self.stochastic + ["RHT"] * self.rht)
        parts = ([self.fmt.replace("_", "-")] if with_format else []) + [gran] + ([extra] if extra else [])
        return " ".join(parts)


@dataclass(frozen=True)
class GemmPlan:
    """Quantization of the six GEMM operands; None means the operand stays in high precision (BF16)."""

    fprop_x: OperandQuant | None = None
    fprop_w: OperandQuant | None = None
    dgrad_dy: OperandQuant | None = None
    dgrad_w: OperandQuant | None = None
    wgrad_dy: OperandQuant | None = None
    wgrad_x: OperandQuant | None = None

    @property
    def quantized(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    @property
    def weight_consistent(self) -> bool:
        """Dgrad uses exactly the Fprop-quantized W (2D tiles, or one FP8 scale per tensor)."""
        w = self.fprop_w
        return w is not None and w == self.dgrad_w and (w.block_2d or layout_free(w))

    @property
    def single_pass_operands(self) -> bool:
        """x and dy are each fake-quantized once: Wgrad reads Fprop's Q(x) and Dgrad's Q(dy) through
        transposed views (the same layout-free quantization in both GEMMs that read each)."""
        return (self.wgrad_x == self.fprop_x and layout_free(self.wgrad_x)
                and self.wgrad_dy == self.dgrad_dy and layout_free(self.wgrad_dy))


def _roles(r: RecipeConfig) -> dict[str, OperandQuant | None]:
    """Spec table §4.1 for one recipe: role -> quantization (x/w/dy rowwise, x/dy columnwise)."""
    if not r.quantized:
        return dict.fromkeys(("x", "w", "dy", "x_col", "dy_col"))
    if r.format == "nvfp4" or r.format == "mxfp4":
        base = OperandQuant(r.format, scale_order=r.scale_order, scale_rule=r.mxfp4_scale_rule)
        w = dataclasses.replace(base, block_2d=r.weight_2d and r.format == "nvfp4")
        dy = dataclasses.replace(base, stochastic=r.stochastic_rounding)
        return {
            "x": base, "w": w, "dy": dy,
            "x_col": dataclasses.replace(base, rht=r.rht),
            "dy_col": dataclasses.replace(dy, rht=r.rht),
        }
    block = r.format == "fp8-block"
    act = OperandQuant("fp8_e4m3", block128=block)
    grad = OperandQuant(f"fp8_{r.fp8_grad_format}", block128=block)
    w = dataclasses.replace(act, block_2d=block and r.weight_2d)
    return {"x": act, "w": w, "dy": grad, "x_col": act, "dy_col": grad}


def gemm_plan(fwd: RecipeConfig, bwd: RecipeConfig) -> GemmPlan:
    """Operands of Fprop from `fwd`, of Dgrad and Wgrad from `bwd` (they differ after a forward-only switch)."""
    f, b = _roles(fwd), _roles(bwd)
    return GemmPlan(f["x"], f["w"], b["dy"], b["w"], b["dy_col"], b["x_col"])


def _load_kernels():
    """fp4lab.kernels if it provides the wrappers this module uses, else None (resolved at import:
    a lazy first-call import would be a side effect inside a torch.compile trace)."""
    try:
        import fp4lab.kernels as k
    except Exception:  # noqa: BLE001 - a broken kernels package must not stop training on the reference
        return None
    return k if hasattr(k, "quantize_nvfp4") and hasattr(k, "fake_quantize_nvfp4") else None


_KERNELS = _load_kernels()


def _kernels():
    return _KERNELS


def _columnwise(t: torch.Tensor, q: OperandQuant) -> torch.Tensor:
    """t [M, K] -> t^T [K, M] (the reduction dim of Wgrad is tokens), RHT-ed along M if asked."""
    tt = t.t()
    if q.rht:
        return formats.random_hadamard_16(tt, nonfinite="propagate")
    return tt.contiguous()


def _device_generator(generator, device: torch.device):
    """The reference draws its uniforms on the tensor's device: a Generator there, seeded from a seed
    state (read on the host: a sync on a GPU, only without the kernels) or from a CPU Generator's draw."""
    if seeds.is_seed_state(generator):
        return seeds.take_generator(generator, device)
    if generator is None or device.type == generator.device.type:
        return generator
    seeds.check_not_capturing("stochastic rounding")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _nvfp4_kw(q: OperandQuant, generator) -> dict:
    return dict(
        block_2d=q.block_2d, scale_order=q.scale_order,
        rounding="stochastic" if q.stochastic else "nearest",
        generator=generator if q.stochastic else None,
    )


def layout_free(q: OperandQuant | None) -> bool:
    """Quantizing t and t^T give the same values (FP8 with one scale per tensor: no blocks, RHT or SR),
    so one fake-quantized copy of t serves both GEMMs that read it, the second as a transposed view."""
    return q is not None and q.fmt.startswith("fp8") and not q.block128 and not q.rht and not q.stochastic


def has_packed_kernel(q: OperandQuant) -> bool:
    """Whether `quantize` of this operand runs a fused kernel (NVFP4 with fp4lab.kernels)."""
    return q.fmt == "nvfp4" and _kernels() is not None


def shared_amax_parts(t: torch.Tensor, rowwise: OperandQuant | None, col: OperandQuant | None):
    """(rowwise, columnwise) amax partials of t for two NVFP4 quantizations of it, from one read of t
    (kernels.amax_parts_nvfp4), or (None, None) where each quantization finds its own amax: off CUDA,
    inside torch.compile (the custom ops take no partials), or unless both operands are NVFP4."""
    k = _kernels()
    if (k is None or not t.is_cuda or rowwise is None or col is None or rowwise.fmt != "nvfp4"
            or col.fmt != "nvfp4" or torch.compiler.is_compiling()):
        return None, None
    return k.amax_parts_nvfp4(t, rht=col.rht)


def rowwise_and_columnwise(t: torch.Tensor, rowwise: OperandQuant | None, col: OperandQuant | None, parts,
                           *, generator=None, col_fake: bool = False, dtype=torch.bfloat16):
    """(fake_quantize(t, rowwise), quantize(t padded to 16 rows, col, columnwise=True), or its fake [K, Mp]
    values with col_fake) from one read of t by the dual kernel (kernels.nvfp4_dual), bit-equal to those
    two calls in that order; None where it does not apply (no amax `parts` from shared_amax_parts, not two
    plain 1x16 NVFP4 operands with one rounding and scale order, or K not a multiple of 16)."""
    if (parts[0] is None or rowwise is None or col is None or t.ndim != 2 or t.shape[1] % 16
            or rowwise.fmt != "nvfp4" or col.fmt != "nvfp4" or rowwise.block_2d or col.block_2d or rowwise.rht
            or rowwise.stochastic != col.stochastic or rowwise.scale_order != col.scale_order):
        return None
    if isinstance(generator, int):
        generator = sr_state(generator, t.device)
    return _kernels().quantize_nvfp4_rowwise_and_columnwise(
        t, row_parts=parts[0], col_parts=parts[1], col_fake=col_fake, rht=col.rht,
        rounding="stochastic" if col.stochastic else "nearest", scale_order=col.scale_order,
        generator=generator if col.stochastic else None, out_dtype=dtype)


def quantize(t: torch.Tensor, q: OperandQuant, *, columnwise: bool = False, generator=None, amax_parts=None,
             forward_walk: bool = False):
    """Packed quantization of a 2D operand along its last dim (of t^T with `columnwise`); amax_parts
    (NVFP4 on CUDA only) from `shared_amax_parts` skips the amax pass; forward_walk: tile order only
    (kernels.nvfp4_triton)."""
    if q.fmt == "nvfp4" and _opaque_under_compile(t, q, generator):
        rht = q.rht and columnwise
        codes, scales, amax = torch.ops.fp4lab.quantize_nvfp4(
            t, q.block_2d, q.stochastic, q.scale_order, columnwise, rht, _key(q, generator))
        return formats.NVFP4Tensor(codes, scales.view(torch.float8_e4m3fn), amax, _packed_shape(t, columnwise, rht),
                                   q.scale_order, q.block_2d)
    if isinstance(generator, int):
        generator = sr_state(generator, t.device)
    return _quantize(t, q, columnwise, generator, amax_parts, forward_walk)


def _quantize(t, q, columnwise, generator, amax_parts=None, forward_walk=False):
    if q.fmt == "nvfp4":
        k = _kernels()
        if k is not None:
            return k.quantize_nvfp4(
                t, nonfinite="propagate", columnwise=columnwise, rht=q.rht and columnwise,
                amax_parts=amax_parts, forward_walk=forward_walk, **_nvfp4_kw(q, generator)
            )
        src = _columnwise(t, q) if columnwise else t
        gen = _device_generator(generator, t.device) if q.stochastic else None
        return formats.quantize_nvfp4(src, nonfinite="propagate", **_nvfp4_kw(q, gen))
    src = _columnwise(t, q) if columnwise else t
    if q.fmt == "mxfp4":
        return formats.quantize_mxfp4(
            src, scale_rule=q.scale_rule, rounding="stochastic" if q.stochastic else "nearest",
            generator=_device_generator(generator, t.device) if q.stochastic else None, nonfinite="propagate",
        )
    return formats.quantize_fp8(
        src, fmt=q.fmt[4:], granularity="block128" if q.block128 else "tensor",
        block_2d=q.block_2d, nonfinite="propagate",
    )


def fake_quantize(
    t: torch.Tensor, q: OperandQuant, *, columnwise: bool = False, generator=None, dtype=torch.bfloat16,
    amax_parts=None, forward_walk: bool = False,
) -> torch.Tensor:
    """quantize -> dequantize of a 2D operand, in `dtype`; [K, M] (t^T, RHT-ed if q.rht) with `columnwise`.

    `generator` (for SR): a seed state (fp4lab.formats.seeds), the int key of a layer's seed state from
    `register_sr_source` (what torch.compile graphs carry), or a CPU torch.Generator (a host draw).
    """
    if q.fmt in _OPAQUE_FORMATS and _opaque_under_compile(t, q, generator):
        return torch.ops.fp4lab.fake_quantize(
            t, q.fmt, q.block_2d, q.block128, q.rht, q.stochastic, q.scale_order, q.scale_rule, columnwise,
            _key(q, generator), dtype,
        )
    if isinstance(generator, int):
        generator = sr_state(generator, t.device)
    return _fake_quantize(t, q, columnwise, generator, dtype, amax_parts, forward_walk)


# Under torch.compile the NVFP4 / MXFP4 operands run as opaque custom ops, so Dynamo never traces the
# Triton launches inside them: on the GPU it turned them into user-kernel HOPs, which failed once a
# recompile made the shapes symbolic (AssertionError in the autograd.Function HOP, torch 2.11) and
# made tracing slow. The ops run the eager code, so compiled and eager results are the same bits,
# and the CPU tests compile the same graph the GPU runs.
_OPAQUE_FORMATS = ("nvfp4", "mxfp4")


def _opaque_under_compile(t: torch.Tensor, q: OperandQuant, generator) -> bool:
    # a Generator or tensor object cannot enter the op: SR needs the int key from register_sr_source
    keyed = generator is None or isinstance(generator, int) or not q.stochastic
    return torch.compiler.is_compiling() and t.ndim == 2 and keyed


def _key(q: OperandQuant, generator) -> int:
    return generator if q.stochastic and isinstance(generator, int) else -1


def _padded_cols(t: torch.Tensor, columnwise: bool, rht: bool):
    """(rows, logical columns) of an operand's quantization: t^T with `columnwise`, columns padded
    to 16 by the RHT."""
    rows, cols = (t.shape[1], t.shape[0]) if columnwise else (t.shape[0], t.shape[1])
    return rows, ((cols + 15) // 16 * 16 if rht else cols)


def _packed_shape(t, columnwise, rht) -> torch.Size:
    return torch.Size(_padded_cols(t, columnwise, rht))


def _compiled_reference(fmt: str, kw: tuple):
    """torch.compile'd fp4lab.formats fake-quantize for FP8 1x128 / 128x128 blocks on CUDA (per-block
    reductions, which Inductor tiles well): the eager reference launches a dozen kernels per operand."""
    key = (fmt, kw)
    if key not in _COMPILED:
        opts = dict(kw)
        # dynamic: one graph for every layer shape (a model's many shapes would hit the recompile limit)
        _COMPILED[key] = torch.compile(
            lambda t, dtype: formats.fake_quantize(t, fmt, nonfinite="propagate", **opts).to(dtype),
            dynamic=True,
        )
    return _COMPILED[key]


_COMPILED: dict = {}


def _fp8_tensor_fake(src: torch.Tensor, fmt: str, dtype: torch.dtype) -> torch.Tensor:
    """formats.quantize_fp8(granularity="tensor") -> dequantize as two Triton kernels (amax, then one
    fused elementwise pass). The eager composition it replaces (a dozen elementwise kernels) took 4.3
    of an FP8 layer's 5.3 ms fwd+bwd on an H100 (benchmarks/README.md)."""
    return _kernels().fp8_tensor_fake_triton(src, fmt, dtype)


def _fake_quantize(t, q, columnwise, generator, dtype, amax_parts=None, forward_walk=False):
    if (t.is_cuda and q.fmt.startswith("fp8") and not q.block128 and _kernels() is not None
            and not torch.compiler.is_compiling()):
        return _fp8_tensor_fake((t.t() if columnwise else t).contiguous(), q.fmt[4:], dtype)
    if t.is_cuda and q.fmt.startswith("fp8") and not torch.compiler.is_compiling():
        kw = (("granularity", "block128" if q.block128 else "tensor"), ("block_2d", q.block_2d))
        src = t.t() if columnwise else t  # fp8 has no RHT; the reduction dim of Wgrad is tokens
        return _compiled_reference(q.fmt, kw)(src.contiguous(), dtype)
    k = _kernels()
    if k is not None and q.fmt == "nvfp4":
        return k.fake_quantize_nvfp4(
            t, columnwise=columnwise, rht=q.rht and columnwise, out_dtype=dtype, amax_parts=amax_parts,
            forward_walk=forward_walk, **_nvfp4_kw(q, generator)
        )
    if k is not None and q.fmt == "mxfp4" and hasattr(k, "fake_quantize_mxfp4"):
        return k.fake_quantize_mxfp4(
            t, scale_rule=q.scale_rule, rounding="stochastic" if q.stochastic else "nearest",
            generator=generator if q.stochastic else None, columnwise=columnwise, rht=q.rht and columnwise,
        ).to(dtype)
    return dequantize(quantize(t, q, columnwise=columnwise, generator=generator), dtype)


_SR_SOURCES: list[weakref.ref] = []


def register_sr_source(layer) -> int:
    """A process-wide int key for a layer whose `sr_state` seed state drives its SR (compiled graphs
    carry the key; the state is looked up at call time, so a layer that moved devices still works)."""
    _SR_SOURCES.append(weakref.ref(layer))
    return len(_SR_SOURCES) - 1


def sr_state(key: int, device: torch.device | None = None) -> torch.Tensor:
    """The seed state of the layer with this key, moved to `device` first if it is elsewhere (parameters
    moved without Module._apply, as FSDP2 does; a compiled graph never runs the layer's own check)."""
    layer = _SR_SOURCES[key]()
    if layer is None:
        raise RuntimeError(f"stochastic-rounding key {key}: its layer no longer exists")
    if device is not None and layer.sr_state.device != device:
        layer._move_sr_state(device)
    return layer.sr_state


# tagged like torch.rand: with stochastic rounding an op draws from its generator, so two identical calls
# differ and neither may be merged or dropped
_SEEDED = (torch.Tag.nondeterministic_seeded,)


@torch.library.custom_op("fp4lab::fake_quantize", mutates_args=(), tags=_SEEDED)
def _fake_quantize_op(
    t: torch.Tensor, fmt: str, block_2d: bool, block128: bool, rht: bool, stochastic: bool, scale_order: str,
    scale_rule: str, columnwise: bool, generator_key: int, dtype: torch.dtype,
) -> torch.Tensor:
    q = OperandQuant(fmt, block_2d, block128, rht, stochastic, scale_order, scale_rule)
    gen = sr_state(generator_key, t.device) if generator_key >= 0 else None
    return _fake_quantize(t, q, columnwise, gen, dtype)


@_fake_quantize_op.register_fake
def _(t, fmt, block_2d, block128, rht, stochastic, scale_order, scale_rule, columnwise, generator_key, dtype):
    return t.new_empty(_padded_cols(t, columnwise, rht and columnwise), dtype=dtype)


@torch.library.custom_op("fp4lab::quantize_nvfp4", mutates_args=(), tags=_SEEDED)
def _quantize_nvfp4_op(
    t: torch.Tensor, block_2d: bool, stochastic: bool, scale_order: str, columnwise: bool, rht: bool,
    generator_key: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = OperandQuant("nvfp4", block_2d=block_2d, rht=rht, stochastic=stochastic, scale_order=scale_order)
    p = _quantize(t, q, columnwise, sr_state(generator_key, t.device) if generator_key >= 0 else None)
    # scales travel as their bytes: torch's op checks cannot compare float8 tensors
    return p.codes, p.scales.view(torch.uint8), p.global_amax


@_quantize_nvfp4_op.register_fake
def _(t, block_2d, stochastic, scale_order, columnwise, rht, generator_key):
    rows, cols = _padded_cols(t, columnwise, rht)
    rows = (rows + 15) // 16 * 16 if block_2d else rows
    blocks = (cols + 15) // 16
    return (t.new_empty((rows, blocks * 8), dtype=torch.uint8),
            t.new_empty((rows, blocks), dtype=torch.uint8),
            t.new_empty((), dtype=torch.float32))


@torch.library.custom_op("fp4lab::dequantize_nvfp4", mutates_args=())
def _dequantize_nvfp4_op(
    codes: torch.Tensor, scales: torch.Tensor, global_amax: torch.Tensor, shape: list[int], scale_order: str,
    block_2d: bool, dtype: torch.dtype,
) -> torch.Tensor:
    p = formats.NVFP4Tensor(codes, scales.view(torch.float8_e4m3fn), global_amax, torch.Size(shape), scale_order,
                            block_2d)
    return _dequantize(p, dtype)


@_dequantize_nvfp4_op.register_fake
def _(codes, scales, global_amax, shape, scale_order, block_2d, dtype):
    return codes.new_empty(shape, dtype=dtype)


def dequantize(p, dtype=torch.bfloat16) -> torch.Tensor:
    if torch.compiler.is_compiling() and isinstance(p, formats.NVFP4Tensor):
        return torch.ops.fp4lab.dequantize_nvfp4(
            p.codes, p.scales.view(torch.uint8), p.global_amax, list(p.shape), p.scale_order, p.block_2d, dtype)
    return _dequantize(p, dtype)


def _dequantize(p, dtype):
    k = _kernels()
    if k is not None and isinstance(p, formats.NVFP4Tensor) and hasattr(k, "dequantize_nvfp4"):
        return k.dequantize_nvfp4(p, dtype)
    return p.dequantize(dtype)


def split_packed(p) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """A packed tensor as (its tensors, the rest): tensors go through ctx.save_for_backward."""
    values = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    tensors = tuple(v for v in values.values() if isinstance(v, torch.Tensor))
    others = tuple((n, v) for n, v in values.items() if not isinstance(v, torch.Tensor))
    tensor_names = tuple(n for n, v in values.items() if isinstance(v, torch.Tensor))
    return tensors, (type(p), tensor_names, others)


def join_packed(tensors, meta):
    cls, tensor_names, others = meta
    return cls(**dict(zip(tensor_names, tensors)), **dict(others))
