"""The merger's GEMMs with the problem transposed (diagnostics, one Hopper GPU): the GEMM's M = the features, N = the
tokens (csrc/merger_gemm.cu, Swap; diagnostics library variants 70-76, or the package's where built).

Why: a persistent data-parallel kernel runs whole rounds of tiles. At 3520 merged rows the token side quantises
badly for the tiles the row-major form can use (fc2 N = 2048: 224 tiles of 128x256 = 1.70 rounds on 132 SMs; fc1
N = 4608: 128x160 tiles 28 x 29 = 812 = 6.15 rounds), while with the tokens as the GEMM's N a 128x224 fc2 tile makes
16 x 16 = 256 tiles (1.94 rounds) and a 128x160 fc1 tile 36 x 22 = 792 (6.0 rounds).

Systems, every one in turn (median of --rounds samples of 10 calls behind the tuner's busy-wait): fc1 forms alone
(cuBLAS mm / addmm, the package's v43 / v12 and the swapped fc1 kernels), fc2 forms alone (addmm, v45, the swapped
fc2 kernels), and whole chains (the norm pass + an fc1 form + an fc2 form) against the floor (two addmm on the
normalised input). Every chain's output is first checked against the fp64 merger (output of each kernel poisoned).

    python benchmarks/diag_merger_swap.py [--lib qvdp/_merger_diag.so] [--fc1 72 73 76] [--fc2 70 71 74]
        [--shapes pre:3520:1152:2048 ...] [--rounds 15]
(without --lib: the package library's swapped configurations, merger_gemm.BIAS_ONLY)
"""
from __future__ import annotations

import argparse

import torch

from _common import interleaved_ms
from bench_merger import cutlass_ready, shape_inputs
from diag_merger_gemm import extra_library

from qvdp.ops import merger_gemm as mg
from qvdp.ops import patch_merger as pm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["pre:3520:1152:2048", "post:3520:1152:2048",
                                                    "pre:3520:1152:4096", "pre:3520:1024:2048",
                                                    "pre:6400:1152:2048", "pre:14080:1152:2048"])
    ap.add_argument("--lib", default=None, help="a diagnostics library holding --fc1 / --fc2 (else the package's)")
    ap.add_argument("--fc1", type=int, nargs="*", default=None,
                    help="swapped fc1 configurations (default: 72 73 76 with --lib, else the package's)")
    ap.add_argument("--fc2", type=int, nargs="*", default=None,
                    help="swapped fc2 configurations (default: 70 71 74 with --lib, else the package's)")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    if not cutlass_ready():
        raise SystemExit("needs the CUTLASS merger library")
    if a.fc1 is None:
        a.fc1 = [72, 73, 76] if a.lib else sorted(mg.BIAS_ONLY & set(mg.VARIANTS))
    if a.fc2 is None:
        a.fc2 = [70, 71, 74] if a.lib else sorted(mg.BIAS_ONLY & set(mg.LINEAR_VARIANTS))
    if a.lib:
        run = extra_library(a.lib, a.fc1 + a.fc2)
    else:
        run = lambda x, w, c, out, v, sw, ra: mg.launch(x, w, None, None, None, c, out, v, sw, ra)
    for spec in a.shapes:
        post, M, H, O, (x, nw, nb, w1, b1, w2, b2, xn, h1) = shape_inputs(spec)
        K = 4 * H
        b1f, b2f = b1.float(), b2.float()
        norm = lambda: pm._row_normed(x, nw, nb, 2, post, "layernorm", 1e-6)
        fc1 = {"mm+pass": lambda xn: pm.bias_gelu_(torch.mm(xn, w1.t()), b1),
               "v43": lambda xn: mg.launch(xn, w1, None, None, None, b1f, None, 43)}
        fc1.update({f"x{v}": (lambda xn, v=v: run(xn, w1, b1f, None, v, 1, 0)) for v in a.fc1})
        fc2 = {"addmm": lambda h: torch.addmm(b2, h, w2.t()),
               "v45": lambda h: mg.launch(h, w2, None, None, None, b2f, None, 45)}
        fc2.update({f"x{v}": (lambda h, v=v: run(h, w2, b2f, None, v, 1, 0)) for v in a.fc2})
        # correctness of every fc1 and fc2 form against fp64 (outputs poisoned; the swapped kernels write every
        # element of a poisoned buffer)
        ref1 = torch.nn.functional.gelu(xn.double() @ w1.double().t() + b1.double())
        print(f"\n== {spec}", flush=True)
        h_ref = None
        for k, f in fc1.items():
            if k.startswith("x"):
                o = torch.full((M, K), float("nan"), device="cuda", dtype=torch.bfloat16)
                h = run(xn, w1, b1f, o, int(k[1:]), 1, 0)
            else:
                h = f(xn)
            err = ((h.double() - ref1).norm() / ref1.norm()).item()
            print(f"  fc1 {k:10s} rel err vs fp64 {err:.2e}{'  WRONG' if not err < 1e-2 else ''}", flush=True)
            h_ref = h if k == "mm+pass" else h_ref
        ref2 = h_ref.double() @ w2.double().t() + b2.double()
        for k, f in fc2.items():
            if k.startswith("x"):
                o = torch.full((M, O), float("nan"), device="cuda", dtype=torch.bfloat16)
                z = run(h_ref, w2, b2f, o, int(k[1:]), 1, 0)
                again = run(h_ref, w2, b2f, torch.full_like(o, float("nan")), int(k[1:]), 1, 0)
                same = torch.equal(z, again)
            else:
                z, same = f(h_ref), True
            err = ((z.double() - ref2).norm() / ref2.norm()).item()
            print(f"  fc2 {k:10s} rel err vs fp64 {err:.2e}, repeat bit-identical {same}"
                  f"{'  WRONG' if not err < 1e-2 else ''}", flush=True)
        fns = {"floor (addmm + addmm)": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t())}
        fns.update({f"fc1 {k}": (lambda f=f: f(xn)) for k, f in fc1.items()})
        fns.update({f"fc2 {k}": (lambda f=f: f(h1)) for k, f in fc2.items()})
        pairs = [("mm+pass", "v45"), ("mm+pass", "addmm")] + [("mm+pass", f"x{v}") for v in a.fc2] + \
                [(f"x{v}", q) for v in a.fc1 for q in ["v45"] + [f"x{u}" for u in a.fc2]]
        for p, q in pairs:
            fns[f"chain {p} + {q}"] = lambda p=p, q=q: fc2[q](fc1[p](norm()))
        t = interleaved_ms(fns, rounds=a.rounds)
        fl = t["floor (addmm + addmm)"]
        for k in fns:
            print(f"  {k:40s} {t[k] * 1e3:8.1f} us  {t[k] / fl:6.3f}x floor", flush=True)


if __name__ == "__main__":
    main()
