"""Checkpoints: atomic writes, corruption detection, refusing to resume a different run."""
import os
import threading

import pytest
import torch

from fp4lab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.train.conftest import FAST, run_cli


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.arange(10)}, path)

    def crash(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"step": 2, "w": torch.arange(10) * 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left


def test_reader_never_sees_a_partial_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 0, "w": torch.zeros(200_000)}, path)
    stop = threading.Event()
    seen, errors = [], []

    def writer():
        step = 1
        while not stop.is_set():
            save_checkpoint({"step": step, "w": torch.full((200_000,), float(step))}, path)
            step += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(60):
            try:
                payload = load_checkpoint(path)
                assert torch.all(payload["w"] == payload["step"])
                seen.append(payload["step"])
            except Exception as err:  # noqa: BLE001
                errors.append(err)
    finally:
        stop.set()
        t.join()
    assert not errors
    assert len(set(seen)) > 1  # the writer really was replacing the file while we read


def test_corrupt_and_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 3, "w": torch.randn(1000)}, path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    torch.save({"step": 3}, path)
    with pytest.raises(CheckpointError, match="not an fp4lab checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_refuses_a_different_run(tmp_path, data_dir):
    from fp4lab.train import TrainConfig, train

    out = tmp_path / "run"
    cfg = dict(out=str(out), preset="tiny", data=str(data_dir), steps=2, batch_size=2, seq_len=16,
               eval_batches=1, save_model=False, progress=False)
    train(TrainConfig(**cfg))
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(**cfg))
    with pytest.raises(CheckpointError, match="preset: checkpoint has 'tiny', this run has 'shakespeare-char'"):
        train(TrainConfig(**{**cfg, "preset": "shakespeare-char"}, resume=True))
    with pytest.raises(CheckpointError, match="recipe: checkpoint has 'bf16', this run has 'mxfp4'"):
        train(TrainConfig(**cfg, recipe="mxfp4", resume=True))
    with pytest.raises(CheckpointError, match="seed"):
        train(TrainConfig(**cfg, seed=5, resume=True))

    # the command line turns it into a one-line error and exit status 2
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:-7])
    proc = run_cli("train", *FAST, "--data", data_dir, "--steps", 2, "--batch-size", 2, "--seq-len", 16,
                   "--out", out, "--resume", check=False)
    assert proc.returncode == 2 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr
