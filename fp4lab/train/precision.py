"""Recipes on a model: convert at the start, switch precision at a fraction of training.

The plain "bf16" recipe leaves the HF model untouched (BF16 autocast on GPU, FP32 on CPU), which
is the honest baseline; every other recipe goes through ``fp4lab.nn.convert``.
"""
from __future__ import annotations

import warnings

import torch

BASELINE = "bf16"


def _recipes():
    try:
        from fp4lab.nn import convert, set_recipe
        from fp4lab.recipes import get_recipe
    except ImportError as err:
        raise RuntimeError(f"quantized recipes need fp4lab.recipes and fp4lab.nn ({err})") from None
    return get_recipe, convert, set_recipe


def recipe_name(spec: str) -> str:
    """The canonical name of a recipe spec (as the recipe parser prints it)."""
    if spec == BASELINE:
        return spec
    get_recipe, _, _ = _recipes()
    return get_recipe(spec).spec()


def _seeded(recipe, sr_seed: int | None):
    """The recipe with the run's stochastic-rounding seed: each run seed (and each rank) must draw its
    own SR noise, or a multi-seed comparison would repeat one noise stream."""
    import dataclasses

    return recipe if sr_seed is None else dataclasses.replace(recipe, seed=sr_seed)


def apply_recipe(model, spec: str, sr_seed: int | None = None):
    if spec == BASELINE:
        return model
    get_recipe, convert, _ = _recipes()
    return convert(model, _seeded(get_recipe(spec), sr_seed))


def is_converted(model) -> bool:
    return any(type(m).__name__ == "QuantLinear" for m in model.modules())


def switch_recipe(model, spec: str, forward_only: bool, sr_seed: int | None = None):
    """Change precision in place, keeping the same parameter objects (the optimizer holds them)."""
    get_recipe, convert, set_recipe = _recipes()
    recipe = _seeded(get_recipe(spec), sr_seed)
    if is_converted(model):
        set_recipe(model, recipe, forward_only=forward_only)
        return model
    before = [id(p) for p in model.parameters()]
    convert(model, recipe)
    if forward_only:
        set_recipe(model, recipe, forward_only=True)
    if [id(p) for p in model.parameters()] != before:
        raise RuntimeError("switching recipe replaced the model's parameters; the optimizer would lose them")
    return model


def generator_states(model) -> dict:
    """The stochastic-rounding seed states of the layers that own one (read once per checkpoint)."""
    return {name: int(m.sr_state) for name, m in model.named_modules()
            if isinstance(getattr(m, "sr_state", None), torch.Tensor)}


def set_generator_states(model, states: dict) -> None:
    mods = dict(model.named_modules())
    for name, state in states.items():
        if name not in mods or not isinstance(getattr(mods[name], "sr_state", None), torch.Tensor):
            raise ValueError(f"checkpoint has a random-generator state for layer {name!r}, which this model lacks")
        if isinstance(state, torch.Tensor):  # a CPU Generator state, from fp4lab before device seed states
            warnings.warn(f"checkpoint holds an old-style stochastic-rounding generator for {name!r}: its SR "
                          f"stream restarts from the layer seed, so the resumed run is not bit-identical", stacklevel=2)
            continue
        mods[name].sr_state.fill_(int(state))
