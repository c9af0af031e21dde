"""Token batches from a prepared data directory, in an order that is a pure function of (seed, step).

Because the order depends only on the seed and the step number, the data position saved in a
checkpoint is just the step, and every rank of a distributed run can pick its own rows of the
same global batch without communication.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class TokenData:
    """Memory-mapped train/val token streams of a directory written by `prepare_corpus`."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.dir} is not a prepared data directory (no meta.json); "
                "run `fp4lab data prepare TEXT... --out DIR` first"
            )
        self.meta = json.loads(meta_path.read_text())
        self.vocab_size = int(self.meta["vocab_size"])
        self.splits = {}
        for split in ("train", "val"):
            path = self.dir / f"{split}.bin"
            expected = int(self.meta[f"{split}_tokens"])
            dtype = np.dtype(self.meta["dtype"])
            if not path.is_file() or path.stat().st_size != expected * dtype.itemsize:
                raise ValueError(
                    f"{path} is missing or has the wrong size (meta.json says {expected} tokens of "
                    f"{dtype.name}); prepare the data again"
                )
            self.splits[split] = np.memmap(path, dtype=dtype, mode="r")

    def batch(self, split: str, seed: int, step: int, rows: slice, global_batch: int, seq_len: int):
        """Rows ``rows`` of global batch number ``step``: (inputs, targets), int64 [n, seq_len]."""
        tokens = self.splits[split]
        if len(tokens) <= seq_len + 1:
            raise ValueError(
                f"{split} split of {self.dir} has {len(tokens)} tokens, fewer than seq_len+1 = {seq_len + 1}"
            )
        g = torch.Generator().manual_seed(_mix(seed, step, split))
        starts = torch.randint(0, len(tokens) - seq_len - 1, (global_batch,), generator=g)[rows]
        block = np.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()]).astype(np.int64)
        block = torch.from_numpy(block)
        return block[:, :-1], block[:, 1:]


def _mix(seed: int, step: int, split: str) -> int:
    # distinct, reproducible generator seeds per (seed, step, split); validation uses its own stream
    return (seed * 1_000_003 + step * 7919 + (0 if split == "train" else 0x5EED)) % (1 << 63)
