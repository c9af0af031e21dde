"""`fp4lab report runs/NAME`: report.md and a self-contained report.html (plots embedded as base64).

Every number and the verdict sentence are computed from the runs' metrics; nothing is hand-written.
Verdict thresholds (fp4lab's choice, stated in the report): a final validation-loss gap of at most
1% is "matches", at most 3% "close to", more is "worse than" the baseline (below -1%: "beats"); a
gap smaller than the baseline's seed-to-seed spread (std) is called "within seed noise". When a run's
validation loss ends more than 2% above its own minimum (overfitting), the verdict says so first and
the table's best-validation-loss column is the fairer comparison.
"""
from __future__ import annotations

import base64
import datetime
import html
import math
import statistics
from pathlib import Path

from fp4lab.experiments.plots import gap_plot, gap_series, grad_norm_plot, loss_plot
from fp4lab.experiments.runs import load_comparison

MATCH_PCT, CLOSE_PCT = 1.0, 3.0
OVERFIT_PCT = 2.0
PLOTS = (("loss.png", "Validation and training loss vs tokens"),
         ("gap.png", "Relative validation-loss gap to the baseline (%) vs tokens"),
         ("grad_norm.png", "Gradient norm vs tokens"))


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def tokens_to_reach(run, loss: float) -> float | None:
    """Tokens at which `run`'s validation loss first falls to `loss` (linear between evaluations), or None."""
    prev = None
    for v in run.val:
        if v["val_loss"] <= loss:
            if prev is None or prev["val_loss"] == v["val_loss"]:
                return float(v["tokens"])
            f = (prev["val_loss"] - loss) / (prev["val_loss"] - v["val_loss"])
            return prev["tokens"] + f * (v["tokens"] - prev["tokens"])
        prev = v
    return None


def token_ratio(base_runs, runs_r) -> list[float]:
    """Per seed: the tokens a recipe needed to reach its best validation loss / the tokens the baseline
    (same seed) needed to reach that loss; the paper's "needs N% more tokens" measure. The best loss, not
    the final one, so a baseline that overfits is not credited for passing that loss on its way down.
    Seeds whose baseline never gets that low are left out."""
    base_by_seed = {r.seed: r for r in base_runs}
    ratios = []
    for run in runs_r:
        base = base_by_seed.get(run.seed)
        if base is None or not run.val or not base.val:
            continue
        best = min(v["val_loss"] for v in run.val)
        t = tokens_to_reach(base, best)
        if t:
            ratios.append(tokens_to_reach(run, best) / t)
    return ratios


def summarize_recipes(runs: dict, baseline: str) -> list[dict]:
    """One row per recipe: final val loss mean/std, gap %, events, tokens/s, peak memory, overhead."""
    rows = []
    for recipe, seeds in runs.items():
        finals = [r.final for r in seeds if r.final]
        vals = [r.val[-1]["val_loss"] if r.val else None for r in seeds]
        mean, std = _mean_std(vals)
        best_mean, best_std = _mean_std([min(v["val_loss"] for v in r.val) if r.val else None for r in seeds])
        # val loss risen > OVERFIT_PCT above its minimum: the run memorizes (small data, many epochs)
        overfit = sum(1 for r in seeds if r.val and
                      r.val[-1]["val_loss"] > (1 + OVERFIT_PCT / 100) * min(v["val_loss"] for v in r.val))
        tps, _ = _mean_std([f.get("tokens_per_s") for f in finals])
        mem = max((f["peak_mem_bytes"] for f in finals if f.get("peak_mem_bytes")), default=None)
        rows.append(dict(recipe=recipe, seeds=len(seeds), finished=len(finals), val_mean=mean,
                         val_std=std, best_mean=best_mean, best_std=best_std, overfit=overfit,
                         events=sum(len(r.events) for r in seeds), tokens_per_s=tps,
                         peak_mem_bytes=mem, device=finals[0].get("device_name") if finals else None,
                         tokens=max((r.train[-1]["tokens"] for r in seeds if r.train), default=0)))
    base = next((r for r in rows if r["recipe"] == baseline), None)
    for row in rows:
        row["gap_pct"] = row["gap_std_pct"] = row["overhead_pct"] = row["token_ratio"] = None
        if base is None or row is base:
            continue
        row["token_ratio"] = _mean_std(token_ratio(runs[baseline], runs[row["recipe"]]))[0]
        _, gaps = gap_series(runs[baseline], runs[row["recipe"]])
        if gaps.size:
            final = gaps[:, -1].tolist()
            row["gap_pct"], row["gap_std_pct"] = _mean_std(final)
        if row["tokens_per_s"] and base["tokens_per_s"]:
            row["overhead_pct"] = 100.0 * (base["tokens_per_s"] / row["tokens_per_s"] - 1.0)
    return rows


def verdict(rows: list[dict], baseline: str, device: str | None) -> str:
    base = next((r for r in rows if r["recipe"] == baseline), None)
    if base is None or base["val_mean"] is None:
        return f"No verdict: the baseline recipe {baseline!r} has no validation loss yet."
    parts = []
    for r in rows:
        if r is base or r["gap_pct"] is None:
            continue
        gap = r["gap_pct"]
        if math.isnan(gap):
            word = "diverged against"
        elif abs(gap) <= MATCH_PCT:
            word = "matches"
        elif gap < 0:
            word = "beats"
        elif gap <= CLOSE_PCT:
            word = "is close to"
        else:
            word = "is worse than"
        noise = ""
        if base["val_std"] and r["seeds"] > 1 and abs(gap) / 100 * base["val_mean"] < base["val_std"]:
            noise = ", within seed noise"
        speed = ""
        if r["overhead_pct"] is not None:
            ratio = r["tokens_per_s"] / base["tokens_per_s"]
            speed = f", at {ratio:.2f}x {baseline}'s tokens/s on {device or 'this device'}"
        parts.append(
            f"{r['recipe']} {word} {baseline}: final validation loss {r['val_mean']:.4f} vs "
            f"{base['val_mean']:.4f} ({gap:+.2f}%{noise}, {r['seeds']} seed{'s' if r['seeds'] > 1 else ''}), "
            f"{r['events']} divergence event{'s' if r['events'] != 1 else ''} vs {base['events']}{speed}."
        )
    if not parts:
        return f"Only {baseline} has results so far."
    overfit = sum(r["overfit"] for r in rows)
    if overfit:
        parts.insert(0, f"Caution: in {overfit} of {sum(r['seeds'] for r in rows)} runs the validation "
                        f"loss ended more than {OVERFIT_PCT:g}% above its minimum (overfitting), so the "
                        "final loss mixes precision with memorization; compare the best validation loss.")
    return " ".join(parts)


def _fmt(x, spec, suffix=""):
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def table_markdown(rows: list[dict], baseline: str) -> str:
    head = ("| recipe | seeds | final val loss (mean ± std) | best val loss (mean ± std) | gap to " + baseline +
            " (%) | tokens for the same loss | divergence events | tokens/s | peak memory (MiB) | overhead vs "
            + baseline + " |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        val = "n/a" if r["val_mean"] is None else f"{r['val_mean']:.4f} ± {r['val_std']:.4f}"
        best = "n/a" if r["best_mean"] is None else f"{r['best_mean']:.4f} ± {r['best_std']:.4f}"
        gap = "—" if r["recipe"] == baseline else _fmt(r["gap_pct"], "+.2f")
        if r["gap_std_pct"] and r["seeds"] > 1:
            gap += f" ± {r['gap_std_pct']:.2f}"
        mem = None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20
        over = "—" if r["recipe"] == baseline else _fmt(r["overhead_pct"], "+.0f", "%")
        unfinished = "" if r["finished"] == r["seeds"] else f" ({r['finished']} finished)"
        same = "—" if r["recipe"] == baseline else _fmt(r["token_ratio"], ".2f", "x")
        lines.append(f"| {r['recipe']} | {r['seeds']}{unfinished} | {val} | {best} | {gap} | {same} | {r['events']} | "
                     f"{_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(mem, ',.0f')} | {over} |")
    return "\n".join(lines)


def write_report(out: str | Path, speed: bool | None = None) -> tuple[Path, Path]:
    """Write plots/*.png, report.md and report.html into ``out``; returns the two report paths.

    speed=False leaves tokens/s out (default: out when the plan says the runs shared one GPU)."""
    out = Path(out)
    plan, runs = load_comparison(out)
    baseline = "bf16" if "bf16" in runs else next(iter(runs))
    rows = summarize_recipes(runs, baseline)
    if speed is None:
        speed = not plan.get("shared_device", False)
    if not speed:
        for r in rows:
            r["tokens_per_s"] = r["overhead_pct"] = None
    device = next((r["device"] for r in rows if r["device"]), None)
    sentence = verdict(rows, baseline, device)
    pngs = {"loss.png": loss_plot(runs), "gap.png": gap_plot(runs, baseline),
            "grad_norm.png": grad_norm_plot(runs)}
    (out / "plots").mkdir(exist_ok=True)
    for name, data in pngs.items():
        (out / "plots" / name).write_bytes(data)

    tokens = max(r["tokens"] for r in rows)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context = (f"Preset `{plan['preset']}`, {len(runs)} recipes x {plan['seeds']} seed(s), "
               f"{tokens:,} training tokens per run, data `{plan['data']}`, device {device}. "
               f"Written {when}.")
    notes = (f"Gap = 100 x (final validation loss / {baseline}'s with the same seed - 1); best val loss "
             "= the lowest of a run's evaluations (what nanoGPT reports); tokens for the same loss = the "
             f"tokens the recipe needed to reach its best validation loss / the tokens {baseline} (same seed) "
             f"needed to reach it (n/a when {baseline} never got that low); "
             f"overhead = {baseline}'s tokens/s / the recipe's - 1. Tokens/s skips the first tenth "
             "of each run. On CPU the low-precision formats are emulated, so CPU speed says nothing "
             "about GPU speed; peak memory on CPU is the process's peak resident set. Verdict "
             f"thresholds: |gap| <= {MATCH_PCT:g}% matches, <= {CLOSE_PCT:g}% is close.")
    if not speed:
        notes += (" Tokens/s is not reported: the runs shared one GPU, so their speeds measure the sharing, "
                  "not the recipe.")
    table = table_markdown(rows, baseline)
    md = [f"# fp4lab comparison: {out.name}", "", context, "", f"**Verdict:** {sentence}", "", table,
          "", notes, ""]
    for name, title in PLOTS:
        md += [f"## {title}", "", f"![{title}](plots/{name})", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    html_path = out / "report.html"
    html_path.write_text(_html(out.name, context, sentence, rows, baseline, notes, pngs))
    return md_path, html_path


def _html(name, context, sentence, rows, baseline, notes, pngs) -> str:
    e = html.escape
    head = ["recipe", "seeds", "final val loss (mean ± std)", "best val loss (mean ± std)", f"gap to {baseline} (%)",
            "tokens for the same loss", "divergence events", "tokens/s", "peak memory (MiB)",
            f"overhead vs {baseline}"]
    body = []
    for line in table_markdown(rows, baseline).splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    figures = "".join(
        f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,"
        f"{base64.b64encode(pngs[fname]).decode()}'/>" for fname, title in PLOTS)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fp4lab comparison: {e(name)}"
            f"</title><style>{style}</style></head><body><h1>fp4lab comparison: {e(name)}</h1>"
            f"<p>{e(context)}</p><p><b>Verdict:</b> {e(sentence)}</p><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"
            f"<p><small>{e(notes)}</small></p>{figures}</body></html>\n")
