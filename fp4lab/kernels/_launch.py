"""Kernel launches without Triton's per-call argument binding.

`kernel[grid](...)` binds and specializes every argument and rebuilds the compiled kernel's cache key
on each call: 23-36 us of host time per launch of the NVFP4 tile kernel on two H100 machines, against
7-9 us for the compiled kernel's own launcher and 14 us through `launch`
(benchmarks/results/launch-host-h100-2026-11-23.json); an eager QuantLinear step makes 9 launches.
`launch` keys the compiled kernel by the runtime ints' values, each tensor's dtype and 16-byte
alignment (all Triton specializes a launch on, and more), the constexprs and options; it launches
through `kernel[grid]` the first time it sees a key and calls the compiled kernel's launcher directly
after that. The interpreter, launch hooks (profilers) and a Triton whose compiled kernels lack that
launcher take the ordinary path every time.
"""
from __future__ import annotations

import operator

import torch

from fp4lab.kernels._grid import interpreting

try:
    from triton import knobs as _knobs  # Triton >= 3.4: where the launch hooks live
except ImportError:  # pragma: no cover - older Triton: always the ordinary path
    _knobs = None

MAX_ENTRIES = 4096  # ints are keyed by value: a host-drawn SR seed makes a new key per call
_CACHE: dict = {}
_LAYOUTS: dict = {}  # kernel -> (getter of its tensor args, getter of its other args), or False


def _getter(positions):
    if not positions:
        return lambda args: ()
    if len(positions) == 1:
        i = positions[0]
        return lambda args: (args[i],)
    return operator.itemgetter(*positions)


def _layout(args):
    """Which positions hold tensors and which ints, learned from a kernel's first launch; False when
    other types (floats, bools, None) are passed, whose keys by value could collide with ints'."""
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    ints = [i for i, a in enumerate(args) if type(a) is int]
    if len(tensors) + len(ints) != len(args):
        return False
    return _getter(tensors), _getter(ints), tuple(tensors), tuple(ints)


def _same_layout(layout, args) -> bool:
    return (all(isinstance(args[i], torch.Tensor) for i in layout[2])
            and all(type(args[i]) is int for i in layout[3]))


def _no_hook(hook) -> bool:
    return hook is None or getattr(hook, "calls", True) == []  # Triton >= 3.5 keeps hooks in a HookChain


def _direct_ok() -> bool:
    rt = _knobs.runtime if _knobs is not None else None
    return rt is not None and _no_hook(rt.launch_enter_hook) and _no_hook(rt.launch_exit_hook)


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs). Runtime arguments positionally (tensors and ints, each position
    keeping its type from call to call), every constexpr and option by keyword, none left to its
    default."""
    if interpreting() or not _direct_ok() or not args[0].is_cuda:
        kernel[grid](*args, **kwargs)
        return
    layout = _LAYOUTS.get(kernel)
    if layout is None:
        layout = _LAYOUTS[kernel] = _layout(args)
    if layout is False:
        kernel[grid](*args, **kwargs)
        return
    device = torch.cuda.current_device()
    key = (kernel, device, layout[1](args), tuple([(t.dtype, t.data_ptr() % 16) for t in layout[0](args)]),
           tuple(kwargs.items()))
    entry = _CACHE.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **kwargs)
        names = kernel.arg_names[len(args):]
        if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            _LAYOUTS[kernel] = False  # a tensor by keyword would key by identity and be kept alive here
            return
        ok = (compiled is not None and hasattr(compiled, "packed_metadata") and _same_layout(layout, args)
              and all(n in kwargs for n in names))
        if len(_CACHE) >= MAX_ENTRIES:
            _CACHE.clear()
        # an entry of False: the ordinary path for this key from now on (a default left out, an
        # argument of another type at a position, or a Triton without the launcher)
        _CACHE[key] = (compiled, tuple(kwargs[n] for n in names)) if ok else False
        return
    if entry is False:
        kernel[grid](*args, **kwargs)
        return
    compiled, constexprs = entry
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                 torch._C._cuda_getCurrentRawStream(device), compiled.function, compiled.packed_metadata,
                 None, None, None, *args, *constexprs)
