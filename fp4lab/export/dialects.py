"""The two NVFP4 checkpoint dialects on disk (spec §2.6; landscape §2).

compressed-tensors (`quantization_config` in config.json, quant_method "compressed-tensors"):
  nvfp4(a16) "nvfp4-pack-quantized": weight_packed u8 [out, in/2], weight_scale e4m3 [out, in/16],
      weight_global_scale f32 [1] = ENCODE factor 2688/amax, input_global_scale f32 [1] (nvfp4 only).
  mxfp4 "mxfp4-pack-quantized": weight_packed u8, weight_scale u8 E8M0 [out, in/32].
  fp8 "float-quantized": weight e4m3 [out, in], weight_scale f32 [1] (decode), input_scale f32 [1].
ModelOpt (hf_quant_config.json, and config.json quant_method "modelopt"):
  NVFP4: weight u8 [out, in/2], weight_scale e4m3 [out, in/16], weight_scale_2 f32 [] = DECODE factor
      amax/2688, input_scale f32 [] = activation decode factor (ModelOpt's NVFP4 is always W4A4).
  FP8: weight e4m3, weight_scale f32 [], input_scale f32 [].
The group/config dictionaries mirror compressed-tensors' own QuantizationConfig.model_dump() (tests
validate them with that class).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from fp4lab.export.checkpoint import (
    CONFIG_FILE,
    MODELOPT_CONFIG_FILE,
    WEIGHT_FILE,
    PackedWeight,
    QuantizedCheckpoint,
    detect_format,
    load_safetensors_dir,
    read_config,
)
from fp4lab.export.scales import MAX_PLAUSIBLE_INPUT_AMAX, MAX_PLAUSIBLE_WEIGHT_AMAX, reciprocal

FORMATS = ("compressed-tensors", "modelopt")

_FP4_ARGS = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16, "strategy": "tensor_group",
             "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
_FP4_INPUT_ARGS = {**_FP4_ARGS, "dynamic": "local", "observer": "static_minmax"}
_MXFP4_ARGS = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 32, "strategy": "group",
               "dynamic": False, "scale_dtype": "torch.uint8"}
_FP8_ARGS = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": "tensor",
             "dynamic": False}
_FP8_INPUT_ARGS = {**_FP8_ARGS, "observer": "static_minmax"}

# scheme -> (compressed-tensors format, weight args, input-activation args)
CT_SCHEMES = {
    "nvfp4a16": ("nvfp4-pack-quantized", _FP4_ARGS, None),
    "nvfp4": ("nvfp4-pack-quantized", _FP4_ARGS, _FP4_INPUT_ARGS),
    "mxfp4": ("mxfp4-pack-quantized", _MXFP4_ARGS, None),
    "fp8": ("float-quantized", _FP8_ARGS, _FP8_INPUT_ARGS),
}
MODELOPT_ALGOS = {"nvfp4": "NVFP4", "fp8": "FP8"}


def ct_quantization_config(scheme: str, ignore: list[str]) -> dict:
    fmt, weights, inputs = CT_SCHEMES[scheme]
    group = {"targets": ["Linear"], "weights": dict(weights), "input_activations": dict(inputs) if inputs else None,
             "output_activations": None, "format": fmt}
    return {"config_groups": {"group_0": group}, "quant_method": "compressed-tensors", "kv_cache_scheme": None,
            "format": fmt, "quantization_status": "compressed", "global_compression_ratio": None,
            "ignore": list(ignore), "moe_sparsity_config": None}


def _ct_scheme(qc: dict, where: str) -> str:
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise ValueError(f"{where}: expected exactly one config group in quantization_config, got {len(groups)}")
    group = next(iter(groups.values()))
    w, a = group.get("weights") or {}, group.get("input_activations")
    for scheme, (fmt, weights, inputs) in CT_SCHEMES.items():
        if (group.get("format") or qc.get("format")) != fmt:
            continue
        if all(w.get(k) == v for k, v in weights.items() if k in ("num_bits", "type", "group_size", "strategy")) \
                and (a is None) == (inputs is None):
            return scheme
    raise ValueError(f"{where}: unsupported compressed-tensors scheme (format {group.get('format')!r}, "
                     f"weights {w}, input_activations {a})")


# ---------------------------------------------------------------------------------------------- writing

def _ct_tensors(name: str, w: PackedWeight) -> dict[str, torch.Tensor]:
    if w.scheme == "fp8":
        out = {f"{name}.weight": w.data, f"{name}.weight_scale": w.scales.float().reshape(1)}
        if w.input_scale is not None:
            out[f"{name}.input_scale"] = w.input_scale.float().reshape(1)
        return out
    out = {f"{name}.weight_packed": w.data, f"{name}.weight_scale": w.scales}
    if w.scheme in ("nvfp4", "nvfp4a16"):
        out[f"{name}.weight_global_scale"] = w.global_scale.float().reshape(1)
    if w.scheme == "nvfp4":
        out[f"{name}.input_global_scale"] = w.input_scale.float().reshape(1)
    return out


def _modelopt_tensors(name: str, w: PackedWeight) -> dict[str, torch.Tensor]:
    if w.scheme == "fp8":
        return {f"{name}.weight": w.data, f"{name}.weight_scale": w.scales.float().reshape(()),
                f"{name}.input_scale": w.input_scale.float().reshape(())}
    return {f"{name}.weight": w.data, f"{name}.weight_scale": w.scales,
            f"{name}.weight_scale_2": reciprocal(w.global_scale).reshape(()),
            f"{name}.input_scale": reciprocal(w.input_scale).reshape(())}


def write_checkpoint(ckpt: QuantizedCheckpoint, out_dir: str | Path, fmt: str = "compressed-tensors",
                     source_dir: str | Path | None = None) -> Path:
    """Write `ckpt` in dialect `fmt`; non-weight files of `source_dir` (tokenizer, ...) are copied."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "modelopt" and ckpt.scheme not in MODELOPT_ALGOS:
        raise ValueError(
            f"ModelOpt has no checkpoint layout for scheme {ckpt.scheme!r} (its NVFP4 is W4A4 with "
            f"input_scale; consumers reject it without); use --format compressed-tensors, or scheme nvfp4/fp8")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source_dir is not None:
        for f in sorted(Path(source_dir).iterdir()):
            skip = f.suffix == ".safetensors" or f.name in (CONFIG_FILE, MODELOPT_CONFIG_FILE,
                                                           "model.safetensors.index.json")
            if f.is_file() and not skip and f.suffix not in (".bin", ".pt", ".pth"):
                shutil.copyfile(f, out / f.name)
    tensors = dict(ckpt.tensors)
    for name, w in ckpt.layers.items():
        tensors.update(_ct_tensors(name, w) if fmt == "compressed-tensors" else _modelopt_tensors(name, w))
    # fused layers share one scale tensor object; safetensors refuses shared storage, so copy the scalars
    tensors = {k: v.clone() if v.numel() == 1 else v.contiguous() for k, v in tensors.items()}
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    save_file(tensors, str(out / WEIGHT_FILE), metadata={"format": "pt"})

    config = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    if fmt == "compressed-tensors":
        config["quantization_config"] = ct_quantization_config(ckpt.scheme, ckpt.ignore)
        (out / MODELOPT_CONFIG_FILE).unlink(missing_ok=True)
    else:
        algo = MODELOPT_ALGOS[ckpt.scheme]
        quant = {"quant_algo": algo, "kv_cache_quant_algo": None, "exclude_modules": list(ckpt.ignore)}
        if algo == "NVFP4":
            quant["group_size"] = 16
        producer = {"name": "modelopt", "version": "fp4lab"}
        (out / MODELOPT_CONFIG_FILE).write_text(
            json.dumps({"producer": producer, "quantization": quant}, indent=2, sort_keys=True) + "\n")
        config["quantization_config"] = {"quant_method": "modelopt", "producer": producer, **quant}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- reading

def _need(tensors: dict, name: str, dtype: torch.dtype, where: str) -> torch.Tensor:
    if name not in tensors:
        raise ValueError(f"{where}: missing tensor {name}")
    t = tensors.pop(name)
    if t.dtype != dtype:
        raise ValueError(f"{where}: tensor {name} has dtype {t.dtype}, expected {dtype}")
    return t


def _scalar(t: torch.Tensor, name: str, where: str) -> torch.Tensor:
    if t.numel() != 1:
        raise ValueError(f"{where}: tensor {name} must hold one value, got shape {tuple(t.shape)}")
    return t.float().reshape(())


def read_checkpoint(model_dir: str | Path) -> tuple[QuantizedCheckpoint, str]:
    """Read a compressed-tensors or ModelOpt directory into memory: (checkpoint, dialect).

    Refuses (ValueError naming the tensor) missing or orphan scales, wrong dtypes or shapes, NaN/zero/negative
    scales and global scales whose encode/decode convention is inverted."""
    model_dir = Path(model_dir)
    fmt = detect_format(model_dir)
    if fmt is None:
        raise ValueError(f"{model_dir}: config.json has no quantization_config; not a quantized checkpoint")
    config = read_config(model_dir)
    tensors = load_safetensors_dir(model_dir)
    where = str(model_dir)
    layers: dict[str, PackedWeight] = {}
    if fmt == "compressed-tensors":
        qc = config["quantization_config"]
        scheme = _ct_scheme(qc, where)
        ignore = list(qc.get("ignore") or [])
        if scheme == "fp8":
            names = [n[: -len(".weight")] for n, t in tensors.items()
                     if n.endswith(".weight") and t.dtype == torch.float8_e4m3fn]
        else:
            names = [n[: -len(".weight_packed")] for n in tensors if n.endswith(".weight_packed")]
        for m in sorted(names):
            if scheme == "fp8":
                data = _need(tensors, f"{m}.weight", torch.float8_e4m3fn, where)
                scales = _scalar(_need(tensors, f"{m}.weight_scale", torch.float32, where), f"{m}.weight_scale", where)
                inp = _scalar(_need(tensors, f"{m}.input_scale", torch.float32, where), f"{m}.input_scale", where)
                layers[m] = PackedWeight(scheme, data, scales, None, inp)
                continue
            data = _need(tensors, f"{m}.weight_packed", torch.uint8, where)
            sdtype = torch.uint8 if scheme == "mxfp4" else torch.float8_e4m3fn
            scales = _need(tensors, f"{m}.weight_scale", sdtype, where)
            g = inp = None
            if scheme != "mxfp4":
                n = f"{m}.weight_global_scale"
                g = _scalar(_need(tensors, n, torch.float32, where), n, where)
            if scheme == "nvfp4":
                n = f"{m}.input_global_scale"
                inp = _scalar(_need(tensors, n, torch.float32, where), n, where)
            layers[m] = PackedWeight(scheme, data, scales, g, inp)
    else:
        mo_path = model_dir / MODELOPT_CONFIG_FILE
        quant = json.loads(mo_path.read_text())["quantization"] if mo_path.is_file() else config["quantization_config"]
        algo = quant.get("quant_algo")
        schemes = {v: k for k, v in MODELOPT_ALGOS.items()}
        if algo not in schemes:
            raise ValueError(f"{where}: unsupported ModelOpt quant_algo {algo!r} (supported: {sorted(schemes)})")
        scheme = schemes[algo]
        ignore = list(quant.get("exclude_modules") or quant.get("ignore") or [])
        qdtype = torch.uint8 if scheme == "nvfp4" else torch.float8_e4m3fn
        names = sorted(n[: -len(".weight")] for n, t in tensors.items() if n.endswith(".weight") and t.dtype == qdtype)
        for m in names:
            data = _need(tensors, f"{m}.weight", qdtype, where)
            inp = _scalar(_need(tensors, f"{m}.input_scale", torch.float32, where), f"{m}.input_scale", where)
            if scheme == "fp8":
                s = _scalar(_need(tensors, f"{m}.weight_scale", torch.float32, where), f"{m}.weight_scale", where)
                layers[m] = PackedWeight(scheme, data, s, None, inp)
                continue
            scales = _need(tensors, f"{m}.weight_scale", torch.float8_e4m3fn, where)
            n = f"{m}.weight_scale_2"
            g_dec = _scalar(_need(tensors, n, torch.float32, where), n, where)
            _check_global(g_dec, n, where)
            _check_global(inp, f"{m}.input_scale", where)
            # the encode factors, exactly as compressed-tensors' converter and vLLM compute them
            layers[m] = PackedWeight(scheme, data, scales, reciprocal(g_dec), reciprocal(inp))
    orphans = [n for n in tensors if n.rpartition(".")[2] in _QUANT_PARAMS]
    if orphans:
        raise ValueError(f"{where}: quantization tensor(s) without a quantized weight: {orphans[:5]}")
    for m, w in layers.items():
        _check_shapes(m, w, where, fmt)
        _check_values(m, w, where, fmt)
    ckpt = QuantizedCheckpoint({k: v for k, v in config.items() if k != "quantization_config"}, scheme, layers,
                               tensors, ignore)
    return ckpt, fmt


_QUANT_PARAMS = {"weight_packed", "weight_scale", "weight_global_scale", "input_global_scale", "weight_scale_2",
                 "input_scale"}


def _check_global(g: torch.Tensor, name: str, where: str) -> None:
    if not bool(torch.isfinite(g)) or float(g) <= 0:
        raise ValueError(f"{where}: global scale {name} = {float(g)} (must be finite and > 0)")


def _check_shapes(m: str, w: PackedWeight, where: str, fmt: str) -> None:
    pname = "weight_packed" if fmt == "compressed-tensors" and w.scheme != "fp8" else "weight"
    if w.data.ndim != 2:
        raise ValueError(f"{where}: tensor {m}.{pname} must be 2-D, got shape {tuple(w.data.shape)}")
    rows, cols = w.data.shape
    if w.scheme == "fp8":
        return
    block = 32 if w.scheme == "mxfp4" else 16
    expect = (rows, cols * 2 // block)
    if (cols * 2) % block or tuple(w.scales.shape) != expect:
        raise ValueError(f"{where}: tensor {m}.weight_scale has shape {tuple(w.scales.shape)}, expected {expect} "
                         f"for {m}.{pname} of shape {tuple(w.data.shape)} (one scale per {block} weights)")


def _check_values(m: str, w: PackedWeight, where: str, fmt: str) -> None:
    """Refuse NaN/zero/negative scales and global scales whose encode/decode convention is inverted."""
    ct = fmt == "compressed-tensors"
    if w.scheme == "fp8":
        _check_global(w.scales, f"{m}.weight_scale", where)
        if w.input_scale is not None:
            _check_global(w.input_scale, f"{m}.input_scale", where)
        return
    if w.scheme == "mxfp4":
        bad = (w.scales == 255).nonzero()
        if len(bad):
            raise ValueError(f"{where}: tensor {m}.weight_scale has a NaN E8M0 scale (0xFF) at "
                             f"{tuple(bad[0].tolist())}")
        return
    gname = f"{m}.weight_global_scale" if ct else f"{m}.weight_scale_2"
    iname = f"{m}.input_global_scale" if ct else f"{m}.input_scale"
    _check_global(w.global_scale, gname, where)
    s = w.scales.float()
    bad = (~torch.isfinite(s)).nonzero()
    if len(bad):
        raise ValueError(f"{where}: tensor {m}.weight_scale has a NaN block scale at {tuple(bad[0].tolist())}")
    bad = (s < 0).nonzero()
    if len(bad):
        raise ValueError(f"{where}: tensor {m}.weight_scale has a negative block scale at {tuple(bad[0].tolist())}")
    implied = 6.0 * float(s.max()) / float(w.global_scale) if s.numel() else 0.0
    if implied > MAX_PLAUSIBLE_WEIGHT_AMAX:
        stored = float(w.global_scale) if ct else float(reciprocal(w.global_scale))
        kind = "an ENCODE factor 2688/amax (normally >> 1)" if ct else "a DECODE factor amax/2688 (normally << 1)"
        raise ValueError(
            f"{where}: global scale {gname} = {stored:.6g} looks inverted: {fmt} stores {kind}; read that way "
            f"the weights of {m} would reach +-{implied:.4g} (> {MAX_PLAUSIBLE_WEIGHT_AMAX:g}, the largest amax "
            f"an E4M3 block scale can describe with a unit global factor); read the other way they reach "
            f"+-{6.0 * float(s.max()) * float(w.global_scale) if ct else 6.0 * float(s.max()) / stored:.4g}")
    if w.input_scale is not None:
        _check_global(w.input_scale, iname, where)
        implied_in = 2688.0 / float(w.input_scale)
        if implied_in > MAX_PLAUSIBLE_INPUT_AMAX:
            stored = float(w.input_scale) if ct else float(reciprocal(w.input_scale))
            raise ValueError(
                f"{where}: activation global scale {iname} = {stored:.6g} looks inverted: it implies "
                f"activations up to +-{implied_in:.4g} (> {MAX_PLAUSIBLE_INPUT_AMAX:g}); "
                f"{'compressed-tensors stores 2688/amax' if ct else 'ModelOpt stores amax/2688'}")
