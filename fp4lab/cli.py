"""Command line: parses arguments and calls into the package, nothing else.

Each command group has its own ``_add_*`` function; the work happens in the package.
"""
from __future__ import annotations

import argparse
import logging
import sys


def _add_data_commands(sub) -> None:
    """`fp4lab data prepare` (owner: fp4lab/data)."""

    def prepare(args):
        from fp4lab.data import prepare_corpus

        meta = prepare_corpus(args.text, args.out, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                              valid_paths=args.valid or ())
        print(f"{args.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
              f"{meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, {meta['dtype']}")

    data = sub.add_parser("data", help="prepare training corpora")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = data_sub.add_parser("prepare", help="text files (plain or .xz) -> train/val token files + meta.json")
    p.add_argument("text", nargs="+", help="UTF-8 text files, plain or .xz")
    p.add_argument("--tokenizer", default="byte",
                   help="'byte' (vocab 256), 'bpe:VOCAB' (trained on the text) or a tokenizer.json to reuse")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction kept for validation")
    p.add_argument("--valid", nargs="+", help="validation text files (then all of TEXT is training data)")
    p.set_defaults(func=prepare)


def _add_train_commands(sub) -> None:
    """`fp4lab train`, `fp4lab compare`, `fp4lab report` (owner: fp4lab/train, fp4lab/experiments)."""

    def run_options(p) -> None:
        # defaults of None mean "the preset's default" (fp4lab/models.py) or TrainConfig's
        p.add_argument("--preset", default="tiny", help="tiny, shakespeare-char, 20m, 60m, 124m, 135m, 350m, or a JSON config")
        p.add_argument("--data", help="prepared data directory (default: bundled tinyshakespeare, byte tokens)")
        p.add_argument("--tokens", type=int, help="training tokens per run (default: the preset's)")
        p.add_argument("--batch-size", type=int, help="sequences per micro-batch per process")
        p.add_argument("--seq-len", type=int)
        p.add_argument("--grad-accum", type=int)
        p.add_argument("--lr", type=float, help="peak learning rate")
        p.add_argument("--schedule", choices=["cosine", "wsd"])
        p.add_argument("--warmup", type=float, help="warm-up steps (>= 1) or fraction of the run (< 1)")
        p.add_argument("--weight-decay", type=float)
        p.add_argument("--beta2", type=float, help="AdamW beta2 (default: the preset's, else 0.95)")
        p.add_argument("--dropout", type=float, help="embedding/attention/residual dropout (default: the preset's, else 0)")
        p.add_argument("--grad-clip", type=float, help="max global gradient norm (0: no clipping)")
        p.add_argument("--eval-every", type=int, help="validation every N steps (0: only at the end)")
        p.add_argument("--eval-batches", type=int)
        p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (0: only at the end, -1: never)")
        p.add_argument("--log-every", type=int, help="materialise metrics every N steps (one host sync)")
        p.add_argument("--device", help="auto (default), cpu, cuda")
        p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
        p.add_argument("--compile-mode", help="torch.compile mode with --compile: default, reduce-overhead "
                                              "(CUDA graphs), max-autotune, max-autotune-no-cudagraphs")
        p.add_argument("--parallel", choices=["ddp", "fsdp2"], help="under torchrun (default ddp)")
        p.add_argument("--switch-at", type=float, help="fraction of training after which --switch-to applies")
        p.add_argument("--switch-to", help="recipe for the end of training, e.g. bf16")
        p.add_argument("--forward-only", action="store_true", default=None,
                       help="with --switch-to: change only the forward pass precision")
        p.add_argument("--spike-threshold", type=float,
                       help="loss-spike event when loss > (1+T) x mean of the last 20 (default 1.0)")
        p.add_argument("--per-layer-grad-norm", action="store_true", default=None)

    def config_kwargs(args) -> dict:
        from fp4lab.experiments.compare import TRAIN_KEYS

        return {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k, None) is not None}

    def train_cmd(args):
        from fp4lab.train import TrainConfig, train

        cfg = TrainConfig(out=args.out, preset=args.preset, recipe=args.recipe, data=args.data,
                          tokens=args.tokens, steps=args.steps, seed=args.seed, resume=args.resume,
                          max_steps=args.max_steps, progress=args.progress,
                          save_model=not args.no_save_model, **config_kwargs(args))
        summary = train(cfg)
        if summary:
            print(f"{args.out}: final val loss {summary['final_val_loss']:.4f}, "
                  f"{summary['divergence_events']} divergence events, {summary['tokens_per_s']:,.0f} tokens/s")

    def compare_cmd(args):
        from fp4lab.experiments import compare, parse_recipes

        out = args.out or f"runs/compare-{args.preset.replace('/', '_')}"
        compare(preset=args.preset, recipes=parse_recipes(args.recipes), seeds=args.seeds, out=out,
                data=args.data, tokens=args.tokens, train_args=config_kwargs(args),
                nproc_per_node=args.nproc_per_node, jobs=args.jobs, report=not args.no_report)
        if not args.no_report:
            print(f"report: {out}/report.md, {out}/report.html")

    def report_cmd(args):
        from fp4lab.experiments import write_report

        md, page = write_report(args.run_dir, speed=False if args.no_speed else None)
        print(f"wrote {md} and {page}")

    p = sub.add_parser("train", help="train one model (torchrun --nproc_per_node N -m fp4lab train for DDP/FSDP2)")
    run_options(p)
    p.add_argument("--recipe", default="bf16", help="bf16 (default), fp8, mxfp4, nvfp4, nvfp4:rht=false, ...")
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoint.pt, model/)")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides --tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights and data order")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (bit-identical on CPU)")
    p.add_argument("--max-steps", type=int, help="stop after N steps without changing the schedule")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="rich progress bar (default: when stderr is a terminal)")
    p.add_argument("--no-save-model", action="store_true", help="skip save_pretrained at the end")
    p.set_defaults(func=train_cmd)

    p = sub.add_parser("compare", help="the same run per recipe and seed, then a report")
    run_options(p)
    p.add_argument("--recipes", default="bf16,nvfp4", help="comma list of recipe specs (default: bf16,nvfp4)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per recipe (default 1)")
    p.add_argument("--out", help="comparison directory (default: runs/compare-PRESET)")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes per run (torchrun)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per core on CPU, 1 on GPU)")
    p.add_argument("--no-report", action="store_true")
    p.set_defaults(func=compare_cmd)

    p = sub.add_parser("report", help="report.md + report.html for a comparison directory")
    p.add_argument("run_dir", help="the --out of `fp4lab compare`")
    p.add_argument("--no-speed", action="store_true",
                   help="leave tokens/s out (automatic when compare ran several jobs on one GPU)")
    p.set_defaults(func=report_cmd)


def _add_recipe_commands(sub) -> None:
    """`fp4lab recipes`, `fp4lab describe` (owner: fp4lab/recipes.py, fp4lab/nn)."""

    def recipes(args):
        from fp4lab.recipes import describe_recipes

        print(describe_recipes(args.spec))

    def describe(args):
        from fp4lab.models import build_model
        from fp4lab.nn import convert, describe as describe_model

        model = build_model(args.model, args.vocab_size, seed=0)
        print(describe_model(convert(model, args.recipe)))

    p = sub.add_parser("recipes", help="list the training recipe presets, or show what a recipe string means")
    p.add_argument("spec", nargs="*", help='recipe(s) to show, e.g. "nvfp4:rht=false,bf16_layers=last:4" or a .toml')
    p.set_defaults(func=recipes)
    p = sub.add_parser("describe", help="table of every linear layer of a model preset and its precision per GEMM")
    p.add_argument("--model", default="tiny", help="model preset (fp4lab.models)")
    p.add_argument("--recipe", default="nvfp4", help="recipe preset, string or .toml")
    p.add_argument("--vocab-size", type=int, default=256)
    p.set_defaults(func=describe)


def _add_ptq_commands(sub) -> None:
    """`fp4lab quantize`, `fp4lab convert`, `fp4lab eval`, `fp4lab inspect` (owner: fp4lab/ptq, fp4lab/export)."""

    def lazy(name):
        def run(args):
            from fp4lab.ptq import commands

            return getattr(commands, name)(args)
        return run

    p = sub.add_parser("quantize", help="post-training quantization of a Hugging Face causal LM")
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--scheme", default="nvfp4a16", choices=["nvfp4a16", "nvfp4", "mxfp4", "fp8"])
    p.add_argument("--method", default="rtn", choices=["rtn", "gptq"])
    p.add_argument("--four-over-six", action="store_true", help="per block, map the max to 6 or 4 (lower MSE)")
    p.add_argument("--calib", help="calibration data: text file (.xz ok) or token ids (.pt/.npy)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--ignore", action="append", metavar="REGEX",
                   help="more linear layers to keep in high precision (regex, repeatable); lm_head always is")
    p.add_argument("--format", default="compressed-tensors", choices=["compressed-tensors", "modelopt"])
    p.add_argument("--tokenizer", help="tokenizer.json, a directory or 'byte' (default: the model directory's)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=lazy("cmd_quantize"))

    p = sub.add_parser("convert", help="convert a quantized checkpoint between ModelOpt and compressed-tensors")
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--to", required=True, choices=["modelopt", "compressed-tensors"])
    p.set_defaults(func=lazy("cmd_convert"))

    p = sub.add_parser("eval", help="perplexity with a strided sliding window (BF16 or quantized model)")
    p.add_argument("model_dir")
    p.add_argument("--data", required=True, help="text file (.xz ok) or token ids (.pt/.npy)")
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--stride", type=int, help="default: ctx/2")
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens")
    p.add_argument("--tokenizer", help="tokenizer.json, a directory or 'byte' (default: the model directory's)")
    p.add_argument("--device")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.set_defaults(func=lazy("cmd_eval"))

    p = sub.add_parser("inspect", help="per-layer quantization diagnostics (table + PNG)")
    p.add_argument("model_dir")
    p.add_argument("--scheme", default="nvfp4a16", choices=["nvfp4a16", "nvfp4", "mxfp4", "fp8"],
                   help="for a high-precision directory: the scheme to simulate (RTN)")
    p.add_argument("--four-over-six", action="store_true")
    p.add_argument("--reference", help="for a quantized directory: the original model, for SQNR / errors")
    p.add_argument("--plot", help="PNG path (default: MODEL_DIR/inspect.png)")
    p.set_defaults(func=lazy("cmd_inspect"))


def build_parser() -> argparse.ArgumentParser:
    from fp4lab import __version__

    parser = argparse.ArgumentParser(
        prog="fp4lab",
        description="Train and serve models in NVFP4 on the GPUs you have, and measure what it costs.",
    )
    parser.add_argument("--version", action="version", version=f"fp4lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_data_commands(sub)
    _add_train_commands(sub)
    _add_recipe_commands(sub)
    _add_ptq_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers imports torchao whenever it is installed (fp4lab's test extra pulls it in). With a torch
    # build its CUDA extensions were not made for (a CPU-only one, say) torchao logs "Failed to load ..."
    # for each of them, and newer torch warns about two of torchao's pytree registrations: eight lines in
    # `fp4lab compare`. fp4lab never calls torchao or registers pytrees, so they only alarm
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        # bad input gets a message, not a traceback; FP4LAB_DEBUG=1 shows the traceback
        import os

        if os.environ.get("FP4LAB_DEBUG"):
            raise
        print(f"fp4lab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
