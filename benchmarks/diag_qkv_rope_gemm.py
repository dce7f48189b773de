"""The CUTLASS qkv GEMM with RoPE in its epilogue (qvdp.ops.qkv_rope_gemm) against what it replaces.

kernel: per shape, cuBLAS's qkv GEMM alone (F.linear), cuBLAS + qvdp's RoPE pass (rope_qk: the tower's path
        without it), and the fused kernel at each configuration; error of each against an fp64 linear +
        RoPE (the fused output compared in its pair order).
tower:  the 1-GPU tower (FA3 attention) with fused_qkv_rope on and off, two instances each (built on, off,
        off, on), HF+FA3 in the same loop, timed in turn (median of 9 after 3 warm-ups); each form's error
        against HF in fp32 at 4 x 720p.

    python benchmarks/diag_qkv_rope_gemm.py kernel
    python benchmarks/diag_qkv_rope_gemm.py tower [--workloads 4x720p "16 mixed"]
"""
import argparse

import torch
import torch.nn.functional as F

from _common import bench, try_import_fa3

from qvdp.ops import qkv_rope_gemm as Q
from qvdp.ops.attention import rope_qk

SHAPES = [("D72 4x3520", 14080, 16, 72, 1152), ("D72 1x3520", 3520, 16, 72, 1152),
          ("D72 16x3520", 56320, 16, 72, 1152), ("D80 4x3520", 14080, 16, 80, 1280),
          ("D64 4x3520", 14080, 16, 64, 1024)]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def kernel(a):
    dev = torch.device("cuda")
    for name, T, H, D, C in SHAPES:
        g = torch.Generator(device="cpu").manual_seed(T)
        x = torch.randn(T, C, generator=g).to(dev, torch.bfloat16)
        w = (torch.randn(3 * H * D, C, generator=g) / C ** 0.5).to(dev, torch.bfloat16)
        b = torch.randn(3 * H * D, generator=g).to(dev, torch.bfloat16)
        pos = torch.randint(0, 121, (2, T), generator=g).float().to(dev)
        cos, sin = Q.rotary_tables(pos, D)
        freq = Q.pair_freqs(H, D, device=dev)
        ref = Q.reference(x.double(), w.double(), b.double(), cos.double(), sin.double(), H)
        flop = 2.0 * T * C * 3 * H * D

        def cublas_rope():
            qkv = F.linear(x, w, b).view(T, 3, H, D)
            return rope_qk(qkv[:, 0], qkv[:, 1], cos, sin)

        t_lin = bench(lambda: F.linear(x, w, b))
        t_path = bench(cublas_rope)
        print(f"{name}: cuBLAS linear {t_lin * 1e3:.1f} us ({flop / t_lin / 1e9:.0f} TFLOP/s); "
              f"linear + RoPE pass {t_path * 1e3:.1f} us", flush=True)
        wp, bp = Q.permuted_qkv(w, b, H)
        out = torch.empty(T, 3 * H * D, device=dev, dtype=torch.bfloat16)
        for v, desc in {**Q.VARIANTS, **Q.DIAG_VARIANTS}.items():  # the diagnostic ones store D = acc (no "err")
            try:
                out.fill_(float("nan"))
                err = rel(Q.qkv_rope(x, wp, bp, freq, pos, H, out=out, variant=v), ref)
                t = bench(lambda: Q.qkv_rope(x, wp, bp, freq, pos, H, out=out, variant=v))
            except Exception as e:
                print(f"  v{v} {desc}: failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            print(f"  fused v{v} ({desc}): {t * 1e3:.1f} us ({flop / t / 1e9:.0f} TFLOP/s), {t / t_path:.3f}x the "
                  f"linear + pass, {t / t_lin:.3f}x linear alone, err {err:.2e}"
                  f"{'' if err < 1e-2 or v in Q.DIAG_VARIANTS else ' WRONG'}",
                  flush=True)


def tower(a):
    from encoder_systems import build_hf, hf_call, tower_ab, use_fa3_attention
    import qvdp
    fa3 = try_import_fa3()
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    hf_fa3 = hf_call(use_fa3_attention(build_hf(dev), fa3)) if fa3 is not None else None
    forms = [("fused", True), ("pass", False), ("pass #2", False), ("fused #2", True)]
    fwd = {k: qvdp.Qwen3VLVisionForward(model, fused_qkv_rope=on) for k, on in forms}
    tower_ab(fwd, "fused", "pass", a.workloads, dev, hf_fa3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["kernel", "tower"])
    ap.add_argument("--workloads", nargs="+", default=["4x720p", "16 mixed"])
    a = ap.parse_args()
    kernel(a) if a.mode == "kernel" else tower(a)


if __name__ == "__main__":
    main()
