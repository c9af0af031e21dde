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


def graph_us(calls, repeats: int = 10, replays: int = 1) -> float:
    """Median µs per call of `calls` (zero-argument callables) captured back to back in one CUDA graph,
    after one eager warm-up round (compiles, allocates): GPU time without Python launch overhead."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    us = replay_ms(graph, repeats, replays) * 1e3 / len(calls)
    del graph
    return us
