"""Per-layer quantization diagnostics: SQNR, relative error, underflow to zero, saturation at ±6, scales.

For a high-precision model directory the weights are quantized here (RTN, `scheme`); for a quantized
directory the stored codes are read, and the error columns need the original model (`reference`).
SQNR = 10 log10(sum w^2 / sum (w - q)^2); underflow = share of nonzero weights that decode to 0;
saturated = share of FP4 codes at ±6 (FP8: at ±448).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from fp4lab.export.checkpoint import PackedWeight, detect_format, load_safetensors_dir


def layer_stats(w: torch.Tensor | None, pw: PackedWeight) -> dict:
    """Diagnostics of one layer; `w` (the original weight) may be None."""
    q = pw.dequantize(torch.float32)
    if pw.scheme == "fp8":
        saturated = (pw.data.float().abs() == 448.0).float().mean()
        scale_log2 = torch.log2(pw.scales.float()).reshape(1)
    else:
        from fp4lab.formats import unpack_e2m1

        saturated = ((unpack_e2m1(pw.data) & 7) == 7).float().mean()
        s = pw.scales.float() if pw.scheme != "mxfp4" else torch.exp2(pw.scales.float() - 127)
        s = s.flatten()
        scale_log2 = torch.log2(s[s > 0])
    out = {"shape": tuple(pw.shape), "saturated_pct": 100 * float(saturated), "scale_log2": scale_log2,
           "zero_pct": 100 * float((q == 0).float().mean())}
    if w is not None:
        w = w.float()
        err = ((w - q) ** 2).sum()
        sig = (w ** 2).sum()
        out["sqnr_db"] = 10 * math.log10(float(sig) / float(err)) if float(err) > 0 else math.inf
        out["rel_err"] = math.sqrt(float(err) / float(sig)) if float(sig) > 0 else 0.0
        nonzero = w != 0
        out["underflow_pct"] = 100 * float(((q == 0) & nonzero).sum()) / max(int(nonzero.sum()), 1)
    return out


def inspect_model(model_dir: str | Path, *, scheme: str = "nvfp4a16", reference: str | Path | None = None,
                  four_over_six: bool = False) -> dict[str, dict]:
    """{layer name: stats} for every quantized (or quantizable) linear layer of `model_dir`."""
    from fp4lab.ptq.quantize import PTQConfig, select_layers
    from fp4lab.ptq.weights import quantize_weight_rtn

    model_dir = Path(model_dir)
    if detect_format(model_dir) is None:
        from fp4lab.ptq.quantize import fused_groups, load_model_for_ptq

        model = load_model_for_ptq(model_dir)
        names, _ = select_layers(model, PTQConfig(scheme=scheme, four_over_six=four_over_six))
        out = {}
        for group in fused_groups(names):
            ws = {n: model.get_submodule(n).weight.detach().float() for n in group}
            amax = max(w.abs().amax() for w in ws.values())
            for n, w in ws.items():
                g = amax if scheme.startswith("nvfp4") else None
                out[n] = layer_stats(w, quantize_weight_rtn(w, scheme, global_amax=g, four_over_six=four_over_six))
        return out
    from fp4lab.export.dialects import read_checkpoint

    ckpt, _ = read_checkpoint(model_dir)
    ref = load_safetensors_dir(reference) if reference is not None else {}
    out = {}
    for n, pw in ckpt.layers.items():
        w = ref.get(f"{n}.weight")
        if w is not None and tuple(w.shape) != tuple(pw.shape):
            raise ValueError(f"reference {reference}: {n}.weight has shape {tuple(w.shape)}, quantized is {pw.shape}")
        out[n] = layer_stats(w, pw)
    return out


def render_table(stats: dict[str, dict], title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("layer", "shape", "SQNR dB", "rel. err", "underflow %", "zero %", "at ±max %", "scale log2 range"):
        table.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for n, s in stats.items():
        sl = s["scale_log2"]
        rng = f"{float(sl.min()):.1f}..{float(sl.max()):.1f}" if sl.numel() else "-"
        table.add_row(n, "x".join(map(str, s["shape"])),
                      f"{s['sqnr_db']:.2f}" if "sqnr_db" in s else "-",
                      f"{s['rel_err']:.4f}" if "rel_err" in s else "-",
                      f"{s['underflow_pct']:.2f}" if "underflow_pct" in s else "-",
                      f"{s['zero_pct']:.2f}", f"{s['saturated_pct']:.2f}", rng)
    return table


def plot(stats: dict[str, dict], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4, 0.18 * len(names) + 1.5)))
    if all("sqnr_db" in s for s in stats.values()):
        ax1.barh(range(len(names)), [stats[n]["sqnr_db"] for n in names])
        ax1.set_xlabel("SQNR (dB)")
    else:
        ax1.barh(range(len(names)), [stats[n]["saturated_pct"] for n in names])
        ax1.set_xlabel("% of codes at ±max (no reference weights given for SQNR)")
    ax1.set_yticks(range(len(names)), names, fontsize=6)
    ax1.invert_yaxis()
    scales = torch.cat([s["scale_log2"] for s in stats.values()])
    if scales.numel():
        ax2.hist(scales.numpy(), bins=60)
    ax2.set_xlabel("log2(block scale)")
    ax2.set_ylabel("blocks")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
