"""The merger's fc2 by cuBLASLt's candidates in context (diagnostics, one Hopper GPU): whole-merger chains
fc1 + GELU (the cublas form or a CUTLASS configuration) then fc2 by torch.addmm, CUTLASS configurations or each of
cuBLASLt's heuristic candidates (qvdp.ops._cublaslt), every chain timed in turn (median of --rounds samples of 10
calls behind the tuner's busy-wait), plus each fc2 alone on the fc1 output, and the host time of one fc2 call.
Question: do the candidates that win alone (s29a: 3-7% on several shapes) win in the chain?

    python benchmarks/diag_merger_lt.py [--shapes pre:3520:1152:2048 post:3520:1024:2048 ...] [--rounds 15]
        [--fc1 cublas "cutlass v12"] [--fc2-cutlass 45 14]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("QVDP_CUBLASLT", "1")  # (before qvdp reads it: the candidates are opt-in)

from _common import host_us, interleaved_ms
from bench_merger import cutlass_ready, shape_inputs

from qvdp.ops import _cublaslt
from qvdp.ops import patch_merger as pm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["pre:3520:1152:2048", "post:3520:1152:2048",
                                                    "pre:3520:1024:2048", "post:3520:1024:2048",
                                                    "pre:6400:1152:2048"])
    ap.add_argument("--fc1", nargs="+", default=["cublas", "cutlass v12", "cutlass v0"])
    ap.add_argument("--fc2-cutlass", type=int, nargs="*", default=[45, 14])
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    cut = cutlass_ready()
    for spec in a.shapes:
        post, M, H, O, (x, nw, nb, w1, b1, w2, b2, _, _) = shape_inputs(spec)
        args = (x, nw, nb, w1, b1, 2, post, "layernorm", 1e-6)
        K = 4 * H
        g = _cublaslt.gemm_for(x.device, M, O, K, x.dtype, True)
        fc2s = ["cublas"] + (list(g.names) if g else []) + ([f"cutlass v{v}" for v in a.fc2_cutlass] if cut else [])
        fc1s = [n for n in a.fc1 if cut or not n.startswith("cutlass")]
        h = pm._fc1_named("cublas", args)
        ref = pm._fc2_named("cublas", h, w2, b2).float()
        for n in fc2s:  # each fc2 candidate on the same h, output poisoned by a fresh allocation's NaN fill
            out = pm._fc2_named(n, h, w2, b2)
            e = ((out.float() - ref).norm() / ref.norm()).item()
            if not e < 1e-2:
                print(f"  {n}: rel diff {e:.2e} WRONG", flush=True)
        alone = interleaved_ms({n: (lambda n=n: pm._fc2_named(n, h, w2, b2)) for n in fc2s}, rounds=a.rounds)
        chains = interleaved_ms({f"{p} + {q}": (lambda p=p, q=q: pm._fc2_named(q, pm._fc1_named(p, args), w2, b2))
                                 for p in fc1s for q in fc2s}, rounds=a.rounds)
        host = {n: host_us(lambda n=n: pm._fc2_named(n, h, w2, b2)) for n in fc2s[:2]}
        print(f"\n== {spec}: fc2 alone (us), and host us per fc2 call: "
              + ", ".join(f"{k} {v:.1f}" for k, v in host.items()), flush=True)
        for n in sorted(alone, key=alone.get):
            print(f"  {n:36s} {alone[n] * 1e3:7.1f} us  {alone[n] / alone['cublas']:6.3f}x", flush=True)
        print(f"== {spec}: chains (us)")
        for p in fc1s:
            base = chains[f"{p} + cublas"]
            for q in sorted(fc2s, key=lambda q: chains[f"{p} + {q}"]):
                t = chains[f"{p} + {q}"]
                print(f"  {p:12s} + {q:36s} {t * 1e3:7.1f} us  {t / base:6.3f}x", flush=True)


if __name__ == "__main__":
    main()
