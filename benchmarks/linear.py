"""Forward+backward time of one linear layer per recipe, and activation memory of a 12-layer stack.

All numbers come from this run on this device, side by side: `bf16` (nn.Linear), fp4lab `nvfp4`
(the paper's full recipe: 2D weights, RHT on Wgrad, SR on gradients), `mxfp4`, `fp8`, and a naive
emulation of the nvfp4 recipe (pure-PyTorch fake quantization from fp4lab.formats, torch.compile'd,
BF16 activations saved), the kind of code a user would write today. Parameters and activations are
BF16; time is the median of CUDA-event-timed iterations (fwd + dx + dW) after warm-up. Memory: bytes
saved for backward (unique storages, parameters excluded) and the allocator's peak during fwd+bwd.
Usage (on a CUDA machine; ~3 minutes on an H100):

    PYTHONPATH=. python3 benchmarks/linear.py --out benchmarks/results/linear-<gpu>-<date>.json

--host adds host issue time vs GPU time per step; --graph the same fwd+bwd replayed from a CUDA graph
(possible for every recipe since stochastic rounding seeds from the device), the time a captured step
pays without any host work; --profile the per-kernel GPU time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn
from _timing import replay_ms  # benchmarks/_timing.py (the script's folder is on sys.path)

SHAPES = [(8192, 4096, 4096), (16384, 2048, 8192), (8192, 4096, 14336)]  # (M tokens, K in, N out)
METHODS = ["bf16", "nvfp4", "mxfp4", "fp8", "naive-compiled-nvfp4"]
STACK = dict(layers=12, M=8192, K=4096)
DEVICE = "cuda"  # --device cpu only checks the script itself on tiny shapes


def naive_nvfp4_fn():
    """The nvfp4 recipe written naively: fake-quantize every GEMM operand with fp4lab.formats."""
    from fp4lab import formats as fm

    bf16 = torch.bfloat16

    def fq(t, **kw):
        return fm.quantize_nvfp4(t, nonfinite="propagate", **kw).dequantize(bf16)

    class Naive(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return fq(x) @ fq(w, block_2d=True).t()

        @staticmethod
        def backward(ctx, dy):
            x, w = ctx.saved_tensors
            dx = fq(dy, rounding="stochastic") @ fq(w, block_2d=True)
            dyt = fm.random_hadamard_16(dy.t(), nonfinite="propagate")
            xt = fm.random_hadamard_16(x.t(), nonfinite="propagate")
            dw = fq(dyt, rounding="stochastic") @ fq(xt).t()
            return dx, dw

    # one compilation per shape (static shapes: torch.rand inside the SR quantizer does not trace
    # with symbolic sizes); compile time is reported, not timed
    return torch.compile(lambda x, w: Naive.apply(x, w), dynamic=False)


_NAIVE = []


def make_layer(method: str, K: int, N: int):
    """A callable x -> y and the parameter it trains."""
    if method == "bf16":
        lin = nn.Linear(K, N, bias=False, device=DEVICE, dtype=torch.bfloat16)
        return lin, lin.weight
    if method == "naive-compiled-nvfp4":
        w = nn.Parameter(torch.randn(N, K, device=DEVICE, dtype=torch.bfloat16) * K ** -0.5)
        if not _NAIVE:
            _NAIVE.append(naive_nvfp4_fn())
        fn = _NAIVE[0]
        return (lambda x: fn(x, w)), w
    from fp4lab.nn import QuantLinear

    recipe = {"nvfp4": "nvfp4", "mxfp4": "mxfp4", "fp8": "fp8"}[method] + ":bf16_layers=none"
    layer = QuantLinear(K, N, bias=False, device=DEVICE, dtype=torch.bfloat16, recipe=recipe)
    return layer, layer.weight


def time_fwd_bwd(fn, w, x, dy, warmup=3, iters=10) -> dict:
    """Median ms of y = fn(x); y.backward(dy) (dx and dW), CUDA events around each iteration."""
    def step():
        x.grad = None
        w.grad = None
        fn(x).backward(dy)

    for _ in range(warmup):
        step()
    _sync()
    times = []
    for _ in range(iters):
        if DEVICE == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"ms_median": statistics.median(times), "ms_min": min(times), "iters": iters}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def layer_bench(shapes, methods, deadline) -> list[dict]:
    rows = []
    for M, K, N in shapes:
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_(True)
        dy = torch.randn(M, N, device=DEVICE, dtype=torch.bfloat16, generator=g)
        w0 = torch.randn(N, K, device=DEVICE, dtype=torch.bfloat16, generator=g) * K ** -0.5
        y_ref = None
        for method in methods:
            row = {"M": M, "K": K, "N": N, "method": method}
            if time.time() > deadline:
                row["skipped"] = "time budget exhausted"
                rows.append(row)
                continue
            t0 = time.time()
            fn = w = None
            try:
                fn, w = make_layer(method, K, N)
                with torch.no_grad():
                    w.copy_(w0)
                y = fn(x)  # first call (compiles the naive emulation) doubles as a warm-up step
                y.backward(dy)
                y = y.detach().float()
                if y_ref is None:
                    y_ref = y
                row["rel_err_vs_bf16"] = float((y - y_ref).norm() / y_ref.norm())
                del y
                row.update(time_fwd_bwd(fn, w, x, dy))
                row["tflops"] = 3 * 2 * M * K * N / (row["ms_median"] * 1e-3) / 1e12
            except Exception as err:  # noqa: BLE001 - report and continue with the other methods
                row["error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            row["wall_s"] = round(time.time() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del fn, w
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
        base = next((r for r in rows if r["method"] == "bf16" and (r["M"], r["K"], r["N"]) == (M, K, N) and "ms_median" in r), None)
        for r in rows:
            if base and r["M"] == M and r["K"] == K and r["N"] == N and "ms_median" in r:
                r["ratio_vs_bf16"] = r["ms_median"] / base["ms_median"]
    return rows


def kernel_profile(M: int, K: int, N: int, methods, steps: int = 5) -> list[dict]:
    """Where one fwd+bwd spends GPU time: torch.profiler's per-kernel device time, per step."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    dy = torch.randn(M, N, device=DEVICE, dtype=torch.bfloat16, generator=g)
    out = []
    for method in methods:
        if method == "naive-compiled-nvfp4":
            continue
        fn, w = make_layer(method, K, N)
        for _ in range(3):
            fn(x).backward(dy)
        _sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(steps):
                x.grad = w.grad = None
                fn(x).backward(dy)
            _sync()
        kernels = []
        for e in prof.key_averages():
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0)
            if us > 0 and e.device_type.name != "CPU":
                kernels.append({"kernel": e.key[:120], "calls_per_step": e.count / steps,
                                "us_per_step": round(us / steps, 1)})
        kernels.sort(key=lambda r: -r["us_per_step"])
        total = sum(r["us_per_step"] for r in kernels)
        out.append({"method": method, "M": M, "K": K, "N": N, "gpu_us_per_step": round(total, 1), "kernels": kernels})
        print(f"\nprofile {method} {M}x{K}x{N}: {total:.0f} us of GPU kernels per fwd+bwd")
        for r in kernels[:25]:
            print(f"  {r['us_per_step']:9.1f} us  x{r['calls_per_step']:4.1f}  {r['kernel'][:100]}")
        del fn, w
    return out


def host_overhead(shapes, methods, steps: int = 30, repeats: int = 3) -> list[dict]:
    """Host time to issue `steps` fwd+bwd of one layer (no sync) and the time until the GPU is done,
    per step (median of `repeats`): when host_ms ~ pipelined_ms the layer is launch-bound, and a
    model of such layers runs at the host's pace, not the GPU's."""
    rows = []
    for M, K, N in shapes:
        for method in methods:
            if method == "naive-compiled-nvfp4":
                continue
            fn, w = make_layer(method, K, N)
            x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
            dy = torch.randn(M, N, device=DEVICE, dtype=torch.bfloat16)
            for _ in range(5):
                fn(x).backward(dy)
            _sync()
            res = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn(x).backward(dy)
                t_host = time.perf_counter() - t0
                _sync()
                res.append(((time.perf_counter() - t0) / steps * 1e3, t_host / steps * 1e3))
            pipelined, host = sorted(res)[len(res) // 2]
            rows.append({"method": method, "M": M, "K": K, "N": N, "pipelined_ms": round(pipelined, 3),
                         "host_ms": round(host, 3)})
            print(json.dumps(rows[-1]), flush=True)
            del fn, w
    return rows


def graph_replay(shapes, methods, replays: int = 20) -> list[dict]:
    """GPU time of one fwd+bwd replayed from a CUDA graph: no host work per step, which is what a
    captured training step pays (torch.compile mode="reduce-overhead"). Median of `replays`."""
    rows = []
    for M, K, N in shapes:
        for method in methods:
            if method == "naive-compiled-nvfp4":
                continue
            row = {"method": method, "M": M, "K": K, "N": N}
            fn = w = graph = None
            try:
                fn, w = make_layer(method, K, N)
                x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
                dy = torch.randn(M, N, device=DEVICE, dtype=torch.bfloat16)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up off the capture: Triton compiles, cuBLAS workspaces
                    for _ in range(3):
                        x.grad = w.grad = None
                        fn(x).backward(dy)
                torch.cuda.current_stream().wait_stream(side)
                x.grad = w.grad = None
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fn(x).backward(dy)
                row["graph_ms"] = round(replay_ms(graph, repeats=replays), 4)
            except Exception as err:  # noqa: BLE001 - report and continue with the other methods
                row["error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            rows.append(row)
            print(json.dumps(row), flush=True)
            del graph, fn, w
            torch.cuda.empty_cache()
        base = next((r for r in rows if r["method"] == "bf16" and (r["M"], r["K"], r["N"]) == (M, K, N)
                     and "graph_ms" in r), None)
        for r in rows:
            if base and (r["M"], r["K"], r["N"]) == (M, K, N) and "graph_ms" in r:
                r["ratio_vs_bf16"] = round(r["graph_ms"] / base["graph_ms"], 3)
    return rows


def stack_memory(method: str, layers: int, M: int, K: int) -> dict:
    """Saved-for-backward bytes and allocator peak of `layers` [K, K] linears, fwd + bwd."""
    from fp4lab.nn import convert

    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    model = nn.Sequential(*[nn.Linear(K, K, bias=False) for _ in range(layers)]).to(DEVICE, torch.bfloat16)
    if method != "bf16":
        convert(model, f"{method}:bf16_layers=none")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    for _ in range(2):  # warm-up (Triton autotune/compile, allocator)
        model(x).float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    x.grad = None
    _sync()
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    cuda = DEVICE == "cuda"
    base = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    after_fwd = torch.cuda.memory_allocated() - base if cuda else None
    y.float().square().mean().backward()
    _sync()
    peak = torch.cuda.max_memory_allocated() - base if cuda else None
    del model, x, y
    return {"method": method, "layers": layers, "M": M, "K": K, "saved_bytes": sum(seen.values()),
            "forward_delta_bytes": after_fwd, "peak_delta_bytes": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the JSON results here (default: print only)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    p.add_argument("--shapes", default=None, help="e.g. 8192x4096x4096,... (M x K x N); default: the issue's three")
    p.add_argument("--budget-s", type=float, default=170.0, help="skip remaining layer timings after this")
    p.add_argument("--stack", default=None, help="LAYERSxMxK for the memory stack (default 12x8192x4096)")
    p.add_argument("--profile", action="store_true",
                   help="also record per-kernel GPU time of one fwd+bwd (torch.profiler) at the first shape")
    p.add_argument("--host", action="store_true",
                   help="also measure host issue time vs GPU time per fwd+bwd (launch-bound or not) at every shape")
    p.add_argument("--graph", action="store_true",
                   help="also time fwd+bwd replayed from a CUDA graph (GPU time alone, no host work) at every shape")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: check the script on tiny shapes
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("benchmarks/linear.py needs a CUDA GPU", file=sys.stderr)
        return 2
    # --device cpu checks the script itself: tiny defaults (the GPU shapes take many minutes on a CPU)
    default_stack, default_shapes = (STACK, SHAPES) if DEVICE == "cuda" else (dict(layers=2, M=64, K=64), [(64, 64, 64)])
    stack = default_stack if not args.stack else dict(zip(("layers", "M", "K"), (int(v) for v in args.stack.split("x"))))
    torch.backends.cuda.matmul.allow_tf32 = False
    start = time.time()
    shapes = default_shapes if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    memory = []
    for method in ("bf16", "nvfp4"):
        try:
            memory.append(stack_memory(method, **stack))
            print(json.dumps(memory[-1]), flush=True)
        except Exception as err:  # noqa: BLE001
            memory.append({"method": method, "error": f"{type(err).__name__}: {err}"})
            traceback.print_exc()
    if len(memory) == 2 and all("saved_bytes" in m for m in memory):
        for key in ("saved_bytes", "forward_delta_bytes", "peak_delta_bytes"):
            if memory[0][key]:
                memory.append({"ratio": f"nvfp4/bf16 {key}", "value": memory[1][key] / memory[0][key]})

    layers = layer_bench(shapes, methods, deadline=start + args.budget_s)
    profiles = kernel_profile(*shapes[0], methods) if args.profile else []
    host = host_overhead(shapes, methods) if args.host else []
    graph = graph_replay(shapes, methods) if args.graph and DEVICE == "cuda" else []
    import fp4lab

    result = {
        "benchmark": "linear fwd+bwd",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "fp4lab": fp4lab.__version__,
        "command": "PYTHONPATH=. python3 benchmarks/linear.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "notes": "bf16 params and activations; ms = median of 10 CUDA-event-timed fwd+bwd iterations after 3 "
                 "warm-ups; tflops counts 3 GEMMs of 2*M*K*N; naive = formats fake-quant under torch.compile, "
                 "its first-call compile time is in wall_s",
        "layers": layers,
        "stack_memory": memory,
        "profile": profiles,
        "host_overhead": host,
        "graph_replay": graph,
        "wall_s": round(time.time() - start, 1),
    }
    _print_table(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return None


def _print_table(result: dict) -> None:
    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}")
    print(f"{'M x K x N':>22} {'method':>22} {'ms':>8} {'x bf16':>7} {'TFLOP/s':>8} {'rel err':>8}")
    for r in result["layers"]:
        shape = f"{r['M']}x{r['K']}x{r['N']}"
        if "ms_median" not in r:
            print(f"{shape:>22} {r['method']:>22}  {r.get('error') or r.get('skipped')}")
            continue
        print(f"{shape:>22} {r['method']:>22} {r['ms_median']:8.3f} {r.get('ratio_vs_bf16', float('nan')):7.2f} "
              f"{r['tflops']:8.1f} {r['rel_err_vs_bf16']:8.4f}")
    for m in result["stack_memory"]:
        print(m)


if __name__ == "__main__":
    raise SystemExit(main())
