"""When the Triton kernels can run: on a CUDA device, or on CPU tensors under TRITON_INTERPRET=1."""
from __future__ import annotations

import os

try:  # triton is a hard dependency, but keep import errors readable on odd machines
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAS_TRITON = True
    TRITON_IMPORT_ERROR = None
except Exception as e:  # pragma: no cover
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = repr(e)


# Every qvdp launch asks for FMA contraction explicitly (x * s - m as one FFMA in the softmax, the norms,
# the RoPE): Triton 3.9 takes it by default but warns that 3.10 will not; an explicit option keeps the
# measured code on every version and touches no other kernel of the process.
FP_FUSION = {"enable_fp_fusion": True}


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable(t) -> bool:
    """Can a Triton kernel take this tensor?"""
    if not HAS_TRITON:
        return False
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and interpreter_on()


def next_pow2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def split_head_dim(D: int) -> tuple:
    """Split head dim D into a power-of-two main chunk and a power-of-two tail (>= 16 each, tl.dot's
    minimum), so 72 -> (64, 16) and 80 -> (64, 16) instead of padding to 128."""
    if D <= 16:
        return 16, 0
    da = 1 << (D.bit_length() - 1)
    rem = D - da
    if rem == 0:
        return da, 0
    # tails up to 16 run as one 16-wide chunk (72, 80); wider tails as a 64-wide chunk: on an H100
    # with Triton 3.6 a 32-wide tail chunk (D=96) gave wrong results while 16 and 64 were exact.
    return da, 16 if rem <= 16 else max(64, next_pow2(rem))
