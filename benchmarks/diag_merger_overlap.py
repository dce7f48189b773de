"""Probe (session 23): can the merger's memory-bound passes (the norm, the GELU) hide under the GEMMs' partial last
waves if the merged rows are split into chunks whose chains run on two CUDA streams?

    python benchmarks/diag_merger_overlap.py [--shapes pre:4x3520:1152:2048 ...]

At 3520 merged rows cuBLAS's fc1 (N = K = 4608) runs ~5.1 waves of tiles on 132 SMs: most SMs idle through the last
one. The chunks' chains (norm -> fc1 + bias -> GELU in place -> fc2 + bias) are independent, so with two streams the
GPU may run one chunk's norm or GELU on SMs the other chunk's GEMM leaves idle. Variants, each timed as event us per
call (10 calls back to back, median of 7 samples) against the sequential form (qvdp's "cublas" path) and the floor
(the two addmm on pre-normalised input):
  seq            one chain (the cublas path as it is)
  c2s1 / c4s1    2 / 4 chunks on one stream (what chunking alone costs)
  c2s2 / c4s2    2 / 4 chunks, chunk i on stream i % 2
Only the pre-norm (per-patch LayerNorm) form; the probe is not a code path of the package.
"""
from __future__ import annotations

import argparse
import torch

from _common import event_us
from bench_merger import make_inputs

from qvdp.ops import patch_merger as pm

NAMED = {"4x3520": 4 * 3520, "4x6400": 4 * 6400, "56320": 56320}


def gpu_us(fn):
    """GPU us per call: 10 calls back to back, median of 7 samples, each behind a busy-wait (host time out)."""
    return event_us(fn, warm=3, head_cycles=1_000_000)[0]


def chain(x, nw, nb, w1, b1, w2, b2, out):
    """norm -> fc1 + bias -> GELU in place -> fc2 + bias into out (the rows of x's merged rows)."""
    H = x.shape[1]
    xn = pm.row_norm(x, nw, nb, H, 1e-6, False).view(-1, 4 * H)
    h = torch.addmm(b1, xn, w1.t())
    torch.ops.aten.gelu_(h)
    torch.addmm(b2, h, w2.t(), out=out)


def chunked(n_chunks, n_streams, streams, x, nw, nb, w1, b1, w2, b2, out):
    M = out.shape[0]
    edges = [M * i // n_chunks for i in range(n_chunks + 1)]
    main = torch.cuda.current_stream()
    for s in streams[:n_streams]:
        s.wait_stream(main)
    for i in range(n_chunks):
        s = streams[i % n_streams]
        with torch.cuda.stream(s):
            r0, r1 = edges[i], edges[i + 1]
            chain(x[4 * r0:4 * r1], nw, nb, w1, b1, w2, b2, out[r0:r1])
    for s in streams[:n_streams]:
        main.wait_stream(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["pre:4x3520:1152:2048", "pre:4x3520:1152:4096",
                                                     "pre:4x3520:1024:2048", "pre:4x6400:1152:2048"])
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for spec in args.shapes:
        _, nname, H, O = spec.split(":")
        N, H, O = NAMED[nname], int(H), int(O)
        x, nw, nb, w1, b1, w2, b2, xn, h1 = make_inputs(N, H, O, False)
        out = torch.empty(N // 4, O, device="cuda", dtype=torch.bfloat16)
        want = torch.empty_like(out)
        chain(x, nw, nb, w1, b1, w2, b2, want)
        fns = {"floor": lambda: torch.addmm(b2, torch.addmm(b1, xn, w1.t(), out=h1), w2.t()),
               "seq": lambda: chain(x, nw, nb, w1, b1, w2, b2, out)}
        for c, s in ((2, 1), (4, 1), (2, 2), (4, 2)):
            fns[f"c{c}s{s}"] = lambda c=c, s=s: chunked(c, s, streams, x, nw, nb, w1, b1, w2, b2, out)
        res = {}
        for name, fn in fns.items():
            res[name] = gpu_us(fn)
            err = 0.0
            if name != "floor":
                out.fill_(float("nan"))
                fn()
                torch.cuda.synchronize()
                err = ((out.float() - want.float()).norm() / want.float().norm()).item()
            print(f"  {spec:24s} {name:6s} {res[name]:8.1f} us  / floor {res[name] / res['floor']:.3f}  "
                  f"/ seq {res[name] / res.get('seq', res[name]):.3f}  rel diff to seq {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
