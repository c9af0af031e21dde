"""Timing shared by the benchmark scripts (they run as `python3 benchmarks/NAME.py`, so this imports as `_timing`)."""
from __future__ import annotations

import statistics

import torch


def replay_ms(graph: torch.cuda.CUDAGraph, replays: int = 10) -> float:
    """Median ms of one replay of a captured CUDA graph, by CUDA events around each replay (after one
    untimed replay)."""
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
