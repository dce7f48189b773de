"""The merger's fc1 GEMM alone: cuBLAS (mm, addmm with bias, cuBLASLt bias+GELU epilogue) vs the CUTLASS
kernels of csrc/merger_gemm.cu (every configuration; D = acc for the mainloop alone; tile order sweep).
Systems timed in turn, CUDA events around 20 calls, best of 5 rounds. TFLOP/s = 2*M*N*K / time.

    python benchmarks/diag_merger_gemm.py [--no-sweep]
"""
import argparse

import torch

from _common import event_ms

from qvdp.ops import merger_gemm as mg

SHAPES = [(3520, 4608, 4608), (14080, 4608, 4608), (3520, 4096, 4096), (14080, 4096, 4096)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-sweep", action="store_true", help="skip the tile-order sweep of v1 / v4")
    a = ap.parse_args()
    why = mg.unavailable_reason()
    if why:
        print("not available:", why)
        return
    print(torch.cuda.get_device_name())
    for M, N, K in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
        w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
        b = torch.randn(N, device="cuda", generator=g).bfloat16()
        c = b.float()
        rstd, negm = torch.rand(M, device="cuda") + 0.5, torch.randn(M, device="cuda")
        s = torch.randn(N, device="cuda")
        out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        fns = {"cuBLAS mm": lambda: torch.mm(x, w.t(), out=out),
               "cuBLAS addmm (bias)": lambda: torch.addmm(b, x, w.t(), out=out),
               "cuBLASLt addmm bias+GELU(tanh)": lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True),
               "cuBLAS addmm + F.gelu": lambda: torch.nn.functional.gelu(torch.addmm(b, x, w.t(), out=out))}
        for v in sorted({**mg.VARIANTS, **mg.DIAG_VARIANTS}):
            fns[f"CUTLASS v{v} bias+GELU"] = (lambda v=v: mg.fc1_gelu(x, w, c=c, out=out, variant=v))
        fns["CUTLASS v1 fold epilogue"] = lambda: mg.fc1_gelu(x, w, rstd=rstd, negm=negm, s=s, c=c, out=out, variant=1)
        for sw in (() if a.no_sweep else (1, 2, 4, 8)):
            for ra in (0, 1, 2):
                if sw == 1 and ra == 0:
                    continue
                fns[f"CUTLASS v4 (D=acc) swizzle {sw} raster {ra}"] = (
                    lambda sw=sw, ra=ra: mg.fc1_gelu(x, w, c=c, out=out, variant=4, swizzle=sw, raster=ra))
                fns[f"CUTLASS v1 swizzle {sw} raster {ra}"] = (
                    lambda sw=sw, ra=ra: mg.fc1_gelu(x, w, c=c, out=out, variant=1, swizzle=sw, raster=ra))
        best = {k: float("inf") for k in fns}
        for _ in range(5):
            for k, f in fns.items():
                f()
                best[k] = min(best[k], event_ms(f, inner=20))
        fl = 2.0 * M * N * K
        for k, t in best.items():
            print(f"M={M} N={N} K={K} {k:48s} {t * 1e3:8.1f} us {fl / t / 1e9:7.1f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
