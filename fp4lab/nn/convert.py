"""convert / set_recipe: put a recipe on every eligible nn.Linear of a model, in place.

Never converted (paper §4.1 keeps them in high precision): embeddings, the LM head (the module HF's
`get_output_embeddings()` returns, a Linear named `lm_head`/`embed_out`, or one tied to an embedding),
norms, attention BMMs, and the projections inside nn.MultiheadAttention (it reads their weights
directly). `bf16_layers` selects whole transformer blocks (found as the longest ModuleList/Sequential
of same-type blocks, e.g. HF `model.model.layers`); a model without such a list counts every Linear
as its own block. Linears outside the blocks are quantized unless a `re:` selector names them.
"""
from __future__ import annotations

import math
import re
import warnings

import torch.nn as nn

from fp4lab.nn.quant_linear import BF16, QuantLinear, unsupported_shape
from fp4lab.recipes import RecipeConfig, get_recipe, parse_bf16_layers

_HEAD_NAMES = ("lm_head", "embed_out")


def find_blocks(model: nn.Module) -> list[str]:
    """Module names of the transformer blocks: the longest list of same-class children holding Linears."""
    best: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) < 2:
            continue
        kids = list(mod.children())
        same = all(type(k) is type(kids[0]) for k in kids)
        has_linear = all(any(isinstance(m, nn.Linear) for m in k.modules()) for k in kids)
        if same and has_linear and not isinstance(kids[0], nn.Linear) and len(kids) > len(best):
            best = [f"{name}.{i}" if name else str(i) for i in range(len(kids))]
    return best


def _never_convert(model: nn.Module) -> dict[str, str]:
    """name -> reason for the Linears that stay untouched whatever the recipe."""
    skip: dict[str, str] = {}
    head = None
    get_head = getattr(model, "get_output_embeddings", None)
    if callable(get_head):
        try:
            head = get_head()
        except (NotImplementedError, AttributeError):
            head = None
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            for sub, m in mod.named_modules():
                if isinstance(m, nn.Linear):
                    skip[f"{name}.{sub}"] = "inside nn.MultiheadAttention"
        if not isinstance(mod, nn.Linear):
            continue
        if mod is head or name.rsplit(".", 1)[-1] in _HEAD_NAMES:
            skip[name] = "LM head (kept high precision)"
        elif id(mod.weight) in embedding_weights:
            skip[name] = "tied to an embedding"
    return skip


def _selected_blocks(selector: str, n_blocks: int) -> set[int]:
    chosen: set[int] = set()
    for kind, value in parse_bf16_layers(selector):
        if kind == "first":
            chosen.update(range(min(int(value), n_blocks)))
        elif kind == "last":
            chosen.update(range(max(n_blocks - int(value), 0), n_blocks))
        elif kind == "fraction":
            # round up: the paper keeps ~15% of blocks (8 of 52, 10 of 62) and a 12-block model keeps 2
            k = math.ceil(value * n_blocks - 1e-9)
            chosen.update(range(n_blocks - k, n_blocks))
    return chosen


def _bf16_reason(layer: QuantLinear, recipe: RecipeConfig, n_blocks: int) -> str | None:
    if not recipe.quantized:
        return None
    parts = parse_bf16_layers(recipe.bf16_layers)
    if parts and parts[0][0] == "regex":
        return f"bf16_layers={recipe.bf16_layers}" if re.search(parts[0][1], layer.name) else None
    if layer.block_index is not None and layer.block_index in _selected_blocks(recipe.bf16_layers, n_blocks):
        return f"bf16_layers={recipe.bf16_layers} (block {layer.block_index} of {n_blocks})"
    return None


def quant_linears(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def convert(model: nn.Module, recipe: "RecipeConfig | str" = "nvfp4") -> nn.Module:
    """Replace every eligible nn.Linear by a QuantLinear sharing its parameters; returns `model`.

    Layers picked by `recipe.bf16_layers`, or whose dims are not multiples of the block size (with a
    warning), become QuantLinear in BF16 so that `set_recipe` can switch them later.
    """
    recipe = get_recipe(recipe)
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("convert: pass the model that contains the Linear (the top-level module is replaced in place)")
    skip = _never_convert(model)
    candidates = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not isinstance(mod, QuantLinear) and name not in skip
    ]
    if not candidates and not quant_linears(model):
        n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
        why = f"its {n_linear} Linear layer(s) are all excluded ({', '.join(sorted(set(skip.values())))})" if n_linear \
            else "it has no nn.Linear layers"
        raise ValueError(f"convert: nothing to quantize in {type(model).__name__}: {why}")

    blocks = find_blocks(model)
    n_blocks = len(blocks) if blocks else len(candidates)
    for i, (name, mod) in enumerate(candidates):
        if blocks:
            idx = next((b for b, p in enumerate(blocks) if name.startswith(p + ".")), None)
        else:
            idx = i
        q = QuantLinear.from_linear(mod, BF16, name=name, block_index=idx, seed_offset=i)
        q.n_blocks = n_blocks
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, q)

    for layer in quant_linears(model):
        layer.n_blocks = getattr(layer, "n_blocks", n_blocks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_recipe(model, recipe)
    _warn_once([str(w.message) for w in caught])
    return model


def set_recipe(model: nn.Module, recipe: "RecipeConfig | str", forward_only: bool = False) -> nn.Module:
    """Switch every QuantLinear to `recipe` (bf16_layers re-applied); returns `model`.

    forward_only=True changes only Fprop and keeps each layer's backward recipe: the paper's
    end-of-training switch of the forward pass to BF16 (spec §4.7), e.g.
    `set_recipe(model, "bf16", forward_only=True)`.
    """
    recipe = get_recipe(recipe)
    layers = quant_linears(model)
    if not layers:
        raise ValueError("set_recipe: the model has no QuantLinear layers; call fp4lab.convert(model, recipe) first")
    for layer in layers:
        reason = _bf16_reason(layer, recipe, layer.n_blocks)
        layer_recipe = BF16 if reason else recipe
        if forward_only:
            layer.set_recipe(layer.recipe, forward_recipe=layer_recipe, note=layer.note)
        else:
            layer.set_recipe(layer_recipe, note=reason or "")
        layer.model_recipe = recipe if not forward_only else getattr(layer, "model_recipe", layer.recipe)
    return model


def _warn_once(messages: list[str]) -> None:
    if messages:
        shown = "; ".join(messages[:5]) + (f"; and {len(messages) - 5} more" if len(messages) > 5 else "")
        warnings.warn(f"{len(messages)} layer(s) kept in BF16: {shown}", stacklevel=3)


__all__ = ["convert", "set_recipe", "find_blocks", "quant_linears", "unsupported_shape"]
