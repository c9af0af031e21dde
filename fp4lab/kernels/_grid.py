"""Host-side helpers of the kernel wrappers: grid arithmetic and the interpreter flag.

`triton.cdiv` and `triton.next_power_of_2` are ConstexprFunction objects in Triton 3.x, which cost about
6 us per call from Python (measured on a dev CPU, Triton 3.9); a quantize wrapper called them five
times per launch, and the eager QuantLinear is bound by host time (benchmarks/README.md).
"""
import os

# read once, as triton.jit reads it when the kernels are defined (an os.environ lookup per call cost
# several microseconds of host time in the hot path)
_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def interpreting() -> bool:
    return _INTERPRETING


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n, for n >= 1 (triton.next_power_of_2's value there)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1
