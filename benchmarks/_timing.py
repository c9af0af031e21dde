"""Timing shared by the benchmark scripts (they run as `python3 benchmarks/NAME.py`, so this imports as `_timing`)."""
from __future__ import annotations

import statistics

import torch


def replay_ms(graph: torch.cuda.CUDAGraph, repeats: int = 10, replays: int = 1) -> float:
    """Median ms of one replay of a captured CUDA graph: `repeats` timings by CUDA events, each around
    `replays` back-to-back replays (after one untimed replay)."""
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return statistics.median(times)
