"""Where the CUTLASS merger's time goes against eager and the floor: per-kernel GPU time (torch.profiler)
and the host time of one call, on a few bench_merger shapes.

    python benchmarks/diag_merger_profile.py [--shapes pre:4x3520:1152:4096 post:56320:1152:4096 ...]

Per system: event ms per call (10 back to back), host ms per call (launch only, no sync), and the kernels
of 10 calls (µs per call each, by name), so a gap between the sum of kernel times and the event time shows
GPU idle between launches.
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import best_event_ms, kernel_us
from bench_merger import eager, make_inputs

from qvdp.ops import merger_gemm
from qvdp.ops.patch_merger import patch_merger

NAMED = {"4x3520": 4 * 3520, "4x6400": 4 * 6400, "56320": 56320}


def host_ms(fn, n=20):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e3 / n


def kernels(fn, n=10):
    return kernel_us(fn, n, width=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["pre:4x3520:1152:4096", "post:4x3520:1024:2048",
                                                     "post:56320:1152:4096"])
    args = ap.parse_args()
    why = merger_gemm.unavailable_reason()
    print(torch.cuda.get_device_name(), "CUTLASS:", why or "available", flush=True)
    for spec in args.shapes:
        place, nname, H, O = spec.split(":")
        post, N, H, O = place == "post", NAMED[nname], int(H), int(O)
        x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, post)
        fns = {"floor": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t()),
               "eager": lambda: eager(x, nw, nb, w1, b1, w2, b2, post),
               "qvdp cublas": lambda: patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post,
                                                   backend="cublas")}
        if not why:
            fns["qvdp cutlass"] = lambda: patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post,
                                                       backend="cutlass")
            fns["qvdp cutlass (no custom op)"] = lambda: _direct(x, nw, nb, w1, b1, w2, b2, post)
            fns["qvdp tuned"] = lambda: patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post,
                                                     backend="tuned")
        print(f"\n== {spec}")
        for name, fn in fns.items():
            if name == "qvdp tuned":  # the first call of a new shape tunes: its wall time, CUTLASS loads included
                from qvdp.ops import _tune
                _tune.clear()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                print(f"qvdp tuned first call (tuning) {1e3 * (time.perf_counter() - t0):.1f} ms", flush=True)
            for _ in range(3):
                fn()
            ev = best_event_ms(fn, inner=10, rounds=5)
            hm = host_ms(fn)
            ks = kernels(fn)
            tot = sum(ks.values()) / 1e3
            print(f"{name:30s} event {ev:.3f} ms  host {hm:.3f} ms/call  kernels {tot:.3f} ms  "
                  f"(idle {ev - tot:+.3f})", flush=True)
            for k, us in sorted(ks.items(), key=lambda kv: -kv[1]):
                print(f"    {us:8.1f} us  {k}")
            if name == "qvdp tuned":
                from qvdp.ops.patch_merger import _pair_key, tune_keys, tuned_picks
                k1, k2 = tune_keys(x.device, N // 4, 4 * H, 4 * H, O, post, "layernorm")
                print(f"    picks: {tuned_picks(x.device, N // 4, 4 * H, 4 * H, O, post, 'layernorm')}; alone: fc1 "
                      f"{_tune.timings(k1)}; fc2 {_tune.timings(k2)}; pairs {_tune.timings(_pair_key(k1, O))}")


def _direct(x, nw, nb, w1, b1, w2, b2, post):
    from qvdp.ops.patch_merger import _patch_merger_cutlass
    return _patch_merger_cutlass(x, nw, nb, w1, b1, w2, b2, 2, post, "layernorm", 1e-6)


if __name__ == "__main__":
    main()
