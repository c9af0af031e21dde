"""Atomic, self-checking training checkpoints.

File layout: a 10-byte magic line, the SHA-256 (hex) of the payload and a newline, then the
payload written by ``torch.save``. It is written to a temporary file in the same directory,
fsync'd, and moved into place with ``os.replace`` (atomic on POSIX), so a reader sees either the
previous checkpoint or the new one, never a partial file; the digest catches later corruption.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

MAGIC = b"FP4LABCK1\n"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, corrupt, or from a different run."""


def save_checkpoint(payload: dict, path: str | Path) -> None:
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getbuffer()
    digest = hashlib.sha256(data).hexdigest().encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(digest + b"\n")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    # make the rename itself durable
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict:
    """The payload of a checkpoint; CheckpointError says what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an fp4lab checkpoint (bad header)")
    header_end = len(MAGIC) + 65
    digest, data = raw[len(MAGIC) : header_end - 1], memoryview(raw)[header_end:]
    if len(raw) < header_end or hashlib.sha256(data).hexdigest().encode() != digest:
        raise CheckpointError(
            f"{path} is corrupt: its SHA-256 does not match the one recorded in it "
            f"({len(raw)} bytes); delete it or resume from another copy"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path} could not be read: {err}") from None


def check_compatible(payload: dict, expected: dict, path: str | Path) -> None:
    """Refuse to resume when a run-defining setting differs from the checkpoint's."""
    saved = payload.get("run", {})
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
        for k, v in expected.items()
        if saved.get(k) != v
    ]
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: it belongs to a different run ("
            + "; ".join(diffs)
            + "). Use the same settings or another --out directory."
        )
