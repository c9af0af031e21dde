"""Benchmark the fused NVFP4/MXFP4 quantize kernels against the copy bandwidth and compiled baselines.

Every number comes from this run on this device: triton.testing.do_bench (median over repeats after
warm-up), bf16 inputs larger than L2. Effective GB/s counts minimal bytes: each input read as many
times as the algorithm needs (2 with a global amax pass, 1 with a given amax or for MXFP4), each
output written once. Usage (on a CUDA machine):

    PYTHONPATH=. python3 benchmarks/quantize.py [--out benchmarks/results/quantize-<gpu>-<date>.json]
    PYTHONPATH=. python3 benchmarks/quantize.py --quick [--tiles] --out ...   # main cases only, < 1 min
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys

import torch
from _timing import graph_us  # benchmarks/_timing.py (the script's folder is on sys.path)

SHAPES = [(8192, 8192), (8192, 4096), (16384, 2048)]


def bench(fn, reps=200) -> float:
    """Median µs of fn() (do_bench with its default L2 flush between calls)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=reps, return_mode="median") * 1e3


def graph_bench(fn, xs, replays: int = 10) -> float:
    """Median µs per call of fn over the inputs xs inside one CUDA graph (the GPU time alone: no
    Python launch overhead, which do_bench includes; consecutive calls read different copies, so
    inputs come from HBM as after the L2 flush of do_bench)."""
    return graph_us([lambda x=x: fn(x) for x in xs], repeats=replays)


def copy_bandwidth() -> float:
    """Device copy bandwidth in GB/s (read + write) on a 1 GiB bf16 tensor."""
    x = torch.empty(512 * 1024 * 1024, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    us = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 2 / (us * 1e-6) / 1e9


def cases(M, K):
    """(name, callable(x), bytes read+written at minimum, baseline-key) for one shape."""
    from fp4lab import kernels as K4

    n = M * K
    packed = n // 2 + n // 16  # codes + E4M3 scales
    from fp4lab.formats import seeds

    # SR seeds from a device seed state (what QuantLinear uses; CUDA-graph safe): each SR call also
    # launches the one-element add that advances it
    g = seeds.new_seed_state(0, device="cuda")
    out = []
    for sr in (False, True):
        rnd = "stochastic" if sr else "nearest"
        tag = "+sr" if sr else ""
        kw = dict(rounding=rnd, generator=g)
        out += [
            (f"quantize rowwise{tag}", lambda x, kw=kw: K4.quantize_nvfp4(x, **kw), 2 * 2 * n + packed),
            (f"quantize columnwise{tag}", lambda x, kw=kw: K4.quantize_nvfp4(x, columnwise=True, **kw), 2 * 2 * n + packed),
            (f"quantize rht+columnwise{tag}", lambda x, kw=kw: K4.quantize_nvfp4(x, columnwise=True, rht=True, **kw), 2 * 2 * n + packed),
            (f"quantize 2d{tag}", lambda x, kw=kw: K4.quantize_nvfp4(x, block_2d=True, **kw), 2 * 2 * n + packed),
            (f"fake rowwise{tag}", lambda x, kw=kw: K4.fake_quantize_nvfp4(x, **kw), 2 * 2 * n + 2 * n),
            (f"fake columnwise{tag}", lambda x, kw=kw: K4.fake_quantize_nvfp4(x, columnwise=True, **kw), 2 * 2 * n + 2 * n),
            (f"fake rht+columnwise{tag}", lambda x, kw=kw: K4.fake_quantize_nvfp4(x, columnwise=True, rht=True, **kw), 2 * 2 * n + 2 * n),
            (f"fake 2d{tag}", lambda x, kw=kw: K4.fake_quantize_nvfp4(x, block_2d=True, **kw), 2 * 2 * n + 2 * n),
            (f"mxfp4 fake rowwise{tag}", lambda x, kw=kw: K4.fake_quantize_mxfp4(x, **kw), 2 * n + 2 * n),
        ]
    out += [
        ("quantize rowwise, amax given", lambda x: K4.quantize_nvfp4(x, global_amax=_AMAX[0]), 2 * n + packed),
        ("fake rowwise, amax given", lambda x: K4.fake_quantize_nvfp4(x, global_amax=_AMAX[0]), 2 * n + 2 * n),
        ("quantize columnwise, amax given", lambda x: K4.quantize_nvfp4(x, columnwise=True, global_amax=_AMAX[0]),
         2 * n + packed),
        ("fake columnwise, amax given",
         lambda x: K4.fake_quantize_nvfp4(x, columnwise=True, global_amax=_AMAX[0]), 2 * n + 2 * n),
        ("amax", lambda x: K4.amax(x), 2 * n),
        # QuantLinear's amax pass over x or dy: max |t| and max |RHT(t^T)| from one read
        ("amax pair+rht", lambda x: K4.amax_parts_nvfp4(x, rht=True), 2 * n),
        ("dequantize", None, packed + 2 * n),
    ]
    return out


_AMAX = [None]
BASELINE_SHAPES = {
    "torchao nvfp4_quantize (compiled)": [(8192, 8192), (8192, 4096)],
    "fp4lab.formats fake-quantize (compiled)": [(8192, 4096), (8192, 8192)],
    "fp4lab.formats rht+columnwise fake-quantize (compiled)": [(8192, 4096)],
}


GRAPH_ROTATE_BYTES = 160 * 2**20  # > 50 MB L2 of an H100 (60 MB on an H200)


def rotating_copies(x):
    """x plus clones past GRAPH_ROTATE_BYTES: graph_bench reads a different one each call, so inputs come from HBM."""
    return [x] + [x.clone() for _ in range(max(1, -(-GRAPH_ROTATE_BYTES // (x.numel() * x.element_size()))) - 1)]


QUICK_SHAPES = [(8192, 4096), (8192, 8192)]
QUICK_CASES = ("quantize rowwise", "quantize columnwise", "quantize rht+columnwise", "quantize 2d",
               "fake rowwise", "fake columnwise", "fake rht+columnwise", "fake 2d",
               "quantize rowwise, amax given", "fake rowwise, amax given", "quantize columnwise, amax given",
               "fake columnwise, amax given", "amax", "amax pair+rht", "dequantize",
               # the SR variants QuantLinear runs on dy (Dgrad rowwise, Wgrad RHT+columnwise)
               "fake rowwise+sr", "fake rht+columnwise+sr", "quantize rowwise+sr")
# columnwise (tile, num_warps, vec_r) candidates timed by --tiles on 8192x4096 with the amax given, so
# one run shows whether the defaults are the best of their neighbours
# (the default (512, 16) w4 v4 is timed by the main rows "... columnwise, amax given")
QUICK_COLUMNWISE_TILES = [((512, 16), 4, 4), ((1024, 16), 8, 4), ((256, 32), 4, 2), ((512, 32), 8, 2),
                          ((128, 64), 4, 1), ((64, 64), 4, 0)]
QUICK_RHT_TILES = [((512, 16), 4, 4), ((1024, 16), 8, 4), ((256, 32), 4, 2), ((64, 64), 4, 0)]
QUICK_ROWWISE_TILES = [((32, 128), 4, 0), ((16, 256), 4, 0), ((32, 256), 8, 0), ((64, 128), 8, 0), ((8, 512), 4, 0)]


def quick_tile_sweep(rows, copy_gbps, graph=False):
    """Tile shapes of the rowwise / columnwise / RHT+columnwise kernel on 8192x4096, amax given; with
    `graph`, timed in CUDA-graph replay (do_bench's host time hides differences of a few µs there)."""
    from fp4lab.kernels.nvfp4 import nvfp4_triton

    M, K = 8192, 4096
    n = M * K
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    xs = rotating_copies(x) if graph else [x]
    a = torch.tensor(5.0, device="cuda")
    for columnwise, rht, fake in ((False, False, False), (False, False, True), (True, False, False),
                                  (True, False, True), (True, True, False), (True, True, True)):
        nbytes = 2 * n + (2 * n if fake else n // 2 + n // 16)
        tiles = (QUICK_RHT_TILES if rht else QUICK_COLUMNWISE_TILES) if columnwise else QUICK_ROWWISE_TILES
        for tile, warps, vec in tiles:
            kind = f"{'rht+' if rht else ''}{'columnwise' if columnwise else 'rowwise'}"
            name = f"{'fake' if fake else 'quantize'} {kind}, amax given, tile {tile[0]}x{tile[1]} w{warps} v{vec}"

            def run(t, tile=tile, warps=warps, vec=vec, columnwise=columnwise, rht=rht, fake=fake):
                return nvfp4_triton(t, global_amax=a, columnwise=columnwise, rht=rht, fake=fake, tile=tile,
                                    num_warps=warps, vec_r=vec)

            try:
                us = graph_bench(run, xs) if graph else bench(lambda: run(x), reps=100)
            except Exception as err:  # noqa: BLE001 - a tile that fails to compile is reported, not fatal
                print(f"{name}: failed {err!r}"[:300])
                continue
            gbps = nbytes / (us * 1e-6) / 1e9
            rows.append(dict(shape=[M, K], case=name, **{"us_graph" if graph else "us": round(us, 2)}, bytes=nbytes,
                             gbps=round(gbps, 1), pct_copy=round(100 * gbps / copy_gbps, 1), sweep=True))
            print(f"{M}x{K:<6} {name:60s} {us:9.2f} us {gbps:8.0f} GB/s {100 * gbps / copy_gbps:5.1f}% of copy")


def baselines():
    """torch.compile'd references: torchao nvfp4_quantize (if importable) and fp4lab's fake-quantize.

    dynamic=False: each shape gets its own static compile. By default the second shape recompiles with
    symbolic sizes, and those kernels were about 4x slower (H100, 2026-11-23: torchao 8192x4096 646.5 us
    after 8192x8192; formats fake 8192x8192 1713.7 us after 8192x4096;
    results/quantize-h100-2026-11-23-s15-dynamic-baselines.json).
    """
    from fp4lab import formats

    out = {}
    try:
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

        def torchao_q(x):
            return nvfp4_quantize(x, 16, per_tensor_amax_to_scale(x.abs().amax()))

        out["torchao nvfp4_quantize (compiled)"] = torch.compile(torchao_q, dynamic=False)
    except Exception as err:  # noqa: BLE001 - report why the baseline is missing, keep benchmarking
        print(f"torchao baseline unavailable: {err!r}", file=sys.stderr)

    def fake_ref(x):
        return formats.fake_quantize(x, "nvfp4", nonfinite="propagate")

    h = formats.rht_matrix("cuda", torch.float32)

    def fake_rht_ref(x):
        # the RHT as an fp32 matmul (formats.random_hadamard_16 uses float64, which would be unfair)
        t = (x.T.float().unflatten(-1, (-1, 16)) @ h).flatten(-2).to(torch.bfloat16)
        return formats.fake_quantize(t, "nvfp4", nonfinite="propagate")

    out["fp4lab.formats fake-quantize (compiled)"] = torch.compile(fake_ref, dynamic=False)
    out["fp4lab.formats rht+columnwise fake-quantize (compiled)"] = torch.compile(fake_rht_ref, dynamic=False)
    return out


def sweep() -> int:
    from fp4lab.kernels.nvfp4 import nvfp4_triton

    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    a = torch.tensor(5.0, device="cuda")
    for kw in (dict(fake=True), dict(fake=True, columnwise=True), dict(), dict(columnwise=True),
               dict(fake=True, columnwise=True, rht=True)):
        for tile in ((32, 128), (64, 128), (64, 64), (128, 64), (128, 32)):
            for warps in (4, 8):
                try:
                    us = bench(lambda: nvfp4_triton(x, global_amax=a, tile=tile, num_warps=warps, **kw))
                except Exception as err:  # noqa: BLE001
                    print(kw, tile, warps, "failed", repr(err)[:200])
                    continue
                print(f"{str(kw):55s} tile {tile} warps {warps}: {us:8.2f} us (amax given)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    p.add_argument("--shapes", default=None, help="e.g. 8192x4096,4096x4096")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--sweep", action="store_true", help="time tile shapes / warps of the NVFP4 kernel and exit")
    p.add_argument("--quick", action="store_true",
                   help="8192x4096 and 8192x8192 only, the SR variants QuantLinear runs, no compiled baselines")
    p.add_argument("--tiles", action="store_true",
                   help="also time a few tiles of each kernel layout on 8192x4096, amax given (about 40 s more; "
                        "in CUDA-graph replay with --graph)")
    p.add_argument("--graph", action="store_true",
                   help="also time every case in CUDA-graph replay (GPU time without Python launch overhead)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/quantize.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from fp4lab import kernels as K4

    if args.sweep:
        return sweep()
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.quick:
        shapes = shapes if args.shapes else QUICK_SHAPES
        args.no_baselines = True
    reps = 100 if args.quick else 200
    dev = torch.cuda.get_device_name()
    copy_gbps = copy_bandwidth()
    print(f"{dev}: copy bandwidth {copy_gbps:.0f} GB/s (read+write)")
    result = dict(
        benchmark="quantize", device=dev, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        copy_gbps=round(copy_gbps, 1), timing="us: triton.testing.do_bench median (L2 flushed between calls; includes Python launch "
               "overhead); us_graph (--graph): median per call in CUDA-graph replay over input copies > L2; bf16 inputs",
        command="PYTHONPATH=. python3 benchmarks/quantize.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        rows=[],
    )
    rows = result["rows"]

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)

    for M, Kd in shapes:
        x = torch.randn(M, Kd, device="cuda", dtype=torch.bfloat16)
        _AMAX[0] = K4.amax(x)
        q = K4.quantize_nvfp4(x)
        if args.graph:  # copies past L2 for the graph timing (each call reads the next one)
            xs = rotating_copies(x)
            qs = [q] + [K4.quantize_nvfp4(c) for c in xs[1:]]
        for name, fn, nbytes in cases(M, Kd):
            if args.quick and name not in QUICK_CASES:
                continue
            f = (lambda q=q: K4.dequantize_nvfp4(q)) if fn is None else (lambda fn=fn: fn(x))
            us = bench(f, reps)
            gbps = nbytes / (us * 1e-6) / 1e9
            row = dict(shape=[M, Kd], case=name, us=round(us, 2), bytes=nbytes, gbps=round(gbps, 1),
                       pct_copy=round(100 * gbps / copy_gbps, 1),
                       floor_us=round(nbytes / (copy_gbps * 1e9) * 1e6, 2))
            if args.graph:
                if fn is None:
                    us_g = graph_bench(lambda q: K4.dequantize_nvfp4(q), qs)
                else:
                    us_g = graph_bench(fn, xs)
                row.update(us_graph=round(us_g, 2), pct_copy_graph=round(100 * nbytes / (us_g * 1e-6) / 1e9 / copy_gbps, 1))
            rows.append(row)
            g_txt = f"  graph {row['us_graph']:8.2f} us {row['pct_copy_graph']:5.1f}%" if args.graph else ""
            print(f"{M}x{Kd:<6} {name:34s} {us:9.2f} us {gbps:8.0f} GB/s {100 * gbps / copy_gbps:5.1f}% of copy{g_txt}")
        save()
        del x, q
        xs = qs = None
        torch.cuda.empty_cache()
    if args.tiles:
        quick_tile_sweep(rows, copy_gbps, graph=args.graph)
        save()
    # compiled baselines last (each compile takes tens of seconds), on the shapes of the targets
    base = {} if args.no_baselines else baselines()
    for name, fn in base.items():
        for M, Kd in BASELINE_SHAPES.get(name, []):
            if (M, Kd) not in shapes:
                continue
            x = torch.randn(M, Kd, device="cuda", dtype=torch.bfloat16)
            try:
                us = bench(lambda fn=fn: fn(x), reps=100)
            except Exception as err:  # noqa: BLE001 - report and go on
                print(f"{name} failed: {err!r}", file=sys.stderr)
                continue
            rows.append(dict(shape=[M, Kd], case=name, us=round(us, 2)))
            print(f"{M}x{Kd:<6} {name:34s} {us:9.2f} us")
            save()
    if args.out:
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
