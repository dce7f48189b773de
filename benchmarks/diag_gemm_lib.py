"""Where the tower's GEMMs could get faster (diagnostics, one GPU): each of the four per-layer GEMMs at
4 x 720p (T = 14080, H = 1152, MLP 4304, bf16) as the tower runs it (cuBLAS through torch), with torch's
cuBLASLt preference, and as torch.compile max-autotune kernels (Triton GEMM templates, epilogue fused) for
the same fixed shape. CUDA events over 20 back-to-back calls, best of 5; TFLOP/s; max |diff| vs the default.

    python benchmarks/diag_gemm_lib.py [--no-compile]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from _common import best_event_ms


def best_us(fn):
    fn()
    torch.cuda.synchronize()
    return best_event_ms(fn, 20, 5) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--tokens", type=int, default=14080)
    a = ap.parse_args()
    T, H, M = a.tokens, 1152, 4304
    bf = dict(device="cuda", dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(T, H, generator=g, **bf)
    hm = torch.randn(T, M, generator=g, **bf) * 0.1
    ws = {"qkv": (torch.randn(3 * H, H, generator=g, **bf) * 0.03, torch.randn(3 * H, generator=g, **bf)),
          "proj": (torch.randn(H, H, generator=g, **bf) * 0.03, None),
          "fc1+gelu": (torch.randn(M, H, generator=g, **bf) * 0.03, torch.randn(M, generator=g, **bf)),
          "fc2": (torch.randn(H, M, generator=g, **bf) * 0.015, None)}
    x = torch.randn(T, H, generator=g, **bf)

    def tower(name):  # as qvdp's forward calls them
        w, b = ws[name]
        if name == "qkv":
            return lambda: torch.addmm(b, h, w.t())
        if name == "proj":
            return lambda: x.clone().addmm_(h, w.t())
        if name == "fc1+gelu":
            return lambda: torch._addmm_activation(b, h, w.t(), use_gelu=True)
        return lambda: x.clone().addmm_(hm, w.t())

    def plain(name):  # the same math as one function, for torch.compile
        w, b = ws[name]
        if name == "qkv":
            return (lambda h_: F.linear(h_, w, b)), h
        if name == "proj":
            return (lambda h_: x + h_ @ w.t()), h
        if name == "fc1+gelu":
            return (lambda h_: F.gelu(F.linear(h_, w, b), approximate="tanh")), h
        return (lambda h_: x + h_ @ w.t()), hm

    flops = {"qkv": 2 * T * H * 3 * H, "proj": 2 * T * H * H, "fc1+gelu": 2 * T * H * M, "fc2": 2 * T * M * H}
    clone_us = best_us(lambda: x.clone())  # proj / fc2 pay one [T, H] copy in this harness; subtracted
    print(f"T={T}: [T, H] clone {clone_us:.1f} us (subtracted from proj / fc2)", flush=True)
    for name in ws:
        f = tower(name)
        ref = f()
        t0 = best_us(f) - (clone_us if name in ("proj", "fc2") else 0)
        row = [f"{name:9s} tower (cuBLAS) {t0:7.1f} us {flops[name] / t0 / 1e6:5.0f} TF/s"]
        prev = torch.backends.cuda.preferred_blas_library()
        try:
            torch.backends.cuda.preferred_blas_library("cublaslt")
            t1 = best_us(f) - (clone_us if name in ("proj", "fc2") else 0)
            d1 = (f().float() - ref.float()).abs().max().item()
            row.append(f"| cublaslt pref {t1:7.1f} us {flops[name] / t1 / 1e6:5.0f} TF/s (max diff {d1:.2e})")
        finally:
            torch.backends.cuda.preferred_blas_library(prev)
        if not a.no_compile:
            fn, arg = plain(name)
            try:
                t_c = time.time()
                cf = torch.compile(fn, mode="max-autotune-no-cudagraphs", dynamic=False)
                out = cf(arg)
                torch.cuda.synchronize()
                t2 = best_us(lambda: cf(arg))
                d2 = (out.float() - ref.float()).abs().max().item()
                row.append(f"| compile max-autotune {t2:7.1f} us {flops[name] / t2 / 1e6:5.0f} TF/s "
                           f"(max diff {d2:.2e}, compile {time.time() - t_c:.0f} s)")
            except Exception as e:  # noqa: BLE001
                row.append(f"| compile failed: {type(e).__name__}: {str(e)[:120]}")
        print(" ".join(row), flush=True)


if __name__ == "__main__":
    main()
