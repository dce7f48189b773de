"""cuBLASLt's heuristic candidates for the merger's GEMMs, each timed (diagnostics, one GPU): does another of
cuBLASLt's algorithms beat the one torch.addmm runs (the floor's)?

For every shape (fc1: N = K = 4H; fc2: K = 4H -> N = out; bias in the epilogue, bf16): torch.addmm and every
candidate of `qvdp.ops._cublaslt.LtGemm` (cuBLASLt's heuristic list, up to --count), each checked against addmm
(output poisoned first) and timed in turn (median of --rounds samples of 10 calls behind the tuner's busy-wait).
Printed: us, TFLOP/s, ratio to addmm, the candidate's configuration, and the kernel of the fastest ones.

    python benchmarks/diag_cublaslt.py [--ms 3520 6400 14080] [--count 32] [--rounds 7] [--names 3]
"""
from __future__ import annotations

import argparse

import torch

from _common import interleaved_ms
from diag_merger_gemm import kernel_names

from qvdp.ops._cublaslt import LtGemm

SHAPES = {"fc1 H=1152": (4608, 4608), "fc1 H=1024": (4096, 4096), "fc2 4608->2048": (4608, 2048),
          "fc2 4608->4096": (4608, 4096), "fc2 4608->5120": (4608, 5120), "fc2 4096->2048": (4096, 2048),
          "fc2 4096->2560": (4096, 2560)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", type=int, nargs="+", default=[3520, 6400, 14080])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--names", type=int, default=3, help="print the kernels of this many fastest candidates")
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    summary = []
    for M in a.ms:
        for s in a.shapes:
            K, N = SHAPES[s]
            x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
            w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
            b = torch.randn(N, device="cuda", generator=g).bfloat16()
            out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            ref = torch.addmm(b, x, w.t())
            lt = LtGemm(M, N, K, torch.bfloat16, True)
            assert lt.runs(x, w, b, out)
            fns = {"addmm": lambda: torch.addmm(b, x, w.t(), out=out)}
            bad = []
            for i in range(len(lt.results)):
                o = torch.full_like(out, float("nan"))
                try:
                    lt.run_index(x, w, b, o, i)
                    torch.cuda.synchronize()
                except RuntimeError as e:
                    bad.append(f"{i}: {e}")
                    continue
                err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                if not err < 1e-2:
                    bad.append(f"{i}: rel diff {err:.2e} WRONG")
                    continue
                fns[f"lt{i}"] = lambda i=i: lt.run_index(x, w, b, out, i)
            t = interleaved_ms(fns, rounds=a.rounds)
            fl = 2 * M * N * K
            print(f"\n== M={M} {s} (K={K}, N={N}): {len(lt.results)} candidates, {len(bad)} dropped", flush=True)
            for line in bad:
                print("  dropped", line)
            base = t["addmm"]
            for k in sorted(t, key=t.get):
                d = (lt.names[int(k[2:])], lt.describe(int(k[2:]))) if k != "addmm" else ""
                print(f"  {k:6s} {t[k] * 1e3:8.1f} us {fl / t[k] / 1e9:6.0f} TF/s {t[k] / base:6.3f}x  {d}", flush=True)
            ranked = [k for k in sorted(t, key=t.get) if k != "addmm"][:a.names]
            for k in ranked + ["addmm"]:
                f = fns[k]
                print(f"  kernels {k}: {[n[:90] for n in kernel_names(f)]}", flush=True)
            best = ranked[0] if ranked else None
            if best:
                summary.append((M, s, base * 1e3, t[best] * 1e3, best, t[best] / base, t.get("lt0", float("nan")) * 1e3))
    print("\n== summary: M, shape, addmm us, best candidate us, which, ratio, lt0 us")
    for r in summary:
        print(f"  {r[0]:6d} {r[1]:16s} {r[2]:8.1f} {r[3]:8.1f} {r[4]:6s} {r[5]:6.3f}x  lt0 {r[6]:8.1f}")


if __name__ == "__main__":
    main()
