"""Time per row of the merger's GEMMs around 3520 merged rows: is cuBLAS's time a staircase in M (whole waves of
tiles) or a line (a balanced decomposition)? (diagnostics, one Hopper GPU)

For each M, every system is timed in turn (median of --rounds samples of 10 calls behind the tuner's GPU busy-wait):
cuBLAS mm, and the CUTLASS kernels --variants (fc1 form, N = K = 4608: D = acc variant 4, the fused fc1 variant 0 /
43) or --fc2-variants (fc2 form, K = 4608 -> N = 2048). Printed: us, TFLOP/s, us per 128 rows, and cuBLAS's kernel.
A staircase means the kernel runs whole rounds of tiles on the SMs (the last round part empty); a line means the
work is spread evenly (stream-K or similar).

    python benchmarks/diag_merger_waves.py [--ms 3072 3136 ...] [--rounds 9]
        [--extra-lib qvdp/_merger_diag.so --extra-variants 60 62 63] [--extra-fc2-variants 64 65 66] [--no-fc2]

--extra-lib: fc1 kernels of a diagnostics library (scripts/build_merger_gemm.py --variants ...) timed next to the
package's; every fused fc1 kernel (not D = acc) is first checked against fp64 (output poisoned before the call).
"""
from __future__ import annotations

import argparse

import torch

from _common import interleaved_ms
from bench_merger import cutlass_ready
from diag_merger_gemm import extra_library, kernel_names

from qvdp.ops import merger_gemm as mg


PAIRS = {60: 0, 61: 13, 62: 12, 63: 43}  # diagnostics library variant -> the package variant it re-epilogues


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", type=int, nargs="+", default=list(range(3072, 4289, 64)))
    ap.add_argument("--variants", type=int, nargs="*", default=[4, 0, 43])
    ap.add_argument("--fc2-variants", type=int, nargs="*", default=[14, 45])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--extra-lib", default=None)
    ap.add_argument("--extra-variants", type=int, nargs="*", default=[])
    ap.add_argument("--extra-fc2-variants", type=int, nargs="*", default=[],
                    help="fc2-form (D = acc + c[n]) configurations of --extra-lib, timed with the fc2 shape")
    ap.add_argument("--no-fc2", action="store_true")
    a = ap.parse_args()
    cut = cutlass_ready()
    g = torch.Generator(device="cuda").manual_seed(0)
    K = 4608
    mmax = max(a.ms)
    x = torch.randn(mmax, K, device="cuda", generator=g).bfloat16()
    extra = (extra_library(a.extra_lib, a.extra_variants + a.extra_fc2_variants) if cut and a.extra_lib
             else None)
    forms = [(4608, a.variants, "fc1")] + ([] if a.no_fc2 else [(2048, a.fc2_variants, "fc2")])
    for N, variants, form in forms:
        w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
        c = torch.randn(N, device="cuda", generator=g)
        out = torch.empty(mmax, N, device="cuda", dtype=torch.bfloat16)
        if form == "fc1" and cut:  # each fused fc1 kernel against fp64, on 512 rows, output poisoned first
            ref = torch.nn.functional.gelu((x[:512].double() @ w.double().t()) + c.double())
            runs = {f"v{v}": (lambda o, v=v: mg.launch(x[:512], w, None, None, None, c, o, v))
                    for v in variants if v not in mg.DIAG_VARIANTS}
            if extra:
                runs.update({f"extra v{v}": (lambda o, v=v: extra(x[:512], w, c, o, v, 1, 0))
                             for v in a.extra_variants})
            outs = {}
            for k, f in runs.items():
                o = outs[k] = torch.full((512, N), float("nan"), device="cuda", dtype=torch.bfloat16)
                f(o)
                err = ((o.double() - ref).norm() / ref.norm()).item()
                ulp = ((o.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
                print(f"  {k}: rel err vs fp64 {err:.2e}, max elementwise rel {ulp:.2e}"
                      f"{'  WRONG' if not err < 1e-2 else ''}", flush=True)
            for xv, v in PAIRS.items():  # the same mainloop: outputs differ only by the GELU's evaluation
                if f"extra v{xv}" in outs and f"v{v}" in outs:
                    d = (outs[f"extra v{xv}"] != outs[f"v{v}"]).sum().item()
                    print(f"  extra v{xv} against v{v}: {d} of {512 * N} outputs differ", flush=True)
        if form == "fc2" and extra:  # each extra fc2 kernel against fp64 at M = 3520, output poisoned, twice
            ref = x[:3520].double() @ w.double().t() + c.double()
            for v in a.extra_fc2_variants:
                o = torch.full((3520, N), float("nan"), device="cuda", dtype=torch.bfloat16)
                extra(x[:3520], w, c, o, v, 1, 0)
                first = o.clone()
                o.fill_(float("nan"))
                extra(x[:3520], w, c, o, v, 1, 0)
                err = ((o.double() - ref).norm() / ref.norm()).item()
                print(f"  extra v{v} (fc2): rel err vs fp64 {err:.2e}, repeat bit-identical {torch.equal(o, first)}"
                      f"{'  WRONG' if not err < 1e-2 else ''}", flush=True)
        print(f"\n== {form}: N={N} K={K}; us (TFLOP/s) and us per 128 rows", flush=True)
        for M in a.ms:
            xm, om = x[:M], out[:M]
            fns = {"cuBLAS mm": lambda xm=xm, om=om: torch.mm(xm, w.t(), out=om)}
            if cut:
                for v in variants:  # fc1 (GELU(acc + c) or D = acc) and fc2 (acc + c) forms: one C entry point
                    fns[f"v{v}"] = lambda xm=xm, om=om, v=v: mg.launch(xm, w, None, None, None, c, om, v)
                if extra:
                    for v in a.extra_variants if form == "fc1" else a.extra_fc2_variants:
                        fns[f"x{v}"] = lambda xm=xm, om=om, v=v: extra(xm, w, c, om, v, 1, 0)
            t = interleaved_ms(fns, a.rounds)
            name = ", ".join(kernel_names(fns["cuBLAS mm"]))
            line = f"M={M:5d}  " + "  ".join(
                f"{k}: {v * 1e3:6.1f} ({2 * M * N * K / v / 1e9:4.0f}) {v * 1e3 * 128 / M:5.2f}" for k, v in t.items())
            print(line + f"  [{name}]", flush=True)


if __name__ == "__main__":
    main()
