"""The PTQ real check: perplexity of one trained model under every PTQ scheme, on two test texts.

Trains nothing: give it a Hugging Face model directory (e.g. OUT/model from `fp4lab train`). For each row
it quantizes the model with `fp4lab.ptq.quantize_dir` (compressed-tensors checkpoint), loads it back with
`fp4lab.load_quantized` and measures strided sliding-window perplexity. Writes ptq_results.json and
ptq_results.md (with date, device and this command) to --out. See studies/ptq/README.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from fp4lab.export import load_quantized
from fp4lab.ptq.eval import load_tokens, perplexity
from fp4lab.ptq.quantize import PTQConfig, quantize_dir

DATA = Path("/work/shared/data")
ROWS = [  # (row label, scheme, method, four-over-six); scheme None = the unquantized model
    ("BF16", None, None, False),
    ("nvfp4a16 RTN", "nvfp4a16", "rtn", False),
    ("nvfp4a16 GPTQ", "nvfp4a16", "gptq", False),
    ("nvfp4a16 4-over-6", "nvfp4a16", "rtn", True),
    ("nvfp4a16 GPTQ + 4-over-6", "nvfp4a16", "gptq", True),
    ("nvfp4 (W4A4) RTN", "nvfp4", "rtn", False),
    ("nvfp4 (W4A4) GPTQ", "nvfp4", "gptq", False),
    ("mxfp4 (W4A16) RTN", "mxfp4", "rtn", False),
    ("fp8 (W8A8) RTN", "fp8", "rtn", False),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="BF16 Hugging Face model directory")
    p.add_argument("--out", required=True, help="results directory")
    p.add_argument("--calib", default=str(DATA / "gutenberg_train.txt.xz"), help="calibration text (training text)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--eval", nargs="+", default=[str(DATA / "gutenberg_valid.txt.xz"),
                                                 str(DATA / "wikitext-2-raw_wiki.test.raw.xz")])
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--stride", type=int, help="default ctx/2")
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens of each text")
    p.add_argument("--tokenizer", help="default: the model directory's (or bytes for a vocab-256 model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", help="comma-separated subset of row labels")
    p.add_argument("--keep", action="store_true", help="keep the quantized checkpoints under OUT/checkpoints")
    p.add_argument("--render-only", action="store_true", help="rewrite OUT/ptq_results.md from OUT/ptq_results.json")
    p.add_argument("--resume", action="store_true", help="keep the rows already in OUT/rows.jsonl, run the rest")
    args = p.parse_args(argv)
    if args.render_only:
        data = json.loads((Path(args.out) / "ptq_results.json").read_text())
        texts = [k for k in data["results"][0] if k.endswith(".txt") or k.endswith(".raw") or k.endswith(".tokens")]
        (Path(args.out) / "ptq_results.md").write_text(markdown(data["meta"], data["results"], texts))
        return 0

    out = Path(args.out)
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    rows = [r for r in ROWS if args.rows is None or r[0] in args.rows.split(",")]
    calib = load_tokens(args.calib, args.model, args.tokenizer,
                        max_tokens=max(8 * args.calib_samples * args.calib_len, 100_000))
    texts = {Path(f).name.removesuffix(".xz"): load_tokens(f, args.model, args.tokenizer, args.max_tokens)
             for f in args.eval}
    done = out / "rows.jsonl"  # one line per finished row, so a stopped study can be resumed
    results = [json.loads(line) for line in done.read_text().splitlines()] if args.resume and done.is_file() else []
    if not args.resume:
        done.write_text("")
    for label, scheme, method, fos in rows:
        if any(r["row"] == label for r in results):
            continue
        t0 = time.time()
        model_dir = Path(args.model)
        if scheme is not None:
            model_dir = ckpts / label.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
            cfg = PTQConfig(scheme=scheme, method=method, four_over_six=fos, calib_samples=args.calib_samples,
                            calib_len=args.calib_len)
            quantize_dir(args.model, model_dir, cfg, calib_ids=calib, device=args.device)
        t_quant = time.time() - t0
        model = load_quantized(model_dir, device=args.device)
        row = {"row": label, "scheme": scheme or "bf16", "method": method, "four_over_six": fos,
               "quantize_seconds": round(t_quant, 1)}
        for name, ids in texts.items():
            r = perplexity(model, ids, args.ctx, args.stride)
            row[name] = r["ppl"]
            row[f"{name}_tokens"] = r["tokens"]
        results.append(row)
        print(json.dumps(row), flush=True)
        with done.open("a") as f:
            f.write(json.dumps(row) + "\n")
        del model
        if scheme is not None and not args.keep:
            shutil.rmtree(model_dir)

    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": str(args.model),
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
            "torch": torch.__version__, "command": " ".join([sys.executable, *sys.argv]),
            "ctx": args.ctx, "stride": args.stride or args.ctx // 2, "calib": args.calib,
            "calib_samples": args.calib_samples, "calib_len": args.calib_len}
    (out / "ptq_results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (out / "ptq_results.md").write_text(markdown(meta, results, list(texts)))
    print((out / "ptq_results.md").read_text())
    return 0


MIN_GAP = 0.001  # below a 0.1% RTN perplexity gap the recovered share is a ratio of two tiny numbers: not reported


def gap_recovered(results: list[dict], text: str, rtn: str, better: str) -> float | None:
    """Share of the RTN perplexity gap to BF16 that `better` closes: (rtn - better) / (rtn - bf16)."""
    by = {r["row"]: r for r in results}
    if not {"BF16", rtn, better} <= set(by) or by[rtn][text] <= by["BF16"][text] * (1 + MIN_GAP):
        return None
    return (by[rtn][text] - by[better][text]) / (by[rtn][text] - by["BF16"][text])


def markdown(meta: dict, results: list[dict], texts: list[str]) -> str:
    lines = [f"# PTQ perplexity ({meta['date']})", "",
             f"Model `{meta['model']}`; device {meta['device']}; torch {meta['torch']}; context {meta['ctx']}, "
             f"stride {meta['stride']}; calibration {meta['calib_samples']} x {meta['calib_len']} tokens of "
             f"`{Path(meta['calib']).name}`.", "", f"Command: `{meta['command']}`", "",
             "| scheme | " + " | ".join(texts) + " |", "|---|" + "---:|" * len(texts)]
    for r in results:
        lines.append(f"| {r['row']} | " + " | ".join(f"{r[t]:.3f}" for t in texts) + " |")
    lines += ["", "Perplexity gap to BF16 recovered (target for nvfp4a16 GPTQ: >= 30%):", ""]
    for rtn, better in [("nvfp4a16 RTN", "nvfp4a16 GPTQ"), ("nvfp4a16 RTN", "nvfp4a16 4-over-6"),
                        ("nvfp4a16 RTN", "nvfp4a16 GPTQ + 4-over-6"), ("nvfp4 (W4A4) RTN", "nvfp4 (W4A4) GPTQ")]:
        vals = [gap_recovered(results, t, rtn, better) for t in texts]
        if any(r["row"] == better for r in results):
            na = "n/a (RTN no more than 0.1% above BF16)"
            lines.append(f"* {better} vs {rtn}: " + ", ".join(
                f"{t} {na if v is None else f'{100 * v:.1f}%'}" for t, v in zip(texts, vals)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
