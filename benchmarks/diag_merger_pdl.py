"""Programmatic dependent launch (PDL) of the merger's CUTLASS kernels, on and off (diagnostics, one Hopper GPU).

The merger is a chain of two or three kernels (the norm / statistics pass, fc1 + GELU, fc2). Session 26's chain at
3520 merged rows had ~8 us between its kernels (event time minus the profiler's kernel times), ~2.5 us per
boundary next to a CUTLASS kernel against ~1.2 us between cuBLAS / aten kernels. With PDL (merger_gemm.PDL) a
CUTLASS kernel is launched as a programmatic dependent of the kernel before it: its launch, barrier set-up and TMA
descriptor prefetch overlap that kernel's tail, and its first global load waits for it (griddepcontrol.wait).

Every chain is timed with PDL off and on, in turn, round after round (samples of 10 calls behind the tuner's GPU
busy-wait, median of the rounds), and replayed from a CUDA graph (no host work); the profiler's kernel times give
the gaps (event time minus the kernels) without PDL only: a dependent kernel's time includes its wait.

    python benchmarks/diag_merger_pdl.py [--shapes pre:3520:1152:2048 ...] [--rounds 11]
"""
from __future__ import annotations

import argparse

import torch

from _common import graph_us, interleaved_ms, kernel_us
from bench_merger import cutlass_ready, shape_inputs

from qvdp.ops import merger_gemm as mg
from qvdp.ops import patch_merger as pm


def with_pdl(fn, pdl):
    def run():
        mg.PDL = pdl
        return fn()
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["pre:3520:1152:2048", "post:3520:1152:2048",
                                                     "pre:6400:1152:2048", "pre:14080:1024:2048"])
    ap.add_argument("--pairs", nargs="*", default=["0:cublas", "0:14", "43:45", "cublas:45"],
                    help="fc1:fc2 chains (a CUTLASS variant number or cublas)")
    ap.add_argument("--rounds", type=int, default=11)
    a = ap.parse_args()
    if not cutlass_ready():
        return
    name = lambda v: "cublas" if v == "cublas" else f"cutlass v{v}"
    pdl_before = mg.PDL
    for spec in a.shapes:
        post, M, H, O, (x, nw, nb, w1, b1, w2, b2, xn, h1) = shape_inputs(spec)
        args = (x, nw, nb, w1, b1, 2, post, "layernorm", 1e-6)
        fns = {"floor (addmm + addmm)": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t())}
        for pair in a.pairs:
            f1, f2 = (name(v) for v in pair.split(":"))
            if f1 == f2 == "cublas":
                continue
            chain = lambda f1=f1, f2=f2: pm._fc2_named(f2, pm._fc1_named(f1, args), w2, b2)
            for pdl in (False, True):
                fns[f"{f1} + {f2}, PDL {'on' if pdl else 'off'}"] = with_pdl(chain, pdl)
        # the reference: the floor's GEMMs with the GELU between them (the floor itself has none)
        ref = torch.addmm(b2, torch.nn.functional.gelu(torch.addmm(b1, xn, w1.t())), w2.t()).float()
        print(f"\n== {spec}", flush=True)
        for k, f in list(fns.items())[1:]:
            got = f().float()
            err = ((got - ref).norm() / ref.norm()).item()
            if not err < 2e-2:
                print(f"WRONG {k}: rel diff to the floor's GEMMs with the GELU {err:.1e}", flush=True)
        times = interleaved_ms(fns, a.rounds)
        base = times["floor (addmm + addmm)"]
        for k, f in fns.items():
            ks = kernel_us(f, n=10, width=1 << 20)  # whole names: CUTLASS kernels share their first ~1000 characters
            ksum = sum(ks.values())
            g = graph_us(f, inner=10, rounds=5, head_cycles=None)[0]
            print(f"{k:44s} {times[k] * 1e3:8.1f} us  {times[k] / base:6.3f}x floor   graph {g:8.1f} us   "
                  f"kernels {ksum:7.1f} us  gaps {times[k] * 1e3 - ksum:5.1f} us", flush=True)
    mg.PDL = pdl_before


if __name__ == "__main__":
    main()
