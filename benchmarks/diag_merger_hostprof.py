"""Session 25: where the "tuned" merger's host time goes, function by function (cProfile) and layer by layer.

    python benchmarks/diag_merger_hostprof.py [--shapes pre:4x3520:1152:2048 ...] [--calls 300]

Each measurement enqueues calls while the GPU is kept busy (torch.cuda._sleep), so nothing waits for the GPU:
what is left is host work. Layers, host us per call: patch_merger(backend="tuned"), _patch_merger_impl,
_patch_merger_tuned, the chosen chain called by name, and its pieces (row_norm / row_stats, merger_gemm.launch,
addmm). Then cProfile of patch_merger over the same calls (its own overhead inflates every function; the ranking
is what counts).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch

from _common import host_us
from bench_merger import make_inputs

from qvdp.ops import merger_gemm
from qvdp.ops import patch_merger as pm

NAMED = {"4x3520": 4 * 3520, "4x6400": 4 * 6400, "56320": 56320}




def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["pre:4x3520:1152:2048", "post:4x3520:1152:2048"])
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    for spec in args.shapes:
        place, nname, H, O = spec.split(":")
        post, N, H, O = place == "post", NAMED[nname], int(H), int(O)
        K, M = 4 * H, N // 4
        x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, post)
        full = (x, nw, nb, w1, b1, w2, b2, 2, post, "layernorm", 1e-6)
        top = lambda: pm.patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post, backend="tuned")
        top()
        a, b = pm.tuned_picks(x.device, M, K, K, O, post, "layernorm")
        args1 = (x, nw, nb, w1, b1, 2, post, "layernorm", 1e-6)
        negm = torch.empty(M, device="cuda")
        rstd = torch.empty(M, device="cuda")
        c1 = b1.float()
        layers = {
            "patch_merger(backend='tuned')": top,
            "patch_merger(backend='auto')": lambda: pm.patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post),
            "_patch_merger_impl(tuned)": lambda: pm._patch_merger_impl(*full, "tuned"),
            "_patch_merger_tuned": lambda: pm._patch_merger_tuned(*full),
            f"chain {a} + {b}": lambda: pm._fc2_named(b, pm._fc1_named(a, args1), w2, b2),
            f"fc1 {a}": lambda: pm._fc1_named(a, args1),
            "row_norm": lambda: pm.row_norm(x, nw, nb, K if post else H, 1e-6, False),
            "row_stats": lambda: pm.row_stats(x, negm, rstd, K, 1e-6, False, negm=True),
            "merger_gemm.launch v1": lambda: merger_gemm.launch(xn, w1, None, None, None, c1, None, 1),
            "addmm fc2": lambda: torch.addmm(b2, h1, w2.t()),
            "torch.empty": lambda: torch.empty(M, K, device="cuda", dtype=torch.bfloat16),
        }
        print(f"\n== {spec}: picks ({a}, {b})", flush=True)
        for name, fn in layers.items():
            ts = sorted(host_us(fn, args.calls // 3, busy_cycles=int(1e9)) for _ in range(3))
            print(f"  {name:36s} host {ts[1]:7.1f} us/call (min {ts[0]:.1f})", flush=True)
        top()
        torch.cuda.synchronize()
        torch.cuda._sleep(int(2e9))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            top()
        prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        print("\n".join(s.getvalue().splitlines()[:60]), flush=True)


if __name__ == "__main__":
    main()
