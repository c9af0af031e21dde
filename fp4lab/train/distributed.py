"""torchrun support: process group set-up, DDP / FSDP2 wrapping, and full (rank-0) state dicts.

Under ``torchrun`` (RANK / WORLD_SIZE set) the trainer joins a process group: NCCL on CUDA,
gloo on CPU. Every rank reads its own rows of the same global batch, so N processes with
batch B see exactly the data of 1 process with batch N*B.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group if there is one (idempotent)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap_model(model, mode: str, d: Dist, device: torch.device):
    """DDP or FSDP2 (``fully_shard`` per decoder layer, then the root) when distributed."""
    if not d.enabled:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (d.world_size,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown --parallel {mode!r}: use 'ddp' or 'fsdp2'")


def unwrap(model):
    """The HF model inside a DDP / torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def full_state(model, optimizer, mode: str, d: Dist) -> tuple[dict, dict]:
    """Model and optimizer state dicts with full (unsharded) CPU tensors, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(unwrap(model) if mode != "fsdp2" else model, optimizer, options=opts)


def load_full_state(model, optimizer, model_sd: dict, optim_sd: dict, mode: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_state_dict(unwrap(model) if mode != "fsdp2" else model, optimizer,
                   model_state_dict=model_sd, optim_state_dict=optim_sd, options=opts)


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= d.world_size
    return t


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
