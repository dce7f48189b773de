"""Why the CUTLASS fc1 runs slower inside the merger than alone (diagnostics, one Hopper GPU).

Session 23's profiles had CUTLASS fc1 + GELU kernels 6-25 us slower in the merger's chain than the same kernel
timed back to back in diag_merger_gemm, while cuBLAS's fc1 kept its time. This times the pieces of one shape
in several contexts, each sample behind the tuner's GPU busy-wait (GPU time), and lists every sequence's kernels
(torch.profiler, us per call):

  fc1 alone          the fc1 kernel back to back (CUTLASS with the bias only / with the folded norm's vectors;
                     cuBLAS addmm)
  stats + fc1        the post-shuffle fold's statistics pass, then fc1 (the data it just read are in L2)
  fc1 + fc2          fc1, then cuBLAS fc2 (fc2's operands evict fc1's between calls)
  merger             stats or norm + fc1 + fc2, as the "tuned" path runs it; and the floor
  raster / swizzle   the merger with the CUTLASS fc1's tile order changed

    python benchmarks/diag_merger_context.py [--shapes post:3520:1152:2048 pre:6400:1152:2048] [--variants 0 1 12]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from _common import event_ms, kernel_us
from bench_merger import cutlass_ready, shape_inputs

from qvdp.ops import merger_gemm as mg
from qvdp.ops.patch_merger import _folded_weights, row_norm, row_stats


def med_ms(fn, n=15):
    for _ in range(3):
        fn()
    return statistics.median(event_ms(fn, inner=10, head_cycles=None) for _ in range(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["post:3520:1152:2048", "pre:3520:1152:2048",
                                                     "pre:6400:1152:2048"])
    ap.add_argument("--variants", type=int, nargs="+", default=[0, 1, 12])
    a = ap.parse_args()
    if not cutlass_ready():
        return
    for spec in a.shapes:
        post, M, H, O, (x, nw, nb, w1, b1, w2, b2, xn, h1) = shape_inputs(spec)
        K = 4 * H
        xm = x.view(M, K)
        b1f = b1.float()
        h = torch.empty(M, K, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(M, O, device="cuda", dtype=torch.bfloat16)
        if post:  # the fold: W1 * gamma, its row sums S, c = b1 + W1 beta; rstd / -mean * rstd per merged row
            wg, s, c = _folded_weights(nw, nb, w1, b1, 4, True, False)
            s = s[0]  # [1, N] -> [N]
            mean = torch.empty(M, device="cuda")
            rstd = torch.empty(M, device="cuda")
            row_stats(xm, mean, rstd, K, 1e-6, False, negm=True)
            negm = mean
            first = lambda: row_stats(xm, mean, rstd, K, 1e-6, False, negm=True)
            fc1 = {v: (lambda v=v: mg.launch(xm, wg, rstd, negm, s, c, h, v)) for v in a.variants}
            fc1_plain = {v: (lambda v=v: mg.launch(xm, wg, None, None, None, c, h, v)) for v in a.variants}
        else:  # the pre-norm path: the norm pass writes the normalised rows, fc1 reads them
            xnn = row_norm(x, nw, nb, H, 1e-6, False).view(M, K)
            first = lambda: row_norm(x, nw, nb, H, 1e-6, False)
            fc1 = {v: (lambda v=v: mg.launch(xnn, w1, None, None, None, b1f, h, v)) for v in a.variants}
            fc1_plain = {}
        fc2 = lambda: torch.addmm(b2, h, w2.t(), out=out)
        seqs = {"floor (addmm + addmm)": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t(), out=out),
                "cuBLAS fc1 addmm alone": lambda: torch.addmm(b1, xn, w1.t(), out=h1),
                "cuBLAS fc2 addmm alone": fc2,
                "first pass alone (stats or norm)": first,
                "cublas path (pass + addmm + gelu_ + addmm)":
                    lambda: (first(), torch.ops.aten.gelu_(torch.addmm(b1, xn, w1.t(), out=h1)),
                             torch.addmm(b2, h1, w2.t(), out=out))}
        for v in a.variants:
            seqs[f"v{v} alone"] = fc1[v]
            if v in fc1_plain:
                seqs[f"v{v} alone, bias only (no fold vectors)"] = fc1_plain[v]
            seqs[f"pass + v{v}"] = lambda v=v: (first(), fc1[v]())
            seqs[f"v{v} + fc2"] = lambda v=v: (fc1[v](), fc2())
            seqs[f"pass + v{v} + fc2 (merger)"] = lambda v=v: (first(), fc1[v](), fc2())
        v0 = a.variants[0]
        for sw, ra in ((1, 1), (1, 2), (2, 1), (2, 2), (4, 0)):
            xa = xm if post else xnn
            wa = wg if post else w1
            vecs = (rstd, negm, s, c) if post else (None, None, None, b1f)
            seqs[f"pass + v{v0} swizzle {sw} raster {ra} + fc2"] = (
                lambda sw=sw, ra=ra: (first(), mg.launch(xa, wa, *vecs, h, v0, sw, ra), fc2()))
        print(f"\n== {spec}", flush=True)
        for name, fn in seqs.items():
            t = med_ms(fn)
            ks = kernel_us(fn, n=10, width=60)
            parts = "; ".join(f"{k.split('<')[0][:40]} {us:.1f}" for k, us in sorted(ks.items(), key=lambda kv: -kv[1]))
            print(f"{name:48s} {t * 1e3:8.1f} us   kernels: {parts}", flush=True)


if __name__ == "__main__":
    main()
