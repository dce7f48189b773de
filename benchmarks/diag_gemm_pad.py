"""fc1 / fc2 widths (diagnostics, one GPU): does padding the MLP's intermediate width (4304, not a multiple
of cuBLAS's tiles) with zero rows pay? At T = 14080 (4 x 720p), H = 1152, bf16: fc1 with the bias+GELU
epilogue (torch._addmm_activation, as the tower runs it) and with bias only, and fc2 accumulating in place
(x.addmm_, K = the width), for widths 4304, 4352, 4224, 4480, 4608, 4096; then the QKV and proj GEMMs for
reference. CUDA events over 20 back-to-back calls, best of 5. Session 8: 4352 saves 0.6% of a forward
for 540 MB of padded weight copies - not adopted (benchmarks/NOTES.md).

    python benchmarks/diag_gemm_pad.py
"""
import torch

from _common import best_event_ms


def best_us(fn):
    fn()
    return best_event_ms(fn, 20, 5) * 1e3


def main():
    T, H = 14080, 1152
    bf = dict(device="cuda", dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(T, H, generator=g, **bf)
    x = torch.randn(T, H, generator=g, **bf)
    for N in (4304, 4352, 4224, 4480, 4608, 4096):
        w = torch.randn(N, H, generator=g, **bf) * 0.03
        b = torch.randn(N, generator=g, **bf)
        a = torch.randn(T, N, generator=g, **bf) * 0.1
        w2 = torch.randn(H, N, generator=g, **bf) * 0.015
        t1 = best_us(lambda: torch._addmm_activation(b, h, w.t(), use_gelu=True))
        t1b = best_us(lambda: torch.addmm(b, h, w.t()))
        t2 = best_us(lambda: x.addmm_(a, w2.t()))
        fl = 2 * T * H * N / 1e6  # MFLOP; / us = TFLOP/s
        print(f"N={N}: fc1+gelu {t1:.1f} us ({fl / t1:.0f} TFLOP/s), fc1 bias only {t1b:.1f} us ({fl / t1b:.0f}), "
              f"fc2 addmm_ K=N {t2:.1f} us ({fl / t2:.0f}); fc1+fc2 {t1 + t2:.1f} us", flush=True)
    for N, K in ((3456, 1152), (1152, 1152)):
        w = torch.randn(N, K, generator=g, **bf) * 0.03
        b = torch.randn(N, generator=g, **bf)
        a = torch.randn(T, K, generator=g, **bf)
        t = best_us(lambda: torch.addmm(b, a, w.t()))
        print(f"N={N} K={K} addmm {t:.1f} us ({2 * T * N * K / 1e6 / t:.0f} TFLOP/s)", flush=True)


if __name__ == "__main__":
    main()
