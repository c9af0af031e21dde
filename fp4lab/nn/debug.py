"""Opt-in check that names the first layer producing a NaN/Inf (forward output, dx or dW).

Off by default because each check is a host sync; the hot path only propagates non-finite values
so that the trainer's once-per-step check sees them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fp4lab.nn.quant_linear import QuantLinear


class NonFiniteError(FloatingPointError):
    """Raised by `debug_nonfinite` with the module name and the pass that produced the value."""


def _check(t, where: str) -> None:
    if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(f"{where}: {n_bad} non-finite value(s) in a tensor of shape {tuple(t.shape)}")


class debug_nonfinite:
    """Hooks on every QuantLinear (or every Linear if none) of `model`; use as a context manager
    or call `.remove()`. Raises NonFiniteError naming the first module with a non-finite output,
    input gradient or weight gradient."""

    def __init__(self, model: nn.Module):
        mods = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
        if not mods:
            mods = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        self.handles = []
        for name, mod in mods:
            self.handles.append(mod.register_forward_hook(self._fwd(name)))
            self.handles.append(mod.register_full_backward_hook(self._bwd(name)))
            for pname, p in mod.named_parameters(recurse=False):
                if p.requires_grad:
                    self.handles.append(p.register_hook(self._grad(f"{name}.{pname}")))

    @staticmethod
    def _fwd(name):
        def hook(mod, inputs, output):
            _check(output, f"forward output of {name}")
        return hook

    @staticmethod
    def _bwd(name):
        def hook(mod, grad_input, grad_output):
            for g in grad_input:
                _check(g, f"input gradient (Dgrad) of {name}")
        return hook

    @staticmethod
    def _grad(name):
        def hook(g):
            _check(g, f"gradient of {name} (Wgrad)")
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
