import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# a small prepared corpus shared by the trainer tests (the bundled one, byte tokens)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from fp4lab.data import BUNDLED_CORPUS, prepare_corpus

    out = tmp_path_factory.mktemp("data")
    prepare_corpus([BUNDLED_CORPUS], out, tokenizer="byte")
    return out


# fast settings for every CLI training run in these tests
FAST = ["--preset", "tiny", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "2",
        "--no-save-model", "--no-progress"]


def fp4lab_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "fp4lab", *map(str, args)]


def run_cli(*args, check=True, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(fp4lab_cmd(*args), capture_output=True, text=True, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"fp4lab {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def metric_rows(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


@pytest.fixture
def restore_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
