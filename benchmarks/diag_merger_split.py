"""Session 25: the merger's merged rows as chunks on two CUDA streams, with the tuned kernels, GPU and host time.

    python benchmarks/diag_merger_split.py [--shapes pre:4x3520:1152:2048 ...] [--rounds 15]

Session 23's probe (diag_merger_overlap.py) split the cublas chain only and found -6 to -7% GPU time at 3520 merged
rows, H=1152, but the split doubles the launches and the "tuned" path's host time then outran the GPU. Here, per
shape, every system is timed in turn (CUDA events around 10 calls, each sample behind the tuner's busy-wait: GPU
time), and for each its host us per call (the enqueue loop while the GPU is busy) and its GPU us replayed from a
CUDA graph (what the tower's graphs would see):
  floor              the two addmm on pre-normalised input
  tuned              patch_merger(backend="tuned") (its picks named in the log)
  <a> + <b>          fc1 + GELU by a, fc2 by b, one chain (a: the pick, cublas, cutlass v0 / v1; b: the pick, cublas)
  <a> + <b> s2 / s3  the same on 2 / 3 chunks of rows (multiples of 128), chunk i on stream i % 2
A system whose host us is at or above its GPU us would be host-bound as an eager call.
"""
from __future__ import annotations

import argparse

import torch

from _common import event_ms, graph_us, host_us, time_interleaved
from bench_merger import make_inputs

from qvdp.ops import merger_gemm
from qvdp.ops import patch_merger as pm

NAMED = {"4x3520": 4 * 3520, "4x6400": 4 * 6400, "56320": 56320}






def fc2_into(b, h, w2, b2, out):
    if b == "cublas":
        return torch.addmm(b2, h, w2.t(), out=out)
    return merger_gemm.launch(h, w2, None, None, None, pm._f32(b2), out, int(b[len("cutlass v"):]))


def chain(a, b, args, w2, b2, out):
    fc2_into(b, pm._fc1_named(a, args), w2, b2, out)


def split(a, b, args, w2, b2, out, side, n_chunks):
    x = args[0]
    M = out.shape[0]
    edges = [0] + [min(M, round(M * i / n_chunks / 128) * 128) for i in range(1, n_chunks)] + [M]
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    for i in range(n_chunks):
        r0, r1 = edges[i], edges[i + 1]
        with torch.cuda.stream(main if i % 2 == 0 else side):
            chain(a, b, (x[4 * r0:4 * r1],) + args[1:], w2, b2, out[r0:r1])
    main.wait_stream(side)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=[
        "pre:4x3520:1152:2048", "post:4x3520:1152:2048", "pre:4x3520:1152:5120", "post:4x3520:1152:5120",
        "pre:4x6400:1152:2048", "post:4x6400:1152:2048", "pre:4x3520:1024:2048", "pre:4x3520:1152:4096"])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "CUTLASS:", merger_gemm.unavailable_reason() or "available", flush=True)
    side = torch.cuda.Stream()
    for spec in args.shapes:
        place, nname, H, O = spec.split(":")
        post, N, H, O = place == "post", NAMED[nname], int(H), int(O)
        K, M = 4 * H, N // 4
        x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, post)
        pargs = (x, nw, nb, w1, b1, 2, post, "layernorm", 1e-6)
        tuned = lambda: pm.patch_merger(x, nw, nb, w1, b1, w2, b2, postshuffle_norm=post, backend="tuned")
        want = tuned().float()
        pa, pb = pm.tuned_picks(x.device, M, K, K, O, post, "layernorm")
        out = torch.empty(M, O, device="cuda", dtype=torch.bfloat16)
        fns = {"floor": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t()), "tuned": tuned}
        for a in dict.fromkeys([pa, "cublas", "cutlass v0", "cutlass v1"]):
            for b in dict.fromkeys([pb, "cublas"]):
                fns[f"{a} + {b}"] = lambda a=a, b=b: chain(a, b, pargs, w2, b2, out)
                for c in (2, 3):
                    fns[f"{a} + {b} s{c}"] = lambda a=a, b=b, c=c: split(a, b, pargs, w2, b2, out, side, c)
        err = {}
        for name, fn in fns.items():
            if name in ("floor", "tuned"):
                continue
            out.fill_(float("nan"))
            fn()
            torch.cuda.synchronize()
            err[name] = ((out.float() - want).norm() / want.norm()).item()
        gpu = time_interleaved(fns, warm=3, rep=args.rounds, timer=lambda f: event_ms(f, head_cycles=None))
        print(f"{spec}: tuned picks ({pa}, {pb}); floor {gpu['floor'] * 1e3:.1f} us", flush=True)
        print(f"  {'system':34s} {'gpu us':>8s} {'/floor':>7s} {'host us':>8s} {'graph us':>9s} {'/floor':>7s} "
              f"{'diff':>8s}", flush=True)
        for name, fn in fns.items():
            g = gpu[name] * 1e3
            hst = host_us(fn, n=40, busy_cycles=int(3e8))
            try:
                gr = graph_us(fn, head_cycles=None)[0] if name != "tuned" else float("nan")
            except Exception as e:  # noqa: BLE001
                print(f"  [{name}] graph: {type(e).__name__}: {str(e)[:120]}")
                gr = float("nan")
            fl = gpu["floor"] * 1e3
            print(f"  {name:34s} {g:8.1f} {g / fl:7.3f} {hst:8.1f} {gr:9.1f} {gr / fl:7.3f} "
                  f"{err.get(name, 0.0):8.1e}", flush=True)


if __name__ == "__main__":
    main()
