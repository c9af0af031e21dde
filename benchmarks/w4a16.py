"""Layer benchmark: NVFP4 W4A16 (fp4lab.kernels.w4a16) vs BF16 cuBLAS, side by side in one run.

Protocol (kernels.md §4.1, §8): one CUDA graph of R calls, each on a different weight copy so that
R copies exceed L2 (cold L2, no Python launch overhead); median of `--repeats` x `--replays` replays,
divided by R. The memory-bandwidth ideal is (weight + x + y bytes) / copy bandwidth measured in the
same run (a 1 GiB device-to-device copy, read + write bytes counted).

    PYTHONPATH=. python3 benchmarks/w4a16.py                      # all shapes and M, JSON to benchmarks/results/
    PYTHONPATH=. python3 benchmarks/w4a16.py --shapes llama3-8b --ms 1,16,64 --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from _timing import graph_us  # benchmarks/_timing.py (the script's folder is on sys.path)

from fp4lab.kernels import w4a16

SHAPES = {  # name: (N, K) of the weight [N, K]
    "llama3-8b.qkv": (6144, 4096),
    "llama3-8b.o": (4096, 4096),
    "llama3-8b.gate_up": (28672, 4096),
    "llama3-8b.down": (4096, 14336),
    "qwen2.5-7b.qkv": (4608, 3584),
    "qwen2.5-7b.o": (3584, 3584),
    "qwen2.5-7b.gate_up": (37888, 3584),
    "qwen2.5-7b.down": (3584, 18944),
}
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096]
ROTATE_BYTES = 160e6  # > 50 MB L2 of an H100 (60 MB on an H200)
DEV = "cuda"  # "cpu" only for --smoke (checks this script's logic under TRITON_INTERPRET=1; times mean nothing)


def graph_time_us(calls, replays: int, repeats: int) -> float:
    """Median µs per call of a CUDA graph that runs every callable in `calls` once."""
    if DEV == "cpu":
        t0 = time.perf_counter()
        for c in calls:
            c()
        return (time.perf_counter() - t0) * 1e6 / len(calls)
    return graph_us(calls, repeats, replays)


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device copy, read + write counted."""
    a = torch.empty(2**28 if DEV == "cuda" else 2**16, dtype=torch.float32, device=DEV)
    b = torch.empty_like(a)
    us = graph_time_us([lambda: b.copy_(a)], replays=10, repeats=5)
    return 2 * a.numel() * a.element_size() / (us * 1e-6)


def read_bandwidth() -> float:
    """Bytes/s of a 1 GiB read-only reduction (reported next to the copy figure)."""
    a = torch.ones(2**28 if DEV == "cuda" else 2**16, dtype=torch.float32, device=DEV)
    out = torch.empty((), device=DEV)
    us = graph_time_us([lambda: torch.sum(a, dim=0, out=out)], replays=10, repeats=5)
    return a.numel() * a.element_size() / (us * 1e-6)


def random_nvfp4(n: int, k: int, gen: torch.Generator):
    """Random codes and scale bytes 0x30..0x3F, directly in the kernel layout (words [K/8, N], scales [K/16, N])."""
    words = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=DEV, generator=gen)
    scales = torch.randint(0x30, 0x40, (k // 16, n), dtype=torch.uint8, device=DEV, generator=gen)
    return words, scales, torch.full((), 1e-3, device=DEV)


def bench_shape(name, n, k, ms, bw, args, log):
    gen = torch.Generator(device=DEV).manual_seed(0)
    fp4_bytes = n * k // 2 + n * k // 16 + 4
    bf16_bytes = 2 * n * k
    r_fp4 = max(1, math.ceil(ROTATE_BYTES / fp4_bytes))
    r_bf16 = max(1, math.ceil(ROTATE_BYTES / bf16_bytes))
    fp4 = [random_nvfp4(n, k, gen) for _ in range(r_fp4)]
    bf16 = [torch.randn(n, k, device=DEV, dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(r_bf16)]
    rows = []
    for m in ms:
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16, generator=gen)
        t_first = time.perf_counter()
        w4a16.w4a16_matmul(x, *fp4[0])  # tunes the dispatcher outside the graph
        if DEV == "cuda":
            torch.cuda.synchronize()
        first_call_s = time.perf_counter() - t_first  # tuning, and Triton compiling what its disk cache lacks
        cfg = w4a16._CHOICES.get(w4a16._key(m, n, k, x.device, False)) or w4a16._interpreter_config(m)
        t_fp4 = graph_time_us([lambda w=w: w4a16.w4a16_matmul(x, *w) for w in fp4], args.replays, args.repeats)
        t_bf16 = graph_time_us([lambda w=w: F.linear(x, w) for w in bf16], args.replays, args.repeats)
        io = 2 * m * k + 2 * m * n
        ideal = (fp4_bytes + io) / bw * 1e6
        row = dict(shape=name, N=n, K=k, M=m, us_nvfp4=round(t_fp4, 2), us_bf16=round(t_bf16, 2),
                   speedup_vs_bf16=round(t_bf16 / t_fp4, 3), ideal_us_nvfp4=round(ideal, 2),
                   fraction_of_ideal=round(ideal / t_fp4, 3), first_call_s=round(first_call_s, 2),
                   tbps_nvfp4=round((fp4_bytes + io) / t_fp4 / 1e6, 3),
                   tbps_bf16=round((bf16_bytes + io) / t_bf16 / 1e6, 3),
                   config=f"{cfg.kind}:{cfg.block_m}x{cfg.block_n}x{cfg.block_k}/split{cfg.split_k}"
                          f"/w{cfg.num_warps}/s{cfg.num_stages}{'/pf' if cfg.prefetch else ''}"
                          if not cfg.dense else
                          {"cublas": "dequant+cublas", "cublas_rows": "dequant+cublas/W[N,K]"}[cfg.kind])
        rows.append(row)
        log(f"{name:20s} M={m:5d}  nvfp4 {t_fp4:9.2f} us ({row['tbps_nvfp4']:.2f} TB/s)  bf16 {t_bf16:9.2f} us  "
            f"x{row['speedup_vs_bf16']:.2f}  ideal {ideal:8.2f} us ({row['fraction_of_ideal']:.0%})  {row['config']}  "
            f"first call {first_call_s:.1f} s")
    del fp4, bf16
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return rows


def sass_report(ms) -> None:
    """Compile every dispatcher candidate for sm_90 (no GPU needed) and print the main loop's SASS
    instruction count per weight element and per thread, and shared-memory / local-memory (spill) use:
    a static check that the dequantization stays in registers and cheap."""
    import collections
    import re
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptrs = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*u8", "g_ptr": "*fp32", "bias_ptr": "*fp32",
            "y_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}
    ints = {"M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_ym": "i32", "split_k": "i32"}
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
    seen = set()
    for m in ms:
        for cfg in w4a16.candidates(m, 4096, 4096):
            key = (cfg.kind, cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages, cfg.prefetch)
            if cfg.dense or key in seen:
                continue
            seen.add(key)
            if cfg.kind == "gemv":
                fn, const = w4a16._w4a16_gemv_kernel, dict(BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                                                           HAS_BIAS=False, ASM=True, EVEN=True,
                                                           PREFETCH=bool(cfg.prefetch))
            elif cfg.kind == "gemvm":
                fn, const = w4a16._w4a16_gemv_rows_kernel, dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                                                BLOCK_K=cfg.block_k, HAS_BIAS=False, ASM=True,
                                                                EVEN=True, PREFETCH=bool(cfg.prefetch))
            elif cfg.kind in ("swap", "swap8"):
                fn, const = w4a16._w4a16_swap_kernel, dict(
                    BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, HAS_BIAS=False,
                    DOT_FP32=False, ONE_DOT=cfg.kind == "swap", ASM=True, BF16X2=True, EVEN=True)
            else:
                fn, const = w4a16._w4a16_dot_kernel, dict(
                    BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                    HAS_BIAS=False, DOT_FP32=False, ONE_DOT=cfg.kind == "dot1", ASM=True, BF16X2=True, EVEN=True)
            sig = {**ptrs, **ints, **{c: "constexpr" for c in const}}
            attrs = {(list(sig).index(a),): [["tt.divisibility", 16]]
                     for a in list(ptrs) + ["N", "K", "stride_xm", "stride_ym"]}
            c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                               target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
            with open("/tmp/_w4a16.cubin", "wb") as f:
                f.write(c.asm["cubin"])
            lines = subprocess.run([nvdisasm, "-c", "/tmp/_w4a16.cubin"], capture_output=True,
                                   text=True).stdout.splitlines()
            labels = {ln.strip()[:-1]: i for i, ln in enumerate(lines) if ln.startswith(".L_x")}
            loops = [(labels[mm.group(1)], i) for i, ln in enumerate(lines)
                     if (mm := re.search(r"BRA `\((\.L_x_\d+)\)", ln)) and labels.get(mm.group(1), i) < i]
            lo, hi = max(loops, key=lambda ab: ab[1] - ab[0]) if loops else (0, len(lines))
            ops = collections.Counter(op.split(".")[0] for op in re.findall(
                r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z0-9_.]+)", "\n".join(lines[lo:hi + 1])))
            per_thread = cfg.block_n * cfg.block_k / (32 * cfg.num_warps)
            mem = {k: ops[k] for k in ("STS", "LDS", "BAR", "STL", "LDL") if ops.get(k)}
            print(f"{cfg.kind:5s} {cfg.block_m:3d}x{cfg.block_n:4d}x{cfg.block_k:3d} w{cfg.num_warps} s{cfg.num_stages}"
                  f"{' pf' if cfg.prefetch else '   '}: "
                  f"{sum(ops.values()) / per_thread:5.2f} SASS instr per weight element per thread; "
                  f"smem {c.metadata.shared} B; {mem}", flush=True)


def layer_sums(rows):
    """Sum of the four linears of one decoder layer, per model and M."""
    out = []
    for model in sorted({r["shape"].rsplit(".", 1)[0] for r in rows}):  # "qwen2.5-7b.qkv" -> "qwen2.5-7b"
        for m in sorted({r["M"] for r in rows}):
            rs = [r for r in rows if r["shape"].startswith(model + ".") and r["M"] == m]
            if len(rs) == 4:
                a, b = sum(r["us_nvfp4"] for r in rs), sum(r["us_bf16"] for r in rs)
                out.append(dict(model=model, M=m, us_nvfp4=round(a, 2), us_bf16=round(b, 2),
                                speedup_vs_bf16=round(b / a, 3)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="all", help="'all', a model prefix (llama3-8b) or comma-separated names")
    p.add_argument("--ms", default=",".join(map(str, MS)))
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/w4a16-<gpu>-<date>.json)")
    p.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes: checks the script only")
    p.add_argument("--sass", action="store_true", help="no GPU: compile the candidates for sm_90 and print SASS stats")
    args = p.parse_args(argv)
    if args.sass:
        return sass_report([int(v) for v in args.ms.split(",")])
    global DEV, ROTATE_BYTES
    if args.smoke:
        ROTATE_BYTES = 1e4
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--smoke needs TRITON_INTERPRET=1")
        DEV = "cpu"
        SHAPES.clear()
        SHAPES.update({"tiny.qkv": (96, 64), "tiny.o": (64, 64), "tiny.gate_up": (128, 64), "tiny.down": (64, 128)})
    elif not torch.cuda.is_available():
        sys.exit("benchmarks/w4a16.py needs a CUDA GPU")
    names = [s for s in SHAPES if args.shapes == "all" or any(s.startswith(q) for q in args.shapes.split(","))]
    ms = [int(v) for v in args.ms.split(",")]
    gpu = torch.cuda.get_device_name() if DEV == "cuda" else "cpu-interpreter-smoke"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    tag = gpu.replace("NVIDIA ", "").split()[0].lower()
    out = args.out or f"benchmarks/results/w4a16-{tag}-{date}.json"
    t0 = time.time()
    bw = copy_bandwidth()
    bw_read = read_bandwidth()
    print(f"{gpu}: copy bandwidth {bw / 1e12:.3f} TB/s (read + write), read-only {bw_read / 1e12:.3f} TB/s",
          flush=True)
    result = dict(device=gpu, date=date, torch=torch.__version__, triton=__import__("triton").__version__,
                  command="PYTHONPATH=. python3 benchmarks/w4a16.py " + " ".join(argv or sys.argv[1:]),
                  protocol="CUDA-graph replay, rotating weight copies > 160 MB (cold L2), median of "
                           f"{args.repeats}x{args.replays} replays; ideal = (weight+x+y bytes) / copy bandwidth",
                  copy_bandwidth_tbps=round(bw / 1e12, 4), read_bandwidth_tbps=round(bw_read / 1e12, 4),
                  rows=[], layer_sums=[])
    for name in names:
        n, k = SHAPES[name]
        result["rows"] += bench_shape(name, n, k, ms, bw, args, lambda s: print(s, flush=True))
        result["layer_sums"] = layer_sums(result["rows"])
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:  # after every shape, so a cut-off run keeps what it measured
            json.dump(result, f, indent=1)
    for s in result["layer_sums"]:
        print(f"{s['model']} decoder layer (4 linears) M={s['M']}: nvfp4 {s['us_nvfp4']:.1f} us, "
              f"bf16 {s['us_bf16']:.1f} us, x{s['speedup_vs_bf16']:.2f}")
    print(f"wrote {out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
