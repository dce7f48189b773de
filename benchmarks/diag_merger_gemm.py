"""The merger's fc1 GEMM alone: cuBLAS (mm, addmm with bias, cuBLASLt bias+GELU epilogue, the "cublas" merger
path's two forms of fc1 + GELU) vs the CUTLASS kernels of csrc/merger_gemm.cu (chosen configurations x tile
orders; D = acc for the mainloop alone). Systems timed in turn, CUDA events around 20 calls, best of 5 rounds.
TFLOP/s = 2*M*N*K / time.

    python benchmarks/diag_merger_gemm.py [--m 3520 14080] [--nk 4608 4096] [--variants 1 4 ...] [--rasters 0 1 2]
        [--swizzles 1]
"""
import argparse

import torch

from _common import event_ms

from qvdp.ops import merger_gemm as mg
from qvdp.ops.patch_merger import bias_gelu_


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[3520, 14080])
    ap.add_argument("--nk", type=int, nargs="+", default=[4608, 4096], help="N = K (fc1 is square)")
    ap.add_argument("--variants", type=int, nargs="+", default=None, help="default: every compiled one")
    ap.add_argument("--rasters", type=int, nargs="+", default=[0], help="0 heuristic, 1 along M, 2 along N")
    ap.add_argument("--swizzles", type=int, nargs="+", default=[1])
    a = ap.parse_args()
    why = mg.unavailable_reason()
    print(torch.cuda.get_device_name(), "CUTLASS:", why or "available")
    variants = [] if why else (a.variants if a.variants is not None else sorted({**mg.VARIANTS, **mg.DIAG_VARIANTS}))
    for nk in a.nk:
        for M in a.m:
            N = K = nk
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
            w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
            b = torch.randn(N, device="cuda", generator=g).bfloat16()
            c = b.float()
            out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            scratch = torch.randn(M, N, device="cuda", generator=g).bfloat16()
            fns = {"cuBLAS mm": lambda: torch.mm(x, w.t(), out=out),
                   "cuBLAS addmm (bias)": lambda: torch.addmm(b, x, w.t(), out=out),
                   "cuBLASLt addmm bias+GELU(tanh)": lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True),
                   "addmm + aten.gelu_ (cublas path, old)": lambda: torch.ops.aten.gelu_(torch.addmm(b, x, w.t(), out=out)),
                   "mm + bias_gelu_ reverse (cublas path)": lambda: bias_gelu_(torch.mm(x, w.t(), out=out), c, reverse=True),
                   "mm + bias_gelu_ forward": lambda: bias_gelu_(torch.mm(x, w.t(), out=out), c, reverse=False),
                   "aten.gelu_ pass alone": lambda: torch.ops.aten.gelu_(scratch),
                   "bias_gelu_ pass alone": lambda: bias_gelu_(scratch, c, reverse=False)}
            for v in variants:
                for sw in a.swizzles:
                    for ra in a.rasters:
                        fns[f"CUTLASS v{v} sw{sw} raster{ra}"] = (
                            lambda v=v, sw=sw, ra=ra: mg.fc1_gelu(x, w, c=c, out=out, variant=v, swizzle=sw, raster=ra))
            best = {k: float("inf") for k in fns}
            for _ in range(5):
                for k, f in fns.items():
                    f()
                    best[k] = min(best[k], event_ms(f, inner=20))
            fl = 2.0 * M * N * K
            gb = 4.0 * M * N / 1e6  # bf16 read + write of the [M, N] tensor, for the passes
            for k, t in best.items():
                rate = f"{gb / t / 1e3:7.2f} TB/s" if "alone" in k else f"{fl / t / 1e9:7.1f} TFLOP/s"
                print(f"M={M} N={N} K={K} {k:42s} {t * 1e3:8.1f} us {rate}", flush=True)


if __name__ == "__main__":
    main()
