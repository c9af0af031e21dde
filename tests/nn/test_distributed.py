"""DDP and FSDP2 (fully_shard) with 2 CPU processes on gloo give the losses of one process.

The single-process run accumulates the same two micro-batches the two ranks see, so every
quantization (per-tensor amax of each micro-batch's activations and gradients, amax of the full
weight) is the same in both runs. Stochastic rounding is off here: its random stream depends on
which process quantizes which micro-batch.
"""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from fp4lab.nn import convert

RECIPE = "nvfp4:stochastic_rounding=false,bf16_layers=last:1"
STEPS = 3


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
    return convert(model, RECIPE)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 16, 32, generator=g), torch.randn(2, 16, 16, generator=g)) for _ in range(STEPS)]


def single_process_losses():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for x, t in batches():
        total = 0.0
        for r in range(2):
            loss = (model(x[r]) - t[r]).square().mean() / 2
            loss.backward()
            total += loss.item()
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses, model.state_dict()


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        for mode in ("ddp", "fsdp2"):
            _train(rank, mode, out_dir)
    finally:
        dist.destroy_process_group()


def _train(rank, mode, out_dir):
    model = make_model()
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (2,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    layers = [m for m in model.modules() if hasattr(m, "sr_state")]
    for m in layers:  # each rank its own SR stream (as the trainer seeds them); DDP must not sync it
        m.sr_state.fill_(1000 + rank)
    losses = []
    for x, t in batches():
        loss = (model(x[rank]) - t[rank]).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        both = loss.detach().clone() / 2
        dist.all_reduce(both)
        losses.append(both.item())
    state = model.module.state_dict() if mode == "ddp" else {
        k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()
    }
    sr = torch.tensor([int(m.sr_state) for m in layers])
    gathered = [torch.zeros_like(sr) for _ in range(2)]
    dist.all_gather(gathered, sr)
    if rank == 0:
        torch.save({"losses": losses, "state": state, "sr_states": gathered}, os.path.join(out_dir, f"{mode}.pt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(_free_port(), d), nprocs=2, join=True)  # one spawn runs both modes
        yield {mode: torch.load(os.path.join(d, f"{mode}.pt")) for mode in ("ddp", "fsdp2")}


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_match_one(mode, two_process_results):
    ref_losses, ref_state = single_process_losses()
    got = two_process_results[mode]
    assert len(got["losses"]) == STEPS
    # gradient all-reduce sums in a different order than local accumulation: fp32 rounding only
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref_losses), rtol=1e-4, atol=1e-6)
    assert set(got["state"]) == set(ref_state)
    for k, v in ref_state.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_each_rank_keeps_its_own_sr_stream(mode, two_process_results):
    # DDP broadcasts rank 0's buffers every forward: the seed state must not be one
    ranks = two_process_results[mode]["sr_states"]
    assert len(ranks[0]) == 3 and (ranks[0] == 1000).all() and (ranks[1] == 1001).all(), ranks
