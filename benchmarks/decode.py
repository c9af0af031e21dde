"""Decode benchmark: a Llama-3-8B-architecture model with random weights, BF16 vs NVFP4 W4A16.

The model is a minimal Llama implementation in this file (RMSNorm, RoPE, grouped-query attention
with a static KV cache, SwiGLU; fused qkv and gate_up linears, as serving engines run them), so
that one decode step is a plain, CUDA-graph capturable sequence of kernels. Embedding and lm_head
stay BF16 in both variants (the usual NVFP4 checkpoint recipe). Weights are random (no download).
NVFP4 weights are quantize_nvfp4 (RTN, torchao order) of the same random BF16 weights.

Each variant runs twice (`--modes`): "graph" captures the plain PyTorch step (every op of RMSNorm,
RoPE, SwiGLU and the residual adds its own kernel); "compiled" first wraps every decoder block in
torch.compile (fullgraph, inductor's default mode), which fuses that glue into a few Triton kernels as
a serving engine's fused kernels would. In both, the linears are the same cuBLAS (BF16: without
max-autotune inductor leaves the matmuls to aten) or fp4lab W4A16 calls (the fp4lab::nvfp4_linear
custom op), so the two modes differ only in the glue.

Measured per batch size (greedy decoding, the step graph feeds its own argmax back):
  TTFT: one prefill of a `--prompt`-token prompt per sequence + the first token (eager, no graph;
        median of TTFT_REPEATS timed prefills, their range kept next to it); ttft_graph_ms: the same
        prefill replayed from a CUDA graph (GPU time; eager at batch 1-2 is bound by the host);
  inter-token latency: mean time of one captured decode step over `--steps` replays;
  tokens/s = batch / inter-token latency; weight memory = bytes of all parameters and buffers.

    PYTHONPATH=. python3 benchmarks/decode.py                   # 32 layers, batch 1, 8, 32
    PYTHONPATH=. python3 benchmarks/decode.py --layers 4        # reduced depth (say so when reporting)
    PYTHONPATH=. python3 benchmarks/decode.py --modes graph     # only the plain step (no compile time)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from _timing import replay_ms  # benchmarks/_timing.py (the script's folder is on sys.path)

TTFT_REPEATS = 5  # time to first token: median of this many timed prefills after the warm-up one


@dataclass
class LlamaArch:  # Llama-3-8B (config.json of meta-llama/Meta-Llama-3-8B)
    hidden: int = 4096
    intermediate: int = 14336
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 128256
    rope_theta: float = 500000.0
    eps: float = 1e-5


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):  # x [B, T, H, D]; cos/sin [T, D/2]
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class Block(nn.Module):
    def __init__(self, a: LlamaArch):
        super().__init__()
        self.a = a
        self.qkv = nn.Linear(a.hidden, (a.heads + 2 * a.kv_heads) * a.head_dim, bias=False)
        self.o = nn.Linear(a.heads * a.head_dim, a.hidden, bias=False)
        self.gate_up = nn.Linear(a.hidden, 2 * a.intermediate, bias=False)
        self.down = nn.Linear(a.intermediate, a.hidden, bias=False)
        self.norm1 = nn.Parameter(torch.ones(a.hidden))
        self.norm2 = nn.Parameter(torch.ones(a.hidden))

    def forward(self, x, cos, sin, pos, k_cache, v_cache, mask):
        a = self.a
        b, t, _ = x.shape
        q, k, v = self.qkv(rms_norm(x, self.norm1, a.eps)).split(
            [a.heads * a.head_dim, a.kv_heads * a.head_dim, a.kv_heads * a.head_dim], dim=-1)
        q = rope(q.view(b, t, a.heads, a.head_dim), cos, sin).transpose(1, 2)
        k = rope(k.view(b, t, a.kv_heads, a.head_dim), cos, sin).transpose(1, 2)
        k_cache.index_copy_(2, pos, k)
        v_cache.index_copy_(2, pos, v.view(b, t, a.kv_heads, a.head_dim).transpose(1, 2))
        att = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, -1))
        gate, up = self.gate_up(rms_norm(x, self.norm2, a.eps)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Llama(nn.Module):
    def __init__(self, a: LlamaArch):
        super().__init__()
        self.a = a
        self.embed = nn.Embedding(a.vocab, a.hidden)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = nn.Parameter(torch.ones(a.hidden))
        self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)
        inv = 1.0 / a.rope_theta ** (torch.arange(0, a.head_dim, 2).float() / a.head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)
        self.compiled_blocks = None  # a plain list (not submodules): set by compile_blocks

    def forward(self, ids, pos, caches):
        """ids [B, T], pos [T] (absolute positions), caches: list of (k, v) [B, KV, S, D]. Logits of the last token."""
        ang = pos.float()[:, None] * self.inv_freq[None, :]
        cos, sin = ang.cos(), ang.sin()
        s = caches[0][0].shape[2]
        mask = torch.arange(s, device=ids.device)[None, :] <= pos[:, None]  # [T, S], causal over the cache
        x = self.embed(ids)
        for blk, (kc, vc) in zip(self.compiled_blocks or self.blocks, caches):
            x = blk(x, cos, sin, pos, kc, vc, mask)
        return self.lm_head(rms_norm(x[:, -1], self.norm, self.a.eps))


def compile_blocks(model: Llama, on: bool) -> None:
    """Run the decoder blocks through torch.compile (on) or eagerly. Dynamo's caches are reset first so
    that one variant's graphs (BF16 or NVFP4 linears) never serve the other; the blocks share one code
    object, so each (batch, tokens) shape compiles once for all 32."""
    torch._dynamo.reset()
    model.compiled_blocks = [torch.compile(b, fullgraph=True) for b in model.blocks] if on else None


def weight_bytes(model: nn.Module, linears_only: bool = False) -> int:
    """Bytes of every parameter and buffer (or only those of the decoder-layer linears)."""
    if linears_only:
        model = nn.ModuleList(m for blk in model.blocks for m in (blk.qkv, blk.o, blk.gate_up, blk.down))
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def bench_variant(model, a, batches, prompt, steps, log, out):
    """Appends one row per batch size to `out` (and calls log), so a cut-off run keeps what it measured."""
    for bsz in batches:
        s_max = prompt + steps + 8
        caches = [(torch.zeros(bsz, a.kv_heads, s_max, a.head_dim, dtype=torch.bfloat16, device="cuda"),
                   torch.zeros(bsz, a.kv_heads, s_max, a.head_dim, dtype=torch.bfloat16, device="cuda"))
                  for _ in range(a.layers)]
        gen = torch.Generator(device="cuda").manual_seed(0)
        ids = torch.randint(0, a.vocab, (bsz, prompt), device="cuda", generator=gen)
        ppos = torch.arange(prompt, device="cuda")
        with torch.no_grad():
            model(ids, ppos, caches)  # warm-up (compiles, tunes the kernel dispatcher)
            torch.cuda.synchronize()
            ttfts = []
            for _ in range(TTFT_REPEATS):  # one eager prefill timed alone varied 38-61 ms at batch 1
                t0 = time.perf_counter()
                first = model(ids, ppos, caches).argmax(-1)
                torch.cuda.synchronize()
                ttfts.append((time.perf_counter() - t0) * 1e3)
            ttft_ms = statistics.median(ttfts)
            # the same prefill replayed from a CUDA graph: its GPU time, without the host's launch gaps
            # (the eager prefill at batch 1-2 is host-bound: hundreds of launches)
            pgraph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(pgraph):
                pfirst = model(ids, ppos, caches).argmax(-1)
            pgraph.replay()
            torch.cuda.synchronize()
            if not torch.equal(pfirst, first):
                log(f"  batch {bsz}: note: the graph-replayed prefill picked other first tokens than eager "
                    f"({int((pfirst != first).sum())} of {bsz}; split-K summation order)")
            ttft_graph_ms = replay_ms(pgraph, TTFT_REPEATS)
            del pgraph
            tok = first.view(bsz, 1).clone()
            pos = torch.full((1,), prompt, dtype=torch.long, device="cuda")

            def step():
                nxt = model(tok, pos, caches).argmax(-1)
                tok.copy_(nxt.view(bsz, 1))
                pos.add_(1)

            step()  # eager warm-up at M = bsz (tunes)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            pos.fill_(prompt)
            graph.replay()
            torch.cuda.synchronize()
            pos.fill_(prompt)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
        itl_ms = start.elapsed_time(end) / steps
        row = dict(batch=bsz, ttft_ms=round(ttft_ms, 2), ttft_ms_range=[round(min(ttfts), 2), round(max(ttfts), 2)],
                   ttft_graph_ms=round(ttft_graph_ms, 2),
                   inter_token_ms=round(itl_ms, 3),
                   tokens_per_s=round(bsz * 1e3 / itl_ms, 1))
        out.append(row)
        log(f"  batch {bsz:3d}: TTFT ({prompt}-token prompt) {ttft_ms:8.2f} ms (graph {ttft_graph_ms:.2f})   "
            f"inter-token {itl_ms:7.3f} ms   {row['tokens_per_s']:9.1f} tokens/s")
        del graph, caches
        torch.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--modes", default="graph,compiled",
                   help="graph (plain PyTorch step), compiled (decoder blocks through torch.compile), or both")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/decode.py needs a CUDA GPU")
    from fp4lab.nn.nvfp4_linear import quantize_linears_to_nvfp4

    a = LlamaArch(layers=args.layers)
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    if not modes or any(m not in ("graph", "compiled") for m in modes):
        sys.exit(f"--modes: a comma-separated list of graph and compiled, not {args.modes!r}")
    torch._dynamo.config.recompile_limit = 64  # room for a graph per (batch, tokens) shape and variant
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never a silent fall back to the plain step
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Llama(a).to(torch.bfloat16)
    for prm in model.parameters():
        if prm.ndim == 2:
            prm.data.normal_(0, 0.02)
    model.eval()
    gpu = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    res = dict(device=gpu, date=date, torch=torch.__version__, arch=asdict(a),
               command="PYTHONPATH=. python3 benchmarks/decode.py " + " ".join(argv or sys.argv[1:]),
               note=("Llama-3-8B architecture, random weights, minimal implementation in benchmarks/decode.py "
                     "(fused qkv/gate_up), embedding and lm_head BF16 in both variants; variants named "
                     "'+compiled' ran every decoder block through torch.compile (the glue fused, the same "
                     "linears), the others the plain PyTorch step"
                     + ("" if a.layers == 32 else f"; REDUCED DEPTH: {a.layers} of 32 layers")),
               prompt=args.prompt, steps=args.steps, variants={})
    tag = gpu.replace("NVIDIA ", "").split()[0].lower()
    out = args.out or f"benchmarks/results/decode-{tag}-{date}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

    def key(variant, mode):  # "bf16", "nvfp4" (plain step, the keys of earlier files), "bf16+compiled", ...
        return variant if mode == "graph" else f"{variant}+{mode}"

    def save(line=None):
        if line:
            print(line, flush=True)
        v = res["variants"]
        for mode in modes:
            b, q = v.get(key("bf16", mode)), v.get(key("nvfp4", mode))
            if b is None or q is None:
                continue
            def nvfp4_over_bf16(k):  # per batch size
                return {r["batch"]: round(s[k] / r[k], 3) for r, s in zip(b["rows"], q["rows"])}

            tail = "" if mode == "graph" else f"_{mode}"
            res["speedup_tokens_per_s" + tail] = nvfp4_over_bf16("tokens_per_s")
            res["ttft_graph_nvfp4_over_bf16" + tail] = nvfp4_over_bf16("ttft_graph_ms")
            res["weight_memory_ratio"] = round(q["weight_gb"] / b["weight_gb"], 3)
            res["linear_weight_memory_ratio"] = round(q["linear_weight_gb"] / b["linear_weight_gb"], 3)
        with open(out, "w") as f:  # after every measurement, so a cut-off run keeps what it measured
            json.dump(res, f, indent=1)

    for variant in ("bf16", "nvfp4"):
        if variant == "nvfp4":
            quantize_linears_to_nvfp4(model.blocks)
            torch.cuda.empty_cache()
        print(f"{variant}: weight memory {weight_bytes(model) / 1e9:.2f} GB total, "
              f"{weight_bytes(model, True) / 1e9:.2f} GB in decoder linears", flush=True)
        for mode in modes:
            print(f"{variant}, {mode}:", flush=True)
            compile_blocks(model, mode == "compiled")
            entry = res["variants"][key(variant, mode)] = dict(
                weight_gb=round(weight_bytes(model) / 1e9, 3),
                linear_weight_gb=round(weight_bytes(model, True) / 1e9, 3), rows=[])
            bench_variant(model, a, batches, args.prompt, args.steps, save, entry["rows"])
        compile_blocks(model, False)
    print(json.dumps({k: v for k, v in res.items() if k.startswith(("speedup", "ttft_graph", "weight_memory",
                                                                      "linear_weight"))}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
