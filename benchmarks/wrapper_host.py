"""Host time of the quantize wrappers' own Python (argument checks, sizes, allocations), kernels stubbed.

The eager QuantLinear is bound by host time (benchmarks/README.md), and part of that is the
wrappers' Python around each launch. This measures that part alone, on any machine: kernel launches
are replaced by no-ops, so the number is what `fp4lab.kernels` adds on top of Triton's launch.
Minimum over 7 x 2000 calls, bf16 input 256x512. Compare two checkouts with PYTHONPATH (run it from
outside the repo, so the current folder does not shadow PYTHONPATH):

    cd /tmp && TRITON_INTERPRET=1 PYTHONPATH=/path/to/checkout python /path/to/benchmarks/wrapper_host.py
"""
import json
import sys
import time

import torch

import fp4lab.kernels.nvfp4 as N

A = sys.modules["fp4lab.kernels.amax"]  # the package re-exports the function amax under that name


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main() -> None:
    x = torch.randn(256, 512, dtype=torch.bfloat16)
    parts = torch.zeros(4, dtype=torch.int32)
    N._nvfp4_kernel = A._amax_pair_kernel = A._amax_flat_kernel = _NoLaunch()
    cases = {
        "fake rowwise (parts)": lambda: N.nvfp4_triton(x, fake=True, amax_parts=parts),
        "quantize rht+columnwise (parts)": lambda: N.nvfp4_triton(x, columnwise=True, rht=True, amax_parts=parts),
        "fake rowwise (own amax)": lambda: N.nvfp4_triton(x, fake=True),
        "amax_parts_nvfp4": lambda: N.amax_parts_nvfp4(x),
    }
    res = {"fp4lab": N.__file__}
    for name, fn in cases.items():
        for _ in range(200):
            fn()
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(2000):
                fn()
            best = min(best, (time.perf_counter() - t0) / 2000 * 1e6)
        res[name + " us"] = round(best, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
