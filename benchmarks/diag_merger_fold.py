"""The per-patch norm folded into fc1 (CUTLASS variant 30, qvdp/_merger_fold.so) against the norm pass + the plain
CUTLASS fc1 (variants 0, 1) and the "cublas" form (norm pass, cuBLAS fc1, GELU pass), each the merger's fc1 stage
with its norm (diagnostics, one Hopper GPU).

Every system timed in turn, round after round (samples of 10 calls behind the tuner's GPU busy-wait: GPU time),
median of the rounds; the folded form's statistics pass and kernel also alone.

    python benchmarks/diag_merger_fold.py [--shapes 3520:1152 6400:1152 3520:1024] [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from _common import event_ms
from bench_merger import make_inputs

from qvdp.ops import merger_gemm as mg
from qvdp.ops import patch_merger as pm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["3520:1152", "6400:1152", "3520:1024"])
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    why = (mg.unavailable_reason() or mg.fold_unavailable_reason()) if torch.cuda.is_available() else "no CUDA device"
    print(torch.cuda.get_device_name() if torch.cuda.is_available() else "", "fold:", why or "available", flush=True)
    if why:
        return
    for spec in a.shapes:
        M, H = (int(v) for v in spec.split(":"))
        x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(4 * M, H, 2048, False, spread=True)
        args = (x, nw, nb, w1, b1, 2, False, "layernorm", 1e-6)
        wg, s_, c_ = pm._folded_weights(nw, nb, w1, b1, 4, False, False)
        c1c2, rn = pm.fold_stats(x, 4, H, 1e-6, False)
        xm = x.view(M, 4 * H)
        fns = {"fold (v30): statistics + kernel": lambda: pm._fc1_cutlass(*args, variant=30),
               "norm pass + v0": lambda: pm._fc1_cutlass(*args, variant=0),
               "norm pass + v1": lambda: pm._fc1_cutlass(*args, variant=1),
               "cublas form (norm, cuBLAS, GELU)": lambda: pm._fc1_cublas(*args),
               "fold statistics alone": lambda: pm.fold_stats(x, 4, H, 1e-6, False),
               "norm pass alone": lambda: pm.row_norm(x, nw, nb, H, 1e-6, False),
               "fold kernel alone": lambda: mg.launch_fold(xm, wg, rn[0], rn[1], s_[3], c_, c1c2[0], c1c2[1],
                                                           s_[:3], H // 64, out=h1),
               "fold kernel, no rescale (chunk 0)": lambda: mg.launch_fold(xm, wg, rn[0], rn[1], s_[3], c_, None,
                                                                           None, None, 0, out=h1)}
        ref = pm._fc1_cublas(*args).float()
        err = ((pm._fc1_cutlass(*args, variant=30).float() - ref).norm() / ref.norm()).item()
        for f in fns.values():
            for _ in range(3):
                f()
        got = {k: [] for k in fns}
        for _ in range(a.rounds):
            for k, f in fns.items():
                got[k].append(event_ms(f, inner=10, head_cycles=None))
        print(f"\n== pre-norm, {M} merged rows, H={H} (fold vs cublas form: rel diff {err:.1e})", flush=True)
        base = statistics.median(got["norm pass + v0"])
        for k, v in got.items():
            t = statistics.median(v)
            print(f"{k:40s} {t * 1e3:8.1f} us  {t / base:6.3f}x norm pass + v0", flush=True)


if __name__ == "__main__":
    main()
