"""Per-step metrics as JSON lines, and divergence events.

Rows: {"type": "train", step, tokens, loss, grad_norm, lr, tokens_per_s, step_time_s, peak_mem_bytes,
[grad_norm_layers]}, {"type": "val", step, tokens, val_loss}, {"type": "event", step, tokens, kind,
value, detail}. ``step`` counts optimizer steps done (1 after the first step).
"""
from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """All complete rows of a metrics file (a torn last line from a killed run is skipped).

    A missing ``metrics.jsonl`` is looked for as ``metrics.jsonl.xz`` (how studies/ commits them).
    """
    rows = []
    path = Path(path)
    packed = path.with_name(path.name + ".xz")
    if path.is_file():
        text = path.read_text()
    elif packed.is_file():
        import lzma

        text = lzma.decompress(packed.read_bytes()).decode()
    else:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Append-only JSONL writer; on resume it first drops rows written after the checkpoint."""

    def __init__(self, path: str | Path, resume_step: int | None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is None:
            keep = []
        else:
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)
        self._f = open(self.path, "a")

    def write(self, row: dict) -> None:
        if self.enabled:
            self._f.write(json.dumps(row) + "\n")

    def flush(self, durable: bool = True) -> None:
        """Hand rows to the OS (readers see them); ``durable`` also fsyncs (before a checkpoint)."""
        if self.enabled:
            self._f.flush()
            if durable:
                os.fsync(self._f.fileno())

    def close(self) -> None:
        if self.enabled:
            self._f.close()


class DivergenceMonitor:
    """Flags non-finite loss or gradient norm, and a loss above (1 + spike_threshold) x the mean
    of the previous ``window`` finite losses (only once the window is full)."""

    def __init__(self, spike_threshold: float, window: int = 20, history=()):
        self.spike_threshold = spike_threshold
        self.window = deque(history, maxlen=window)

    def check(self, loss: float, grad_norm: float) -> list[dict]:
        events = []
        if not math.isfinite(loss):
            events.append(dict(kind="nonfinite_loss", value=str(loss)))
        if not math.isfinite(grad_norm):
            events.append(dict(kind="nonfinite_grad", value=str(grad_norm)))
        if math.isfinite(loss):
            if len(self.window) == self.window.maxlen and self.spike_threshold > 0:
                mean = sum(self.window) / len(self.window)
                if loss > (1.0 + self.spike_threshold) * mean:
                    events.append(dict(kind="loss_spike", value=loss,
                                       detail=f"loss {loss:.4f} > (1+{self.spike_threshold}) x "
                                              f"mean of last {len(self.window)} ({mean:.4f})"))
            self.window.append(loss)
        return events

    def state(self) -> list[float]:
        return list(self.window)
