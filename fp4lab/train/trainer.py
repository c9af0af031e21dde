"""The training loop: one function, `train(cfg)`, used by `fp4lab train`, `fp4lab compare` and the
speed benchmark.

Numerics: AdamW (betas 0.9/0.95 unless the preset or --beta2 says otherwise, decoupled weight decay
on matrices only), cross-entropy in FP32 on BF16-autocast logits on GPU, everything FP32 on CPU. The data order, the schedule and the
initial weights are pure functions of (seed, step), and the RNG states are checkpointed, so a
resumed run repeats the uninterrupted one bit for bit on the CPU (tested). On a GPU it resumes the
same data order, schedule and RNG streams, but GPU training is not bit-deterministic run to run (two
identical H100 runs differed at step 5 by 1e-5 in the gradient norm, studies/shakespeare-char), so a
resumed GPU run matches the uninterrupted one only as closely as a rerun does.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from fp4lab.train.checkpoint import CHECKPOINT_NAME, check_compatible, load_checkpoint, save_checkpoint
from fp4lab.train.config import TrainConfig
from fp4lab.train.distributed import (Dist, all_reduce_mean, barrier, full_state, init_distributed,
                                      load_full_state, unwrap, wrap_model)
from fp4lab.train.metrics import METRICS_NAME, DivergenceMonitor, MetricsLog, read_metrics
from fp4lab.train.precision import (apply_recipe, generator_states, recipe_name, set_generator_states,
                                    switch_recipe)
from fp4lab.train.schedule import lr_at

FINAL_NAME = "final.json"
MODEL_DIR = "model"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return device


def _data_dir(cfg: TrainConfig, d: Dist) -> Path:
    from fp4lab.data import default_data_dir

    if cfg.data:
        return Path(cfg.data)
    if d.is_main:
        path = default_data_dir()
    barrier(d)  # rank 0 prepares the bundled corpus once; the others then find it cached
    return path if d.is_main else default_data_dir()


def make_optimizer(model, cfg: TrainConfig, device: torch.device):
    """AdamW; weight decay on >= 2-D tensors (matrices, embeddings), not on norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-8, **extra)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _layer_groups(model) -> dict[str, list]:
    """Parameters grouped as embed / layer.<i> / final, for per-layer gradient norms."""
    groups: dict[str, list] = {}
    for name, p in unwrap(model).named_parameters():
        parts = name.split(".")
        if "layers" in parts:
            key = "layer." + parts[parts.index("layers") + 1]
        elif "embed_tokens" in name:
            key = "embed"
        else:
            key = "final"
        groups.setdefault(key, []).append(p)
    return groups


def _norm(tensors) -> torch.Tensor:
    norms = [torch.linalg.vector_norm(t.float()) for t in tensors]
    norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def train_step(model, optimizer, data, cfg: TrainConfig, step: int, lr: float, d: Dist,
               device: torch.device, layer_groups=None):
    """One optimizer step over ``grad_accum`` micro-batches; returns device tensors
    (mean loss on this rank, global grad norm before clipping, per-layer grad norms or None)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    global_batch = cfg.batch_size * cfg.grad_accum * d.world_size
    total = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        first = (micro * d.world_size + d.rank) * cfg.batch_size
        x, y = data.batch("train", cfg.seed, step, slice(first, first + cfg.batch_size),
                          global_batch, cfg.seq_len)
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        defer_sync = micro < cfg.grad_accum - 1 and hasattr(model, "no_sync")
        with (model.no_sync() if defer_sync else contextlib.nullcontext()):
            with _autocast(device):
                logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            (loss / cfg.grad_accum).backward()
        total += loss.detach()
    layer_norms = None
    if layer_groups is not None:
        layer_norms = torch.stack([_norm([p.grad for p in ps if p.grad is not None])
                                   for ps in layer_groups.values()])
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / cfg.grad_accum, grad_norm, layer_norms


@torch.no_grad()
def evaluate(model, data, cfg: TrainConfig, d: Dist, device: torch.device) -> float:
    """Mean loss over ``eval_batches`` fixed validation batches (the same for every seed and recipe)."""
    model.eval()
    rows = slice(d.rank * cfg.batch_size, (d.rank + 1) * cfg.batch_size)
    total = torch.zeros((), device=device)
    for i in range(cfg.eval_batches):
        x, y = data.batch("val", 0, i, rows, cfg.batch_size * d.world_size, cfg.seq_len)
        x, y = x.to(device), y.to(device)
        with _autocast(device):
            logits = model(input_ids=x, use_cache=False).logits
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    model.train()
    return all_reduce_mean(total / max(1, cfg.eval_batches), d).item()


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by PyTorch on this device. CPU: this process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _rng_states(d: Dist, model) -> list:
    state = {"cpu": torch.get_rng_state(), "layers": generator_states(unwrap(model))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if not d.enabled:
        return [state]
    import torch.distributed as dist

    gathered = [None] * d.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _set_rng_states(states: list, d: Dist) -> None:
    state = states[d.rank]
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _model_and_optim_state(model, optimizer, cfg: TrainConfig, d: Dist):
    if cfg.parallel == "fsdp2" and d.enabled:
        return full_state(model, optimizer, cfg.parallel, d)
    return unwrap(model).state_dict(), optimizer.state_dict()


def save_hf_model(model_sd: dict, config, out_dir: Path, data_dir: Path) -> None:
    """Master weights as a plain LlamaForCausalLM (`save_pretrained`), plus the tokenizer if any."""
    import shutil

    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        fresh = LlamaForCausalLM(config)
    wanted = fresh.state_dict().keys()
    missing = [k for k in wanted if k not in model_sd]
    if missing:
        raise RuntimeError(f"trained model lacks weights {missing[:3]}... ; cannot save as a HF model")
    fresh.load_state_dict({k: model_sd[k].detach().cpu() for k in wanted}, assign=True)
    fresh.tie_weights()
    fresh.save_pretrained(out_dir)
    if (data_dir / "tokenizer.json").is_file():
        shutil.copy(data_dir / "tokenizer.json", out_dir / "tokenizer.json")


def summarize(out: Path, extra: dict) -> dict:
    """final.json from the metrics file: final losses, events, tokens/s after the warm-up tenth."""
    rows = read_metrics(out / METRICS_NAME)
    train = [r for r in rows if r["type"] == "train"]
    val = [r for r in rows if r["type"] == "val"]
    events = [r for r in rows if r["type"] == "event"]
    steps = train[-1]["step"] if train else 0
    timed = [r for r in train if r["step"] > max(1, steps // 10)] or train
    seconds = sum(r["step_time_s"] for r in timed)
    counts: dict[str, int] = {}
    for e in events:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    return {
        **extra,
        "steps": steps,
        "final_train_loss": train[-1]["loss"] if train else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "tokens_per_s": (sum(r["tokens_step"] for r in timed) / seconds) if seconds > 0 else None,
        "peak_mem_bytes": max((r["peak_mem_bytes"] for r in train), default=None),
        "divergence_events": len(events),
        "divergence_by_kind": counts,
    }


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[tps]} tok/s  loss {task.fields[loss]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)
    bar.start()
    bar.add_task("train", total=total, completed=start, tps="-", loss="-")
    return bar


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training run into ``cfg.out``; returns the final summary."""
    device = pick_device(cfg.device)
    d = init_distributed(device.type)
    if device.type == "cuda" and d.enabled:
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    from fp4lab.data import TokenData
    from fp4lab.models import add_dropout, build_model

    data_dir = _data_dir(cfg, d)
    data = TokenData(data_dir)
    cfg = replace(cfg.resolve(d.world_size), data=str(data_dir))
    if cfg.seq_len + 1 >= data.meta["val_tokens"]:
        raise ValueError(f"seq_len {cfg.seq_len} is too long for the {data.meta['val_tokens']} validation tokens")
    cfg = replace(cfg, recipe=recipe_name(cfg.recipe),
                  switch_to=recipe_name(cfg.switch_to) if cfg.switch_to else None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = cfg.run_identity(d.world_size, data.meta)

    ckpt_path = out / CHECKPOINT_NAME
    payload = None
    if ckpt_path.exists():
        if not cfg.resume:
            raise ValueError(f"{out} already holds a run ({CHECKPOINT_NAME}); pass --resume to "
                             "continue it, or choose another --out")
        payload = load_checkpoint(ckpt_path)
        if payload.get("format") != "fp4lab-checkpoint":
            raise ValueError(f"{ckpt_path} is not an fp4lab training checkpoint")
        check_compatible(payload, identity, ckpt_path)

    model = build_model(cfg.preset, data.vocab_size, cfg.seed)
    hf_config = copy.deepcopy(model.config)  # saved as trained for inference: no dropout in it
    add_dropout(model, cfg.dropout)
    sr_seed = cfg.seed + 1000 * d.rank  # SR noise differs per run seed and per rank
    apply_recipe(model, cfg.recipe, sr_seed)
    model.to(device)
    model.train()
    torch.manual_seed(cfg.seed + 1 + d.rank)  # randomness during training (stochastic rounding)
    model_w = wrap_model(model, cfg.parallel, d, device)
    optimizer = make_optimizer(model_w, cfg, device)

    start = 0
    monitor = DivergenceMonitor(cfg.spike_threshold)
    if payload is not None:
        if cfg.parallel == "fsdp2" and d.enabled:
            load_full_state(model_w, optimizer, payload["model"], payload["optimizer"], cfg.parallel)
        else:
            unwrap(model_w).load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
        _set_rng_states(payload["rng"], d)
        start = int(payload["step"])
        monitor = DivergenceMonitor(cfg.spike_threshold, history=payload["loss_window"])

    switch_step = math.ceil(cfg.switch_at * cfg.steps) if cfg.switch_at is not None else None
    if switch_step is not None and start >= switch_step:
        switch_recipe(unwrap(model_w), cfg.switch_to, cfg.forward_only, sr_seed)
    if payload is not None:  # after any switch: set_recipe reseeds the layers' generators
        set_generator_states(unwrap(model_w), payload["rng"][d.rank]["layers"])
    model_c = torch.compile(model_w, mode=None if cfg.compile_mode == "default" else cfg.compile_mode) \
        if cfg.compile else model_w

    end = min(cfg.steps, cfg.max_steps) if cfg.max_steps else cfg.steps
    log = MetricsLog(out / METRICS_NAME, resume_step=start if payload else None, enabled=d.is_main)
    if d.is_main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    groups = _layer_groups(model_w) if cfg.per_layer_grad_norm else None
    tokens_step = cfg.tokens_per_step(d.world_size)
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    bar = _progress(show and d.is_main, cfg.steps, start)
    pending: list = []
    t_last = time.perf_counter()

    def flush():
        nonlocal t_last
        if not pending:
            return
        losses = all_reduce_mean(torch.stack([p[2] for p in pending]).float(), d).tolist()
        norms = torch.stack([p[3].float() for p in pending]).tolist()
        layer = [p[4].tolist() if p[4] is not None else None for p in pending]
        now = time.perf_counter()
        dt = (now - t_last) / len(pending)
        t_last = now
        mem = peak_memory_bytes(device)
        for (step, lr, *_), loss, gn, ln in zip(pending, losses, norms, layer):
            row = dict(type="train", step=step, tokens=step * tokens_step, loss=loss, grad_norm=gn,
                       lr=lr, tokens_step=tokens_step, step_time_s=dt,
                       tokens_per_s=tokens_step / dt if dt > 0 else None, peak_mem_bytes=mem)
            if ln is not None:
                row["grad_norm_layers"] = dict(zip(groups.keys(), ln))
            log.write(row)
            for ev in monitor.check(loss, gn):
                log.write(dict(type="event", step=step, tokens=step * tokens_step, **ev))
        log.flush(durable=False)
        if bar is not None:
            bar.update(bar.task_ids[0], completed=pending[-1][0], tps=f"{tokens_step / dt:,.0f}",
                       loss=f"{losses[-1]:.4f}")
        pending.clear()

    for step in range(start, end):
        lr = lr_at(step, lr=cfg.lr, total_steps=cfg.steps, warmup=cfg.warmup, schedule=cfg.schedule,
                   min_lr_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)
        loss, gnorm, lnorms = train_step(model_c, optimizer, data, cfg, step, lr, d, device, groups)
        done = step + 1
        pending.append((done, lr, loss, gnorm, lnorms))
        last = done == end
        eval_due = done == cfg.steps or (cfg.eval_every > 0 and done % cfg.eval_every == 0)
        ckpt_due = cfg.ckpt_every >= 0 and (last or (cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0))
        if done % cfg.log_every == 0 or eval_due or ckpt_due or done == switch_step:
            flush()
        if done == switch_step:
            # switched before this step's checkpoint, so a resumed run finds the switch done
            switch_recipe(unwrap(model_w), cfg.switch_to, cfg.forward_only, sr_seed)
            log.write(dict(type="event", step=done, tokens=done * tokens_step, kind="recipe_switch",
                           value=cfg.switch_to, detail=f"forward_only={cfg.forward_only}"))
        if eval_due:
            val = evaluate(model_w, data, cfg, d, device)
            log.write(dict(type="val", step=done, tokens=done * tokens_step, val_loss=val))
            if bar is None and d.is_main:
                print(f"[{cfg.recipe} seed {cfg.seed}] step {done}/{cfg.steps}  val loss {val:.4f}",
                      flush=True)
        if ckpt_due:
            log.flush()
            model_sd, optim_sd = _model_and_optim_state(model_w, optimizer, cfg, d)
            rng = _rng_states(d, model_w)
            if d.is_main:
                save_checkpoint(dict(format="fp4lab-checkpoint", version=1, run=identity,
                                     preset=cfg.preset, recipe=cfg.recipe, step=done,
                                     tokens=done * tokens_step, model=model_sd, optimizer=optim_sd,
                                     schedule=dict(name=cfg.schedule, next_step=done),
                                     data=dict(seed=cfg.seed, next_step=done), rng=rng,
                                     loss_window=monitor.state(), config=cfg.to_dict()), ckpt_path)
            barrier(d)
        if eval_due or ckpt_due:
            t_last = time.perf_counter()  # evaluation and checkpoint time is not training time
    flush()
    log.flush()
    log.close()
    if bar is not None:
        bar.stop()

    finished = end == cfg.steps
    summary = None
    if finished:
        if cfg.save_model:
            model_sd, _ = _model_and_optim_state(model_w, optimizer, cfg, d)
            if d.is_main:
                save_hf_model(model_sd, hf_config, out / MODEL_DIR, data_dir)
        if d.is_main:
            summary = summarize(out, dict(preset=cfg.preset, recipe=cfg.recipe, seed=cfg.seed,
                                          tokens=cfg.tokens, device=str(device.type),
                                          device_name=_device_name(device), software=_software(),
                                          world_size=d.world_size, parallel=cfg.parallel,
                                          compile=cfg.compile,
                                          params=sum(p.numel() for p in unwrap(model_w).parameters())))
            tmp = out / f".{FINAL_NAME}.tmp"
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, out / FINAL_NAME)
        barrier(d)
    return summary or {}


def _software() -> dict:
    """Versions that decide the numbers, beside the device: float results of the same code and torch
    differ between CPUs (studies/compare-tiny-cpu/README.md), so a run says what it ran on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for name in ("fp4lab", "triton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({_cpu_model()}{os.cpu_count()} cores, torch threads={torch.get_num_threads()})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + ", "
    except OSError:
        pass
    return ""
