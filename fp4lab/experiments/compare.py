"""`fp4lab compare`: the same training run once per (recipe, seed), then the report.

Every run of a comparison shares the data, the schedule and (for a given seed) the initial
weights; only the recipe differs. Each run is a separate `fp4lab train --resume` process, so an
interrupted comparison picks up where it stopped: finished runs (final.json) are skipped and an
unfinished one resumes from its last checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PLAN_NAME = "compare.json"
# settings passed through to every `fp4lab train` of a comparison
TRAIN_KEYS = ("batch_size", "seq_len", "grad_accum", "lr", "schedule", "warmup", "weight_decay", "beta2",
              "dropout", "grad_clip", "eval_every", "eval_batches", "ckpt_every", "device", "compile",
              "compile_mode",
              "switch_at", "switch_to", "forward_only", "spike_threshold", "per_layer_grad_norm",
              "parallel", "log_every")


def parse_recipes(text: str) -> list[str]:
    """Split a comma list of recipe specs; a piece like ``bf16_layers=last:4`` (an option, no
    recipe name before its '=') belongs to the recipe before it: 'nvfp4:rht=false,bf16_layers=last:4'."""
    recipes: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        head = piece.split("=", 1)[0]
        if "=" in piece and ":" not in head and recipes:
            recipes[-1] += "," + piece
        else:
            recipes.append(piece)
    if not recipes:
        raise ValueError("--recipes is empty")
    if len(set(recipes)) != len(recipes):
        raise ValueError(f"--recipes lists a recipe twice: {recipes}")
    return recipes


def run_dir_name(recipe: str) -> str:
    """A directory name for a recipe spec: 'nvfp4:rht=false' -> 'nvfp4_rht=false'."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", recipe)


def _train_argv(preset, data, recipe, seed, tokens, out, train_args: dict) -> list[str]:
    argv = ["train", "--preset", preset, "--recipe", recipe, "--seed", str(seed),
            "--out", str(out), "--data", str(data), "--resume"]
    if tokens is not None:
        argv += ["--tokens", str(tokens)]
    for key in TRAIN_KEYS:
        value = train_args.get(key)
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def compare(*, preset: str, recipes: list[str], seeds: int, out: str | Path, data: str | None = None,
            tokens: int | None = None, train_args: dict | None = None, nproc_per_node: int = 1,
            jobs: int | None = None, report: bool = True) -> Path:
    """Run every (recipe, seed) into ``out/<recipe>/seed<k>/`` and write the report; returns ``out``."""
    from fp4lab.data import default_data_dir

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    train_args = {k: v for k, v in (train_args or {}).items() if v is not None}
    out = Path(out)
    data_dir = Path(data) if data else default_data_dir()
    plan = dict(preset=preset, recipes=recipes, seeds=seeds, tokens=tokens, data=str(data_dir),
                train_args=train_args, nproc_per_node=nproc_per_node)  # jobs does not change results
    n_jobs = jobs if jobs is not None else default_jobs(train_args, nproc_per_node)
    plan_path = out / PLAN_NAME
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
        shared = old.pop("shared_device", False)
        if old != plan:
            diffs = [k for k in plan if old.get(k) != plan[k]]
            raise ValueError(f"{out} holds a comparison with different settings ({', '.join(diffs)}); "
                             "rerun with the same settings to resume it, or choose another --out")
        plan["shared_device"] = shared
    if n_jobs > 1 and not _on_cpu(train_args):
        # runs sharing one GPU time-slice it: their tokens/s measure the sharing, so the report leaves them out
        plan["shared_device"] = True
    out.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=2) + "\n")

    launcher = [sys.executable, "-m", "fp4lab"]
    if nproc_per_node > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc_per_node}", "-m", "fp4lab"]
    pending = []
    for seed in range(seeds):
        for recipe in recipes:
            run = out / run_dir_name(recipe) / f"seed{seed}"
            if (run / "final.json").is_file():
                print(f"[compare] {recipe} seed {seed}: done earlier, skipped", flush=True)
                continue
            argv = launcher + _train_argv(preset, data_dir, recipe, seed, tokens, run, train_args)
            pending.append((f"{recipe} seed {seed}", run, argv))
    _run_all(pending, n_jobs)
    if report:
        from fp4lab.experiments.report import write_report

        write_report(out)
    return out


def _on_cpu(train_args: dict) -> bool:
    import torch

    return train_args.get("device") == "cpu" or not torch.cuda.is_available()


def default_jobs(train_args: dict, nproc_per_node: int) -> int:
    """Runs at a time: one per CPU core (1 thread each) on CPU, one at a time on GPU.

    The emulated formats are many small tensor ops, for which 2 single-threaded processes on
    2 cores beat one process with 2 threads by far (no OpenMP hand-offs per op)."""
    if not _on_cpu(train_args) or nproc_per_node > 1:
        return 1
    return max(1, os.cpu_count() or 1)


def _run_all(pending: list, jobs: int) -> None:
    """Run the `fp4lab train` processes, at most ``jobs`` at once; fail with the command to rerun."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if jobs > 1:
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    running: list = []
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            name, run, argv = pending.pop(0)
            print(f"[compare] {name} -> {run}", flush=True)
            if jobs > 1:
                argv = argv + ["--no-progress"]  # several bars in one terminal would garble
            running.append((name, argv, subprocess.Popen(argv, env=env)))
        time.sleep(0.2)
        for item in list(running):
            name, argv, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    failed.append(f"{name} (exit {proc.returncode}): {' '.join(argv)}")
    if failed:
        raise RuntimeError("runs failed; rerun the same compare command to resume them. "
                           + "; ".join(failed))
