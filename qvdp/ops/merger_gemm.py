"""The patch merger's fc1 + epilogue as one CUTLASS Hopper kernel (`csrc/merger_gemm.cu`).

    fc1_gelu(x, w, rstd=, negm=, s=, c=)  ->  GELU(rstd[m] * (x @ w.T) + negm[m] * s[n] + c[n])

The library is a plain shared object (no torch ABI), built on request: `QVDP_BUILD_CUTLASS=1 python setup.py
build_ext --inplace` or `python scripts/build_merger_gemm.py`, with CUTLASS headers (`pip install
nvidia-cutlass`, or QVDP_CUTLASS_DIR=<cutlass checkout>) and an nvcc that targets sm_90a. It is called
through ctypes on torch's current stream. bf16 only, Hopper (sm_90) only. `available()` says
whether it can run here; `fc1_gelu` raises before any launch when it cannot.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional

import torch

from ._cutlass_lib import CutlassLib

_LIB_NAME = "_merger_gemm.so"
# Kernel configurations compiled into the library (csrc/merger_gemm.cu, QVDP_MERGER_VARIANT)
VARIANTS = {
    0: "cooperative 128x256x64, cluster 2x1",
    1: "cooperative 128x256x64, cluster 1x2",
    2: "ping-pong 128x128x64, cluster 2x1",
    3: "cooperative 256x128x64, cluster 1x2",
    5: "ping-pong 64x256x64, cluster 1x2",
    6: "cooperative 128x256x64, no cluster",
    7: "cooperative 128x256x64, cluster 1x2, stream-K scheduler (heuristic decomposition)",
    12: "ping-pong 128x128x64, cluster 1x2",
    13: "ping-pong 128x192x64, cluster 1x2",
    43: "ping-pong 128x160x64, cluster 2x1",
    72: "swapped (the GEMM's M = features, N = tokens): cooperative 128x160x64, cluster 2x1",
    73: "swapped (the GEMM's M = features, N = tokens): ping-pong 128x160x64, cluster 2x1",
}
# diagnostics only (not the merger's epilogue): variant 1's kernel storing D = acc
DIAG_VARIANTS = {4: "cooperative 128x256x64, cluster 1x2, D = acc (no epilogue work)",
                 11: "ping-pong 128x128x64, cluster 1x2, D = acc (no epilogue work)"}
# the same kernels without the activation: D = x @ w.T + c[n] (the merger's fc2), for `linear`
LINEAR_VARIANTS = {
    14: "ping-pong 128x128x64, cluster 1x2",
    15: "ping-pong 128x128x64, cluster 2x1",
    19: "ping-pong 128x192x64, cluster 1x2",
    21: "cooperative 128x256x64, cluster 1x2, stream-K forced",
    22: "cooperative 256x128x64, cluster 1x2, stream-K forced",
    45: "cooperative 128x160x64, cluster 2x1",
    70: "swapped (the GEMM's M = features, N = tokens): cooperative 128x224x64, cluster 2x1",
}
# The swapped configurations (csrc/merger_gemm.cu, Swap): the kernel computes Y^T = W @ X^T and stores it
# column-major (Y [M, N] row-major as the others), so the tokens are the GEMM's N and quantise the tiles the other way
# round (s30a, one H200, M = 3520 tokens: fc2 N = 2048 by variant 70's 16 x 16 tiles of 128x224 in 87.8 us against
# cuBLAS's 94.7 (224 tiles of 256x128 = 1.70 rounds on 132 SMs); fc1 + GELU N = K = 4608 by variant 73, 36 x 22
# tiles of 128x160 = 6.0 rounds, 201.9 us against v43's 232.2 (812 tiles = 6.15 rounds) and cuBLAS's mm 189.2 without
# the bias and the GELU). Their epilogue takes c only: rstd, negm and s must be None.
BIAS_ONLY = frozenset({70, 72, 73})
# (numbers 8-10, 16-18 and 20 were configurations measured in session 21 and dropped: never the fastest; 23, fc1
# with stream-K forced, in session 22; 24-27, cuBLAS's fc1 tile 128x160x64 with cluster 2x1, in session 24: 40-45%
# behind cuBLAS, but built then from 64x32x16 wgmma instructions (CuTe's extended wgmma shapes were off; 40+ have
# them on); in session 26, 40-42, 44 (cooperative 128x160 / 128x144), 46-49 (128x64 / 128x128 epilogue sub-tiles)
# and 54-56 (ping-pong 64x256, 128x176): level with or 5-30% behind variant 0, see benchmarks/NOTES.md)
DEFAULT_VARIANT = 1
# fc1 + GELU with the per-patch norm folded into the mainloop (csrc/qvdp_fold_mainloop.h; launch_fold), built as its
# own library (qvdp/_merger_fold.so)
FOLD_VARIANTS = {30: "cooperative 128x256x64, cluster 2x1, per-patch norm folded (the accumulator rescaled per row "
                     "between the patch chunks)"}


def selected_variant(variant: Optional[int] = None) -> int:
    """The configuration fc1_gelu runs: `variant`, else QVDP_MERGER_GEMM_VARIANT, else DEFAULT_VARIANT."""
    return int(variant if variant is not None else os.environ.get("QVDP_MERGER_GEMM_VARIANT", DEFAULT_VARIANT))


# Programmatic dependent launch: every kernel of these libraries waits for the kernel before it on the stream
# before touching global memory (CUTLASS_ENABLE_GDC_FOR_SM90), so a launch may overlap that kernel's tail (its
# launch, barrier set-up and TMA descriptor prefetch). Every launch of the merger follows another kernel of the
# merger (the norm / statistics pass, or fc1), so it is on by default; QVDP_CUTLASS_PDL=0 (or PDL = False) turns
# it off. Launches with a workspace (stream-K) never use it.
PDL = os.environ.get("QVDP_CUTLASS_PDL", "1") != "0"

_P, _I = ctypes.c_void_p, ctypes.c_int
# the C interface (csrc/merger_gemm.cu): qvdp_merger_abi returns 2 since the launches take pdl; a library built
# before that lacks it and is reported as not loadable
_ABI = {"qvdp_merger_abi": (_I, [])}
_LIB = CutlassLib(_LIB_NAME, "QVDP_MERGER_GEMM_LIB", "the CUTLASS merger kernel",
                  {**_ABI, "qvdp_fc1_gelu": (_I, [_P] * 3 + [_I] * 3 + [_P] * 5 + [_I] * 4 + [_P]),
                   "qvdp_fc1_gelu_workspace": (ctypes.c_size_t, [_I] * 6)},
                  (*VARIANTS, *DIAG_VARIANTS, *LINEAR_VARIANTS))


unavailable_reason = _LIB.unavailable_reason  # None when fc1_gelu can run on a device (default: current)
available = _LIB.available
_FOLD_LIB = CutlassLib("_merger_fold.so", "QVDP_MERGER_FOLD_LIB", "the CUTLASS folded-norm fc1 kernel",
                       {**_ABI, "qvdp_fc1_fold": (_I, [_P] * 3 + [_I] * 3 + [_P] * 7 + [_I] + [_P] + [_I] * 4 + [_P]),
                        "qvdp_fc1_gelu_workspace": (ctypes.c_size_t, [_I] * 6)},
                       FOLD_VARIANTS)
fold_unavailable_reason = _FOLD_LIB.unavailable_reason  # None when launch_fold can run on a device
fold_available = _FOLD_LIB.available


def _vec(name, t, n, device):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.shape != (n,) or t.device != device \
            or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous float32 tensor of shape [{n}] on {device}, got "
                         f"{(t.dtype, tuple(t.shape), str(t.device)) if isinstance(t, torch.Tensor) else type(t)}")
    return t


def fc1_gelu(x: torch.Tensor, w: torch.Tensor, *, rstd=None, negm=None, s=None, c=None, out=None,
             variant: Optional[int] = None, swizzle: Optional[int] = None, raster: Optional[int] = None
             ) -> torch.Tensor:
    """GELU(rstd[m] * (x @ w.T)[m, n] + negm[m] * s[n] + c[n]) in one kernel; x [M, K], w [N, K] bf16.
    variant: a key of VARIANTS (default DEFAULT_VARIANT or QVDP_MERGER_GEMM_VARIANT), or of DIAG_VARIANTS (those in
    BIAS_ONLY take c only: rstd / negm / s are a ValueError); swizzle (1, 2, 4, 8) and raster (0 heuristic, 1 along
    M, 2 along N; for BIAS_ONLY the kernel's own M / N, i.e. the features / the tokens): the persistent tile order."""
    v = selected_variant(variant)
    if v not in VARIANTS and v not in DIAG_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {v}")
    if v in BIAS_ONLY and (rstd is not None or negm is not None or s is not None):
        raise ValueError(f"variant {v} ({VARIANTS[v]}) takes the bias c only: rstd, negm and s must be None")
    return _run(x, w, rstd, negm, s, c, out, v, swizzle, raster)


def linear(x: torch.Tensor, w: torch.Tensor, c: Optional[torch.Tensor] = None, *, out=None, variant: int = 14,
           swizzle: Optional[int] = None, raster: Optional[int] = None) -> torch.Tensor:
    """x @ w.T + c[n] in one kernel (no activation; c fp32 [N] or None); x [M, K], w [N, K] bf16.
    variant: a key of LINEAR_VARIANTS."""
    if variant not in LINEAR_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(LINEAR_VARIANTS)}, got {variant}")
    return _run(x, w, None, None, None, c, out, variant, swizzle, raster)


def _run(x, w, rstd, negm, s, c, out, v, swizzle, raster):
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError("x and w must be tensors")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x must be [M, K] and w [N, K], got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype != torch.bfloat16 or w.dtype != torch.bfloat16:
        raise ValueError(f"x and w must be bfloat16, got {x.dtype} and {w.dtype}")
    if not x.is_cuda or w.device != x.device:
        raise ValueError(f"x and w must be on one CUDA device, got {x.device} and {w.device}")
    if not x.is_contiguous() or not w.is_contiguous():
        raise ValueError("x and w must be contiguous (row-major)")
    M, K = x.shape
    N = w.shape[0]
    if K % 8 or N % 8:
        raise ValueError(f"K ({K}) and N ({N}) must be multiples of 8 (16-byte rows for TMA)")
    rstd = _vec("rstd", rstd, M, x.device)
    negm = _vec("negm", negm, M, x.device)
    s = _vec("s", s, N, x.device)
    c = _vec("c", c, N, x.device)
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    elif out.shape != (M, N) or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor [{M}, {N}] on {x.device}")
    sw = 1 if swizzle is None else int(swizzle)
    ra = 0 if raster is None else int(raster)
    if sw not in (1, 2, 4, 8) or ra not in (0, 1, 2):
        raise ValueError(f"swizzle must be 1, 2, 4 or 8 and raster 0, 1 or 2, got {sw} and {ra}")
    why = unavailable_reason(x.device)
    if why:
        raise RuntimeError(f"fc1_gelu cannot run: {why}")
    return launch(x, w, rstd, negm, s, c, out, v, sw, ra)


_PLANS: dict = {}  # (variant, M, N, K, device index, swizzle, raster) -> (C function, SM count, workspace or None)


def _sizes_out(x, w, out):
    """(M, N, K, out) of a launch on x [M, K] and w [N, K]: out allocated where None."""
    M, K = x.shape
    N = w.shape[0]
    return M, N, K, (out if out is not None else torch.empty((M, N), dtype=x.dtype, device=x.device))


def _plan(lib, plans, name, variant, x, dev, M, N, K, swizzle, raster):
    """(the C function `name`, SM count, workspace or None) of a launch of `lib`, kept in `plans` per (variant,
    shape, device, tile order); the plan keeps the workspace alive."""
    key = (variant, M, N, K, dev, swizzle, raster)
    plan = plans.get(key)
    if plan is None:
        workspace = lib.function("qvdp_fc1_gelu_workspace", variant)
        sms, ws, _ = lib.launch_context(x.device, key[:4] + key[5:],
                                        lambda sms: workspace(M, N, K, sms, swizzle, raster))
        if len(plans) > 256:
            plans.clear()
        plan = plans[key] = (lib.function(name, variant), sms, ws)
    return plan


def _launch(lib, plans, name, variant, x, w, out, vectors, ints, swizzle, raster):
    """One call of the C function `name` of `lib`: (x, w, out, M, N, K, *vectors as pointers (None: null), *ints,
    workspace, SM count, swizzle, raster, PDL, stream); out allocated where None; nothing launched for an empty
    one."""
    M, N, K, out = _sizes_out(x, w, out)
    if M == 0 or N == 0:
        return out
    dev = x.get_device()
    fn, sms, ws = _plan(lib, plans, name, variant, x, dev, M, N, K, swizzle, raster)
    rc = fn(x.data_ptr(), w.data_ptr(), out.data_ptr(), M, N, K,
            *(t.data_ptr() if t is not None else None for t in vectors), *ints,
            ws.data_ptr() if ws is not None else None, sms, swizzle, raster, 1 if PDL else 0,
            torch._C._cuda_getCurrentRawStream(dev))
    if rc:
        raise RuntimeError(f"{name}_v{variant} failed (code {rc}: 1 unsupported shape, 2 initialise, 3 launch) for "
                           f"M={M} N={N} K={K}" + (f" {ints}" if ints else ""))
    return out


def launch(x, w, rstd, negm, s, c, out, variant, swizzle=1, raster=0):
    """The launch itself, without fc1_gelu's / linear's checks: for callers that have made sure that x [M, K]
    and w [N, K] are contiguous bf16 on one CUDA device where this library runs, that rstd / negm ([M]) and
    s / c ([N]) are contiguous fp32 there or None, and out a contiguous bf16 [M, N] there (None: allocated).
    Host work per call: one dict lookup, the output's allocation, the stream handle, the C call (whose
    kernel Params are kept for repeated calls, csrc/qvdp_cutlass_gemm.h)."""
    return _launch(_LIB, _PLANS, "qvdp_fc1_gelu", variant, x, w, out, (rstd, negm, s, c), (), swizzle, raster)


_FOLD_PLANS: dict = {}


def launch_fold(x, w, rstd, negm, s, c, c1, c2, s_chunks, chunk_k_tiles, out=None, variant=30, swizzle=1, raster=0):
    """fc1 + GELU with the per-patch norm folded (FOLD_VARIANTS; csrc/qvdp_fold_mainloop.h), unchecked like launch:
    x [M, K] the raw merged patches, w [N, K] the folded weight W1 * gamma (bf16, contiguous, one CUDA device);
    c1 / c2 [chunks - 1, M] and s_chunks [chunks - 1, N] fp32 contiguous, the rescale between the K / chunks wide
    patch chunks (K = 4 * 64 * chunk_k_tiles); rstd / negm [M] and s / c [N] the epilogue's (the last chunk's r,
    -mu * r, S, and b1 + W1 @ beta). chunk_k_tiles = 0 with c1 = c2 = s_chunks = None: the kernel without the
    rescale (launch's epilogue)."""
    return _launch(_FOLD_LIB, _FOLD_PLANS, "qvdp_fc1_fold", variant, x, w, out, (rstd, negm, s, c, c1, c2, s_chunks),
                   (chunk_k_tiles,), swizzle, raster)
