"""describe(model): one row per Linear layer with the precision of each of its three GEMMs."""
from __future__ import annotations

import torch.nn as nn

from fp4lab.nn.convert import _never_convert
from fp4lab.nn.quant_linear import QuantLinear


def _gemm_labels(layer: nn.Module) -> tuple[str, str, str, str]:
    """(formats, Fprop, Dgrad, Wgrad) labels, e.g. ('nvfp4', 'x 1x16, W 16x16', ...)."""
    if not isinstance(layer, QuantLinear) or not layer.plan.quantized:
        return ("bf16", "", "", "")
    p = layer.plan

    def gemm(a, b, na, nb):
        if a is None and b is None:
            return "bf16"
        return f"{na} {a.label(False) if a else 'bf16'}, {nb} {b.label(False) if b else 'bf16'}"

    fmts = []
    for q in (p.fprop_x, p.dgrad_dy, p.dgrad_w, p.wgrad_x):
        name = q.fmt.replace("_", "-") if q is not None else "bf16"
        if name not in fmts:
            fmts.append(name)
    return (
        "/".join(fmts),
        gemm(p.fprop_x, p.fprop_w, "x", "W"),
        gemm(p.dgrad_dy, p.dgrad_w, "dy", "W"),
        gemm(p.wgrad_dy, p.wgrad_x, "dyT", "xT"),
    )


def layer_rows(model: nn.Module) -> list[dict]:
    """Plain data behind `describe`: name, shape, block, the three GEMM precisions, note."""
    skip = _never_convert(model)
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        fmt, fprop, dgrad, wgrad = _gemm_labels(mod)
        if isinstance(mod, QuantLinear):
            note = mod.note
            if mod.forward_recipe is not None:
                note = (note + "; " if note else "") + f"forward switched to {mod.forward_recipe.spec()}"
            block = "" if mod.block_index is None else str(mod.block_index)
        else:
            note = skip.get(name, "not converted")
            block = ""
        rows.append(dict(name=name, shape=f"{mod.out_features}x{mod.in_features}", block=block, format=fmt,
                         fprop=fprop, dgrad=dgrad, wgrad=wgrad, note=note))
    return rows


def describe(model: nn.Module, width: int = 180) -> str:
    """A table of every Linear layer and its precision per GEMM (rendered with rich, returned as text)."""
    from rich.console import Console
    from rich.table import Table

    rows = layer_rows(model)
    n_q = sum(r["format"] != "bf16" for r in rows)
    table = Table(title=f"{type(model).__name__}: {n_q} of {len(rows)} linear layers quantized")
    for col in ("layer", "W out x in", "block", "format", "Fprop", "Dgrad", "Wgrad", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["shape"], r["block"], r["format"], r["fprop"], r["dgrad"], r["wgrad"], r["note"])
    console = Console(record=True, width=width, file=_Null(), color_system=None)
    console.print(table)
    return console.export_text()


class _Null:
    def write(self, _):
        return 0

    def flush(self):
        pass
