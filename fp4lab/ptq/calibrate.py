"""Calibration: run token windows through the model and record, per linear layer, the input amax
(static activation scales for W4A4 / W8A8) and the GPTQ Hessian H = 2/n * sum x^T x (fp32)."""
from __future__ import annotations

import torch
from torch import nn


def calibration_windows(ids: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`n_samples` windows of `seq_len` tokens at random (seeded) offsets of the 1-D token stream `ids`."""
    ids = torch.as_tensor(ids).long().flatten()
    if ids.numel() <= seq_len:
        raise ValueError(f"calibration data has {ids.numel()} tokens; need more than --calib-len {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def collect_stats(model: nn.Module, windows: torch.Tensor, names: list[str], *, hessian: bool,
                  batch_size: int = 8) -> dict[str, dict]:
    """{name: {"amax": fp32 0-dim, "H": [in, in] or None, "n": tokens}} for the linear layers `names`."""
    device = next(model.parameters()).device
    stats = {n: {"amax": torch.zeros((), device=device), "H": None, "n": 0} for n in names}
    hooks = []

    def make_hook(name):
        def hook(module, args):
            x = args[0].detach().flatten(0, -2).float()
            st = stats[name]
            st["amax"] = torch.maximum(st["amax"], x.abs().amax())
            if hessian:
                n_new = x.shape[0]
                H = torch.zeros(x.shape[1], x.shape[1], device=x.device) if st["H"] is None else st["H"]
                # running mean of 2 x^T x, as the GPTQ reference accumulates it
                H *= st["n"] / (st["n"] + n_new)
                xs = x * (2.0 / (st["n"] + n_new)) ** 0.5
                H += xs.T @ xs
                st["H"] = H
            st["n"] += x.shape[0]
        return hook

    for name in names:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(make_hook(name)))
    try:
        for i in range(0, windows.shape[0], batch_size):
            model(windows[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    return stats
