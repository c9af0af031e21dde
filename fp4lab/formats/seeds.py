"""Stochastic-rounding seed states: where SR's random numbers come from without a host round trip.

A seed state is a one-element int64 tensor on the data's device holding the next seed. Each SR
quantization takes the seed s it holds (the Triton kernels read it on the device and key Philox with
it; the reference seeds a torch.Generator with it) and advances the state in place by SEED_STEP. The
host never reads it on the hot path, so a CUDA graph that captures a step replays a fresh seed each time.
"""
from __future__ import annotations

import torch

# odd and > 2^31: the seeds of one state never repeat, two states that start a few apart never meet,
# and int64 does not wrap before 2^31 draws
SEED_STEP = 0x9E3779B9


def new_seed_state(seed: int, device=None) -> torch.Tensor:
    return torch.full((1,), seed, dtype=torch.int64, device=device)


def is_seed_state(obj) -> bool:
    return isinstance(obj, torch.Tensor)


def check_seed_state(state: torch.Tensor, device: torch.device, where: str) -> None:
    if state.dtype != torch.int64 or state.numel() != 1:
        raise ValueError(f"{where}: a seed state is a one-element int64 tensor, got {state.dtype} "
                         f"of shape {tuple(state.shape)}")
    if state.device != device:
        raise ValueError(f"{where}: the seed state is on {state.device} but the data on {device}")


def advance(state: torch.Tensor, steps: int = 1) -> None:
    state.add_(SEED_STEP * steps)  # one launch for several draws (int64 wraps the same either way)


def take_generator(state: torch.Tensor, device=None) -> torch.Generator:
    """A torch.Generator on `device` seeded with the state's seed; advances the state (reference path:
    reads the state on the host, a sync if it lives on a GPU)."""
    g = torch.Generator(device=device or state.device).manual_seed(int(state))
    advance(state)
    return g


def check_not_capturing(where: str) -> None:
    """A seed drawn on the host at call time would be frozen inside a CUDA graph capture, and every
    replay would reuse the same random numbers: refuse (seed states have no such problem)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"{where}: stochastic rounding cannot run inside a CUDA graph capture: its seed is drawn on "
            f"the host, so every replay would repeat the same random numbers. Run the step without CUDA "
            f"graphs (e.g. torch.compile without mode='reduce-overhead') or with stochastic_rounding=false"
        )
