"""DDP and FSDP2 on 2 CPU processes (gloo) match 1 process with the same global batch."""
import os
import subprocess
import sys

import pytest

from tests.train.conftest import FAST, metric_rows, run_cli

ARGS = ["--steps", 3, "--eval-every", 3, "--eval-batches", 1]


def _losses(run):
    return ([r["loss"] for r in metric_rows(run, "train")] + [r["val_loss"] for r in metric_rows(run, "val")])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
    one = tmp_path_factory.mktemp("one")
    run_cli("train", *FAST, *ARGS, "--data", data_dir, "--out", one)
    return one


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_match_one(tmp_path, data_dir, one_process, mode):
    fast = [a if a != "4" else "2" for a in FAST]  # batch 2 per process x 2 processes = 4
    one = one_process
    two = tmp_path / mode
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fp4lab", "train", *map(str, fast), *map(str, ARGS), "--data", str(data_dir),
           "--parallel", mode, "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = _losses(one), _losses(two)
    assert len(ref) == len(got) == 4
    # same data and weights; only the order of float reductions differs (mean of 4 vs mean of 2 means)
    assert got == pytest.approx(ref, rel=1e-5, abs=0)
