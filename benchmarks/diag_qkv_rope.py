"""The qkv GEMM with the rotary in its epilogue (qvdp.ops.qkv_rope) against what it replaces.

kernel: per shape, cuBLAS's qkv GEMM alone (F.linear), cuBLAS + qvdp's RoPE pass (rope_qk, the tower's
        path before: the attention's input), and the fused kernel at each configuration; error of each
        against an fp64 linear + RoPE. `--winner FILE` gets the configuration with the best time summed
        over the shapes (as "BM,BP,BK,warps,stages,group,one_dot", QVDP_QKV_ROPE_CONFIG's format).
tower:  the 1-GPU tower (FA3 attention) with the fused GEMM on and off, two instances each (built on,
        off, off, on), HF+FA3 in the same loop, timed in turn (median of 9 after 3 warm-ups); the error of
        each against HF in fp32 at 4 x 720p.

    python benchmarks/diag_qkv_rope.py kernel [--winner FILE] [--all-shapes]
    python benchmarks/diag_qkv_rope.py tower [--workloads 4x720p "16 mixed"]
"""
import argparse
import os

import torch
import torch.nn.functional as F

from _common import bench, time_interleaved, try_import_fa3

from qvdp.ops.attention import rope_qk
from qvdp.ops.qkv_rope import DEFAULT_CONFIG, qkv_rope, qkv_rope_reference

CONFIGS = [DEFAULT_CONFIG, (128, 64, 64, 8, 4, 8, 0), (128, 64, 64, 4, 3, 8, 0), (128, 128, 64, 8, 3, 8, 0),
           (128, 128, 32, 8, 4, 8, 0), (256, 64, 64, 8, 3, 8, 0), (64, 64, 64, 4, 4, 8, 0),
           (64, 128, 64, 4, 3, 8, 0), (128, 64, 128, 8, 3, 8, 0), (128, 64, 64, 8, 3, 8, 1),
           (128, 64, 64, 8, 4, 8, 1), (128, 128, 64, 8, 3, 8, 1), (128, 64, 64, 8, 3, 4, 0),
           (128, 64, 64, 8, 3, 16, 0)]
# (name, T, H, D, C): Qwen3-VL-8B at 4 x 720p, one 720p image, a 16-frame video; Qwen2.5-VL (D=80);
# Qwen3-VL-2B/4B (D=64)
SHAPES = [("D72 4x3520", 14080, 16, 72, 1152), ("D72 1x3520", 3520, 16, 72, 1152),
          ("D72 16x3520", 56320, 16, 72, 1152), ("D80 4x3520", 14080, 16, 80, 1280),
          ("D64 4x3520", 14080, 16, 64, 1024)]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def kernel(a):
    dev = torch.device("cuda")
    totals = {}
    shapes = SHAPES if a.all_shapes else SHAPES[:1] + SHAPES[3:]
    for name, T, H, D, C in shapes:
        g = torch.Generator(device="cpu").manual_seed(T)
        x = torch.randn(T, C, generator=g).to(dev, torch.bfloat16)
        w = (torch.randn(3 * H * D, C, generator=g) / C ** 0.5).to(dev, torch.bfloat16)
        b = torch.randn(3 * H * D, generator=g).to(dev, torch.bfloat16)
        ang = torch.rand(T, D // 2, generator=g).to(dev) * 60
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos(), ang.sin()
        ref = qkv_rope_reference(x.double(), w.double(), b.double(), cos.double(), sin.double(), H)
        flop = 2.0 * T * C * 3 * H * D

        def cublas_rope():
            qkv = F.linear(x, w, b).view(T, 3, H, D)
            return rope_qk(qkv[:, 0], qkv[:, 1], cos, sin)

        t_lin = bench(lambda: F.linear(x, w, b))
        t_path = bench(cublas_rope)
        qo, ko = cublas_rope()
        v = F.linear(x, w, b).view(T, 3, H, D)[:, 2]
        e_path = rel(torch.stack([qo, ko, v], 1).reshape(T, -1), ref)
        print(f"{name}: cuBLAS linear {t_lin * 1e3:.1f} us ({flop / t_lin / 1e9:.0f} TFLOP/s); "
              f"linear + RoPE pass {t_path * 1e3:.1f} us (err {e_path:.2e})", flush=True)
        out = torch.empty(T, 3 * H * D, device=dev, dtype=torch.bfloat16)
        for cfg in CONFIGS:
            try:
                out.fill_(float("nan"))
                got = qkv_rope(x, w, b, cos, sin, H, halves_equal=True, out=out, config=cfg)
                err = rel(got, ref)
                t = bench(lambda: qkv_rope(x, w, b, cos, sin, H, halves_equal=True, out=out, config=cfg))
            except Exception as e:  # a tile that does not fit: report and go on
                print(f"  {cfg}: failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            ok = err < 1e-2
            print(f"  fused {cfg}: {t * 1e3:.1f} us ({flop / t / 1e9:.0f} TFLOP/s), {t / t_path:.3f}x the "
                  f"linear + pass, {t / t_lin:.3f}x linear alone, err {err:.2e}{'' if ok else ' WRONG'}", flush=True)
            if ok:
                totals.setdefault(cfg, []).append(t / t_path)
    full = {c: sum(v) / len(v) for c, v in totals.items() if len(v) == len(shapes)}
    if full:
        best = min(full, key=full.get)
        print(f"best over the shapes: {best} (mean {full[best]:.3f}x the linear + pass)")
        if a.winner:
            with open(a.winner, "w") as f:
                f.write(",".join(map(str, best)))


def tower(a):
    from bench_encoder import pixels, workloads
    from encoder_systems import build_hf, hf_call, use_fa3_attention
    import qvdp
    fa3 = try_import_fa3()
    dev = torch.device("cuda", 0)
    model = build_hf(dev)
    hf_fa3 = hf_call(use_fa3_attention(build_hf(dev), fa3)) if fa3 is not None else None
    forms = [("fused", True), ("pass", False), ("pass #2", False), ("fused #2", True)]
    fwd = {k: qvdp.Qwen3VLVisionForward(model, fused_qkv_rope=on) for k, on in forms}
    for name, grid in workloads():
        if name not in a.workloads:
            continue
        px = pixels(grid, dev)
        g = tuple(map(tuple, grid))
        fns = {k: (lambda f=f: f(px, g)) for k, f in fwd.items()}
        if hf_fa3 is not None:
            fns["HF+FA3"] = lambda: hf_fa3(px, grid)
        r = time_interleaved(fns, warm=3, rep=9)
        on = min(r["fused"], r["fused #2"])
        off = min(r["pass"], r["pass #2"])
        line = ", ".join(f"{k} {v:.2f} ms" for k, v in r.items())
        if "HF+FA3" in r:
            line += f"; HF+FA3 / fused {r['HF+FA3'] / on:.3f}x, HF+FA3 / pass {r['HF+FA3'] / off:.3f}x"
        print(f"tower {name}: {line}; pass / fused {off / on:.4f}", flush=True)
        if name == "4x720p":
            ref = hf_call(build_hf(dev).float())(px.float(), grid)[0]
            errs = {k: rel(f(px, g)[0], ref) for k, f in fwd.items()}
            print("tower 4x720p vs HF fp32, pooled: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()),
                  flush=True)
            del ref
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["kernel", "tower"])
    ap.add_argument("--winner", default=None)
    ap.add_argument("--all-shapes", action="store_true")
    ap.add_argument("--workloads", nargs="+", default=["4x720p", "16 mixed"])
    a = ap.parse_args()
    if os.environ.get("QVDP_QKV_ROPE_CONFIG"):
        print("QVDP_QKV_ROPE_CONFIG =", os.environ["QVDP_QKV_ROPE_CONFIG"])
    kernel(a) if a.mode == "kernel" else tower(a)


if __name__ == "__main__":
    main()
