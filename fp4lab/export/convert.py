"""`fp4lab convert IN OUT --to modelopt|compressed-tensors`: read one dialect, write the other.

The tensors are reused unchanged except the NVFP4 global scales, which become their fp32 reciprocals
(ENCODE 2688/amax <-> DECODE amax/2688), exactly as compressed-tensors' converter and vLLM do.
"""
from __future__ import annotations

from pathlib import Path

from fp4lab.export.dialects import FORMATS, read_checkpoint, write_checkpoint
from fp4lab.export.scales import is_reciprocal_stable


def convert_checkpoint(in_dir: str | Path, out_dir: str | Path, to: str) -> Path:
    if to not in FORMATS:
        raise ValueError(f"--to must be one of {FORMATS}, got {to!r}")
    if Path(in_dir).resolve() == Path(out_dir).resolve():
        raise ValueError("convert: IN and OUT must be different directories")
    ckpt, fmt = read_checkpoint(in_dir)
    unstable = [m for m, w in ckpt.layers.items() if w.global_scale is not None
                and not is_reciprocal_stable(w.global_scale)]
    if unstable and to != fmt:
        import warnings

        warnings.warn(f"{len(unstable)} global scale(s) (e.g. {unstable[0]}) do not survive two fp32 reciprocals; "
                      f"converting back will not be byte-identical (checkpoints written by fp4lab always do)")
    return write_checkpoint(ckpt, out_dir, to, source_dir=in_dir)
