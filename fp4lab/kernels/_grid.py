"""Host-side grid arithmetic for the kernel wrappers.

`triton.cdiv` and `triton.next_power_of_2` are ConstexprFunction objects in Triton 3.x, which cost about
6 us per call from Python (measured on a dev CPU, Triton 3.9); a quantize wrapper called them five
times per launch, and the eager QuantLinear is bound by host time (benchmarks/README.md).
"""


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n, for n >= 1 (triton.next_power_of_2's value there)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1
