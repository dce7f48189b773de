"""When the Triton kernels can run: on a CUDA device, or on CPU tensors under TRITON_INTERPRET=1."""
from __future__ import annotations

import os

import torch

try:  # triton is a hard dependency, but keep import errors readable on odd machines
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAS_TRITON = True
    TRITON_IMPORT_ERROR = None
except Exception as e:  # pragma: no cover
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = repr(e)

# programmatic dependent launch (Hopper+, Triton >= 3.4): the attention's pre-pass / attention pair and the merger's
# passes (None where this Triton lacks it)
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except Exception:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None


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


_LAUNCHES: dict = {}  # fast_launch: specialization key -> the compiled kernel Triton's JIT produced for it


def _spec(a):
    """What Triton's JIT specializes an argument on, or finer: dtype and 16-byte alignment of tensors,
    divisibility by 16 / equality to 1 / width of ints, a TMA descriptor's dtype, block, layout and the
    alignment of its base, shape and strides."""
    if isinstance(a, bool):
        return ("b", a)
    if isinstance(a, int):
        return ("i", a % 16 == 0, a == 1, -2 ** 31 <= a < 2 ** 31)
    if isinstance(a, float):
        return ("f",)
    if isinstance(a, torch.Tensor):
        return ("t", a.dtype, a.device, a.data_ptr() % 16 == 0)
    if type(a).__name__ == "TensorDescriptor":
        return ("d", a.base.dtype, tuple(a.block_shape), getattr(a, "layout", None), a.base.data_ptr() % 16 == 0,
                tuple(int(s) % 16 == 0 for s in a.shape), tuple(int(s) % 16 == 0 for s in a.strides))
    raise TypeError(type(a).__name__)


def prepared_launch(fn, grid, args: tuple, consts: dict, **opts):
    """fn[grid](*args, **consts, **opts) as a function of no arguments, with the host work that does not
    launch done now: `args` are the kernel's runtime parameters and `consts` its constexpr parameters, both
    in signature order (constexprs last). The first launch of a specialization goes through Triton's JIT;
    its compiled kernel is then launched directly (CompiledKernel[grid]), which skips the JIT's
    per-argument specialization and cache lookup (~20-40 us of host time per launch on the GPU machine).
    For a launch that must follow a short one (the attention behind its ~21 us RoPE pre-pass) before the
    GPU runs dry: prepare it, launch the short one, then call it."""
    try:
        key = (fn, tuple(_spec(a) for a in args), tuple(consts.items()), tuple(sorted(opts.items())),
               torch.cuda.current_device() if torch.cuda.is_available() else -1)
        k = _LAUNCHES.get(key)
    except TypeError:
        key = k = None
    if k is not None:
        runner = k[tuple(grid) + (1,) * (3 - len(grid))]  # (the compiled kernel wants 3 grid dims)
        vals = (*args, *consts.values())
        return lambda: runner(*vals)

    def first():
        k = fn[grid](*args, **consts, **opts)
        names = [p.name for p in getattr(fn, "params", [])]
        if (key is not None and k is not None and not interpreter_on() and callable(getattr(k, "__getitem__", None))
                and names == names[:len(args)] + list(consts) and len(names) == len(args) + len(consts)):
            if len(_LAUNCHES) >= 256:
                _LAUNCHES.clear()
            _LAUNCHES[key] = k
    return first


def fast_launch(fn, grid, args: tuple, consts: dict, **opts):
    """prepared_launch(...) launched at once."""
    prepared_launch(fn, grid, args, consts, **opts)()
