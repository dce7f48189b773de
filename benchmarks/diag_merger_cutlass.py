"""CUTLASS merger fc1 (csrc/merger_gemm.cu): every compiled configuration on the bench_merger shapes (the
post-shuffle norm folded, per-patch norms normalised first; session 10's s10b run also timed the post-shuffle
norm normalised first: 1-4% slower on most shapes), next to the floor (two cuBLAS addmm on a pre-normalised input) and eager; systems timed in turn.

    python benchmarks/diag_merger_cutlass.py [--quick] [--winner FILE]

--winner writes the configuration with the best worst-case time / floor (for QVDP_MERGER_GEMM_VARIANT).
"""
from __future__ import annotations

import argparse
import os

import torch

from _common import event_ms, time_interleaved
from bench_merger import HO, NS, eager, make_inputs

from qvdp.ops import merger_gemm
from qvdp.ops.patch_merger import patch_merger
from qvdp.reference import patch_merger_reference


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--winner", default=None)
    ap.add_argument("--variants", nargs="*", type=int, default=None, help="configurations to time (default: all)")
    args = ap.parse_args()
    variants = args.variants or list(merger_gemm.VARIANTS)
    why = merger_gemm.unavailable_reason()
    if why:
        print("CUTLASS merger kernel not available:", why)
        return
    print(torch.cuda.get_device_name(), {v: d for v, d in merger_gemm.VARIANTS.items()})
    worst = {}
    for post in (False, True):
        for nname, N in (NS[:1] if args.quick else NS):
            for H, O in HO:
                x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, post)
                fns = {"floor": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t()),
                       "eager": lambda: eager(x, nw, nb, w1, b1, w2, b2, post)}
                form = "fold" if post else "prenorm"  # the library's form per norm placement
                ref = patch_merger_reference(x[:4096], nw, nb, w1, b1, w2, b2, postshuffle_norm=post,
                                             dtype=torch.float32)
                errs = {}
                for v in variants:
                    def f(v=v):
                        os.environ["QVDP_MERGER_GEMM_VARIANT"] = str(v)
                        return patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post, backend="cutlass")
                    got = f()
                    errs[f"{form} v{v}"] = ((got[:1024].float() - ref).norm() / ref.norm()).item()
                    fns[f"{form} v{v}"] = f
                t = time_interleaved(fns, warm=3, rep=15, timer=event_ms)
                lab = f"{'post' if post else 'pre'} N={nname} H={H} O={O}"
                parts = [f"floor {t['floor']:.3f} ms", f"eager {t['eager'] / t['floor']:.3f}x"]
                for k in fns:
                    if k in ("floor", "eager"):
                        continue
                    r = t[k] / t["floor"]
                    worst[k.split()[1]] = max(worst.get(k.split()[1], 0), r)
                    parts.append(f"{k} {r:.3f}x (err {errs[k]:.1e})")
                print(lab, " | ".join(parts), flush=True)
    print("worst time / floor per configuration:",
          {k: round(v, 3) for k, v in sorted(worst.items())})
    best = min(worst, key=worst.get)
    print("best worst-case configuration:", best, merger_gemm.VARIANTS[int(best[1:])])
    if args.winner:
        with open(args.winner, "w") as fh:
            fh.write(best[1:])


if __name__ == "__main__":
    main()
