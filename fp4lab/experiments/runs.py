"""Reading a comparison directory: the plan, and every run's metrics and final summary."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fp4lab.train.metrics import read_metrics


@dataclass
class Run:
    recipe: str
    seed: int
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    final: dict | None = None


def load_comparison(out: str | Path) -> tuple[dict, dict[str, list[Run]]]:
    """(plan, {recipe: [Run per seed]}) in the plan's recipe order; runs without metrics are left out."""
    from fp4lab.experiments.compare import PLAN_NAME, run_dir_name

    out = Path(out)
    plan_path = out / PLAN_NAME
    if not plan_path.is_file():
        raise FileNotFoundError(f"{out} is not a comparison directory (no {PLAN_NAME}); "
                                "run `fp4lab compare ... --out DIR` first")
    plan = json.loads(plan_path.read_text())
    runs: dict[str, list[Run]] = {}
    for recipe in plan["recipes"]:
        for seed in range(plan["seeds"]):
            d = out / run_dir_name(recipe) / f"seed{seed}"
            rows = read_metrics(d / "metrics.jsonl")
            if not rows:
                continue
            final = json.loads((d / "final.json").read_text()) if (d / "final.json").is_file() else None
            runs.setdefault(recipe, []).append(Run(
                recipe, seed,
                train=[r for r in rows if r["type"] == "train"],
                val=[r for r in rows if r["type"] == "val"],
                events=[r for r in rows if r["type"] == "event" and r["kind"] != "recipe_switch"],
                final=final,
            ))
    if not runs:
        raise ValueError(f"{out} has no run with metrics yet")
    return plan, runs
