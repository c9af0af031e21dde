"""The `fp4lab quantize | convert | eval | inspect` commands (fp4lab/cli.py parses, these run)."""
from __future__ import annotations

import json
import time
from pathlib import Path


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_quantize(args) -> int:
    from rich.console import Console

    from fp4lab.ptq.eval import load_tokens
    from fp4lab.ptq.quantize import PTQConfig, quantize_dir

    ignore = PTQConfig.ignore + tuple(args.ignore or ())  # lm_head always stays in high precision
    config = PTQConfig(scheme=args.scheme, method=args.method, four_over_six=args.four_over_six, ignore=ignore,
                       calib_samples=args.calib_samples, calib_len=args.calib_len)
    calib = None
    if args.calib:
        calib = load_tokens(args.calib, args.model_dir, args.tokenizer,
                            max_tokens=max(4 * args.calib_samples * args.calib_len, 200_000))
    console = Console(stderr=True)
    t0 = time.time()
    out = quantize_dir(args.model_dir, args.out_dir, config, calib_ids=calib, fmt=args.format,
                       device=_device(args.device), progress=lambda n: console.log(f"quantized {n}"))
    console.print(f"wrote {args.format} checkpoint ({config.scheme}, {config.method}"
                  f"{', four-over-six' if config.four_over_six else ''}) to {out} in {time.time() - t0:.1f}s")
    return 0


def cmd_convert(args) -> int:
    from fp4lab.export.convert import convert_checkpoint

    out = convert_checkpoint(args.in_dir, args.out_dir, args.to)
    print(f"wrote {args.to} checkpoint to {out}")
    return 0


def cmd_eval(args) -> int:
    from fp4lab.export.load import load_quantized, model_scheme
    from fp4lab.ptq.eval import load_tokens, perplexity

    device = _device(args.device)
    ids = load_tokens(args.data, args.model_dir, args.tokenizer, max_tokens=args.max_tokens)
    model = load_quantized(args.model_dir, device=device)
    t0 = time.time()
    result = perplexity(model, ids, args.ctx, args.stride)
    result.update(model=str(args.model_dir), scheme=model_scheme(args.model_dir), data=str(args.data),
                  device=device, seconds=round(time.time() - t0, 2),
                  date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(f"{args.model_dir}: perplexity {result['ppl']:.4f} on {result['tokens']} tokens of {args.data} "
          f"(ctx {result['ctx']}, stride {result['stride']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_inspect(args) -> int:
    from rich.console import Console

    from fp4lab.ptq.inspect import inspect_model, plot, render_table

    stats = inspect_model(args.model_dir, scheme=args.scheme, reference=args.reference,
                          four_over_six=args.four_over_six)
    what = args.scheme + (" four-over-six" if args.four_over_six else "") + " RTN"
    title = f"{args.model_dir} ({what if args.reference is None else 'vs ' + str(args.reference)})"
    import sys

    Console(width=None if sys.stdout.isatty() else 160).print(render_table(stats, title))
    png = Path(args.plot) if args.plot else Path(args.model_dir) / "inspect.png"
    print(f"plot: {plot(stats, png, title)}")
    return 0
