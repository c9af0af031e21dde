"""Learning-rate schedules as plain functions of the step (so a checkpoint needs only the step).

cosine: linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step.
wsd: linear warm-up, constant ``lr``, then a linear decay to ``lr * min_lr_ratio`` over the last
``decay_fraction`` of the steps (warmup-stable-decay, MiniCPM arXiv 2404.06395).
"""
from __future__ import annotations

import math


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` >= 1 is a step count; below 1 it is a fraction of the run."""
    n = int(warmup) if warmup >= 1 else int(round(warmup * total_steps))
    return max(0, min(n, total_steps))


def lr_at(step: int, *, lr: float, total_steps: int, warmup: float, schedule: str = "cosine",
          min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    n_warm = warmup_steps(warmup, total_steps)
    min_lr = lr * min_lr_ratio
    if step < n_warm:
        return lr * (step + 1) / n_warm
    if schedule == "cosine":
        span = max(1, total_steps - 1 - n_warm)
        progress = min(1.0, (step - n_warm) / span)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        n_decay = max(1, int(round(decay_fraction * total_steps)))
        decay_start = total_steps - n_decay
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start + 1) / n_decay)
        return lr - (lr - min_lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}: use 'cosine' or 'wsd'")
