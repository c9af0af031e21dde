"""Byte agreement of fp4lab.formats with torchao and compressed-tensors, and of the two peers with each other.

CPU only. 20 tensors of 512x1024 (normal values, per-row magnitudes spread by exp(1.5 * N(0,1))), bf16.
Counts mismatched E4M3 scale bytes and packed E2M1 bytes; blocks where torchao clamps its scale to 2^-6
(fp4lab keeps TE's smaller scales by design, docs/formats.md) are counted on their own.

    PYTHONPATH=. python benchmarks/peer_agreement.py --out benchmarks/results/peer-agreement-cpu-<date>.json
"""
import argparse
import datetime
import json
import platform

import torch

from fp4lab.formats import quantize_nvfp4
from tests.formats.oracles import ct_nvfp4, torchao_nvfp4


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(
        ["torchao_order_vs_torchao_scales", "torchao_order_vs_torchao_packed", "torchao_clamped_blocks",
         "ct_order_vs_ct_scales", "ct_order_vs_ct_packed", "torchao_vs_ct_scales", "torchao_vs_ct_packed"], 0)
    n_scales = n_packed = 0
    for _ in range(20):
        x = (torch.randn(512, 1024, generator=g) * torch.exp(torch.randn(512, 1, generator=g) * 1.5)).bfloat16()
        ao_s, ao_p = torchao_nvfp4(x)
        ct_s, ct_p, _ = ct_nvfp4(x.float())
        a = quantize_nvfp4(x, scale_order="torchao")
        c = quantize_nvfp4(x, scale_order="compressed-tensors")
        clamped = (ao_s == 0x08) & (a.scales.view(torch.uint8) < 0x08)
        same = ~clamped.repeat_interleave(8, -1)
        counts["torchao_clamped_blocks"] += int(clamped.sum())
        counts["torchao_order_vs_torchao_scales"] += int((a.scales.view(torch.uint8) != ao_s)[~clamped].sum())
        counts["torchao_order_vs_torchao_packed"] += int((a.codes != ao_p)[same].sum())
        counts["ct_order_vs_ct_scales"] += int((c.scales.view(torch.uint8) != ct_s).sum())
        counts["ct_order_vs_ct_packed"] += int((c.codes != ct_p).sum())
        counts["torchao_vs_ct_scales"] += int((ao_s != ct_s).sum())
        counts["torchao_vs_ct_packed"] += int((ao_p != ct_p).sum())
        n_scales += ao_s.numel()
        n_packed += ao_p.numel()
    import compressed_tensors
    import torchao

    result = dict(
        benchmark="peer_agreement", device=f"cpu ({platform.machine()})",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, torchao=torchao.__version__, compressed_tensors=compressed_tensors.__version__,
        command="PYTHONPATH=. python benchmarks/peer_agreement.py --out " + args.out,
        tensors=20, shape=[512, 1024], scale_bytes=n_scales, packed_bytes=n_packed, mismatches=counts,
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
