"""The merger chain with its Triton first pass asking for the largest shared-memory carveout (diagnostics, one
Hopper GPU).

Session 27 (s27d, s27e, long interleaved runs): timed as eager calls, the merger's chains at 3520 merged rows took
17-28 us per call more than replayed from a CUDA graph, against ~12 us for the floor's two cuBLAS GEMMs (a short run
on a freshly started machine: 1-3 us). The chain's first kernel (the
Triton norm / statistics pass) uses a few KB of shared memory and runs with the driver's default L1 / shared split,
the GEMMs after it with the largest shared carveout: if an SM must switch its split between them, that costs time
at each boundary. Here the first pass's kernel is given the preferred carveout of 100% shared
(CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT) or the default, in turn, round after round; eager (samples of
10 calls behind the tuner's busy-wait) and graph-replayed.

    python benchmarks/diag_merger_carveout.py [--rounds 11]
"""
from __future__ import annotations

import argparse
import ctypes

import torch
import triton

from _common import graph_us, interleaved_ms
from bench_merger import cutlass_ready, shape_inputs

from qvdp.ops import patch_merger as pm
from qvdp.ops._triton_utils import FP_FUSION

_CU = ctypes.CDLL("libcuda.so.1")
_CARVEOUT = 9  # CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT


def set_carveout(fn_handle, percent):
    rc = _CU.cuFuncSetAttribute(ctypes.c_void_p(fn_handle), _CARVEOUT, ctypes.c_int(percent))
    if rc:
        raise RuntimeError(f"cuFuncSetAttribute: {rc}")


def first_pass_kernel(x, nw, nb, H, M, post):
    """The Triton kernel the merger's first pass launches for this shape (launched once here to get it)."""
    if post:
        K = 4 * H
        cw, nch, rows, warps = pm.chunk_tiles(K, stats=True)
        mean = torch.empty(M, device="cuda")
        rstd = torch.empty(M, device="cuda")
        return pm._row_stats_chunks[(triton.cdiv(M, rows),)](x, mean, rstd, M, K, 1e-6, RMS=False, ROWS=rows, CW=cw,
                                                             NCH=nch, NEGM=True, num_warps=warps, **FP_FUSION)
    n = x.shape[0]
    cw, nch, rows, warps = pm.chunk_tiles(H)
    y = torch.empty_like(x)
    return pm._row_norm_chunks[(triton.cdiv(n, rows),)](x, nw, nb, y, n, H, 1e-6, RMS=False, HAS_B=True, ROWS=rows,
                                                        CW=cw, NCH=nch, num_warps=warps, **FP_FUSION)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["pre:3520:1152:2048", "post:3520:1152:2048"])
    ap.add_argument("--rounds", type=int, default=11)
    a = ap.parse_args()
    if not cutlass_ready():
        return
    for spec in a.shapes:
        post, M, H, O, (x, nw, nb, w1, b1, w2, b2, xn, h1) = shape_inputs(spec)
        args = (x, nw, nb, w1, b1, 2, post, "layernorm", 1e-6)
        ck = first_pass_kernel(x.view(M, 4 * H) if post else x, nw, nb, H, M, post)
        fn = ck.function
        chains = {"cutlass v0 + cublas": lambda: pm._fc2_named("cublas", pm._fc1_named("cutlass v0", args), w2, b2),
                  "cutlass v12 + cutlass v45": lambda: pm._fc2_named("cutlass v45", pm._fc1_named("cutlass v12", args),
                                                                     w2, b2),
                  "cublas + cutlass v45": lambda: pm._fc2_named("cutlass v45", pm._fc1_named("cublas", args), w2, b2)}
        fns = {"floor (addmm + addmm)": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t())}
        for k, f in chains.items():
            for pc in (-1, 100):
                def run(f=f, pc=pc):
                    set_carveout(fn, pc)
                    return f()
                fns[f"{k}, first pass carveout {'default' if pc < 0 else '100% shared'}"] = run
        times = interleaved_ms(fns, a.rounds)
        print(f"\n== {spec}", flush=True)
        base = times["floor (addmm + addmm)"]
        for k, f in fns.items():
            g = graph_us(f, inner=10, rounds=5, head_cycles=None)[0]
            print(f"{k:60s} {times[k] * 1e3:8.1f} us  {times[k] / base:6.3f}x floor   graph {g:8.1f} us  "
                  f"eager - graph {times[k] * 1e3 - g:5.1f} us", flush=True)
        set_carveout(fn, -1)


if __name__ == "__main__":
    main()
