"""Varlen vision attention with 2D RoPE: qvdp (RoPE fused) vs FA3 / torch FA2 / cuDNN / FlexAttention,
each of the others with a separate RoPE as HF applies it. One card, one run, all side by side.

    python benchmarks/bench_attention.py [--out DIR] [--skip NAME ...]

Kernel forms and tiles are swept (with a correctness check per config) by diag_attention.py.

TFLOP/s counts attention only: 4 * sum(s^2) * H * D.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import attention_inputs, bar_plot, bench, try_import_fa3, write_results

import os

from qvdp.ops.attention import (_varlen_attention_triton, attention_config, build_block_map, flash_attn_available,
                                varlen_attention)
from qvdp.reference import apply_rope, attention_reference

SHAPES = [  # (name, segment lengths, heads, head dim)
    ("D72 4x3520", [3520] * 4, 16, 72),
    ("D72 4x6400", [6400] * 4, 16, 72),
    ("D72 mixed", [256, 1024, 3520, 6400, 16384], 16, 72),
    ("D72 video 16x3520", [3520] * 16, 16, 72),
    ("D80 4x3520", [3520] * 4, 16, 80),
    ("D64 4x3520", [3520] * 4, 16, 64),
]


make = attention_inputs  # (lens, H, D, dtype, seed) -> qkv, cu_seqlens, cos, sin


def pointer_config(D, max_seqlen):
    """The v4 kernel's tile for this head dim: the shipped config (without a QVDP_ATTN_CONFIG override)
    run with pointer loads."""
    saved = os.environ.pop("QVDP_ATTN_CONFIG", None)
    try:
        cfg = dict(attention_config(D, max_seqlen, "cuda"))
    finally:
        if saved is not None:
            os.environ["QVDP_ATTN_CONFIG"] = saved
    cfg.pop("TMA", None)
    return cfg


def systems(fa3):
    def qvdp_sys(qkv, cu, cos, sin, lens, bm):
        q, k, v = qkv.unbind(1)
        return lambda: varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin, validate=False, block_map=bm)

    def hf_rope(qkv, cos, sin):
        q, k, v = qkv.unbind(1)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def fa3_sys(qkv, cu, cos, sin, lens, bm):
        def f():
            q, k, v = hf_rope(qkv, cos, sin)
            return fa3(q, k, v, cu, cu, max(lens), max(lens))
        return f

    def fa3_only(qkv, cu, cos, sin, lens, bm):
        q, k, v = hf_rope(qkv, cos, sin)
        v = v.contiguous()
        return lambda: fa3(q, k, v, cu, cu, max(lens), max(lens))

    def fa2_sys(qkv, cu, cos, sin, lens, bm):
        try:
            from torch.nn.attention.varlen import varlen_attn

            def f():
                q, k, v = hf_rope(qkv, cos, sin)
                return varlen_attn(q, k, v.contiguous(), cu, cu, max(lens), max(lens))
        except Exception:
            def f():
                q, k, v = hf_rope(qkv, cos, sin)
                return torch.ops.aten._flash_attention_forward(q, k, v.contiguous(), cu, cu, max(lens), max(lens),
                                                               0.0, False, False)[0]
        return f

    def cudnn_sys(qkv, cu, cos, sin, lens, bm):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        offs = [0]
        for s in lens:
            offs.append(offs[-1] + s)

        def f():
            q, k, v = hf_rope(qkv, cos, sin)
            out = torch.empty_like(q)
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                for a, b in zip(offs[:-1], offs[1:]):
                    qs, ks, vs = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
                    out[a:b] = F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1)
            return out
        return f

    def flex_sys(qkv, cu, cos, sin, lens, bm):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        T = qkv.shape[0]
        doc = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))

        def mask_mod(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]
        block_mask = create_block_mask(mask_mod, None, None, T, T, device="cuda")
        flex = torch.compile(flex_attention, dynamic=False)

        def f():
            q, k, v = hf_rope(qkv, cos, sin)
            D = q.shape[-1]
            pad = (-D) % 16
            qq, kk, vv = (F.pad(x, (0, pad)).transpose(0, 1).unsqueeze(0) for x in (q, k, v.contiguous()))
            return flex(qq, kk, vv, block_mask=block_mask, scale=D ** -0.5)[0, :, :, :D].transpose(0, 1)
        return f

    def qvdp_fa3_sys(qkv, cu, cos, sin, lens, bm):
        q, k, v = qkv.unbind(1)
        return lambda: varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin, validate=False, backend="fa3")

    def qvdp_fa2_sys(qkv, cu, cos, sin, lens, bm):
        q, k, v = qkv.unbind(1)
        return lambda: varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin, validate=False,
                                        backend="flash_attn")

    def qvdp_v4_sys(qkv, cu, cos, sin, lens, bm):
        q, k, v = qkv.unbind(1)
        cfg = pointer_config(q.shape[-1], max(lens))
        bm4 = build_block_map(cu, q.shape[0], cfg["BLOCK_M"])
        return lambda: _varlen_attention_triton(q, k, v, cu, max(lens), cos, sin, q.shape[-1] ** -0.5, bm4, cfg)

    def qvdp_v9_sys(qkv, cu, cos, sin, lens, bm):  # the Triton kernel the Gluon one (v13) replaced at D=64
        q, k, v = qkv.unbind(1)
        cfg = dict(attention_config(q.shape[-1], max(lens), "cuda"), GLUON=0)
        return lambda: _varlen_attention_triton(q, k, v, cu, max(lens), cos, sin, q.shape[-1] ** -0.5, bm, cfg)

    def qvdp_only(qkv, cu, cos, sin, lens, bm):
        # the attention alone on q, k rotated before (as the tower's qkv GEMM leaves them when it applies the
        # rotary in its epilogue): the counterpart of 'FA3 attn only'
        q, k, v = hf_rope(qkv, cos, sin)
        rot = torch.stack([q, k, v], 1)  # packed [T, 3, H, D] like the qkv GEMM output
        q, k, v = rot.unbind(1)
        return lambda: varlen_attention(q, k, v, cu, max(lens), validate=False, block_map=bm)

    out = {"qvdp (RoPE fused)": qvdp_sys, "qvdp attn only": qvdp_only}
    if any(attention_config(D, max(lens), "cuda").get("TMA") for _, lens, _, D in SHAPES):
        out["qvdp v4 pointer loads"] = qvdp_v4_sys
    if any(attention_config(D, max(lens), "cuda").get("GLUON") for _, lens, _, D in SHAPES):
        out["qvdp v9 Triton kernel"] = qvdp_v9_sys
    if flash_attn_available():  # the optional flash-attn package (FA2): qvdp's RoPE pass + its varlen kernel
        out["qvdp RoPE pass + flash-attn"] = qvdp_fa2_sys
    else:
        print("flash-attn not importable: the 'qvdp RoPE pass + flash-attn' row is skipped")
    if fa3 is not None:
        out["qvdp RoPE pass + FA3"] = qvdp_fa3_sys
        out["FA3 + RoPE"] = fa3_sys
        out["FA3 attn only"] = fa3_only
    out["torch FA2 varlen + RoPE"] = fa2_sys
    out["cuDNN per segment + RoPE"] = cudnn_sys
    out["FlexAttention + RoPE"] = flex_sys
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--shapes", nargs="*", default=None, help="only shapes whose name contains one of these")
    args = ap.parse_args()
    fa3 = try_import_fa3()
    sysd = {k: v for k, v in systems(fa3).items() if not any(s in k for s in args.skip)}
    names = list(sysd)
    table, tflops = [], {n: [] for n in names}
    shapes = [x for x in SHAPES if args.shapes is None or any(k in x[0] for k in args.shapes)]
    for sname, lens, H, D in shapes:
        qkv, cu, cos, sin = make(lens, H, D)
        fl = 4.0 * sum(s * s for s in lens) * H * D
        bm = build_block_map(cu, qkv.shape[0], attention_config(D, max(lens), "cuda")["BLOCK_M"])
        # correctness of qvdp on this very input, vs fp32 torch (first 2 heads, to keep it cheap)
        q, k, v = qkv.unbind(1)
        got = varlen_attention(q, k, v, cu, max(lens), cos=cos, sin=sin)
        sub = slice(0, 2)
        ref = attention_reference(q[:, sub], k[:, sub], v[:, sub], cu, cos, sin, dtype=torch.float32)
        err = ((got[:, sub].float() - ref).norm() / ref.norm()).item()
        res = {}
        for n in names:
            try:
                fn = sysd[n](qkv, cu, cos, sin, lens, bm)
                fn()
                torch.cuda.synchronize()
                res[n] = bench(fn)
            except Exception as e:  # noqa: BLE001
                print(f"[{n}] {sname}: {type(e).__name__}: {str(e)[:200]}")
                res[n] = None
        for n in names:
            ms = res[n]
            tf = fl / ms / 1e9 if ms else None
            tflops[n].append(tf)
            ratio = (res[n] / res["qvdp (RoPE fused)"]) if (ms and res.get("qvdp (RoPE fused)")) else None
            table.append([sname, n, ms if ms else "n/a", tf if tf else "n/a",
                          f"{ratio:.2f}x" if ratio else "n/a", f"{err:.1e}" if n == "qvdp (RoPE fused)" else ""])
        print(table[-len(names):], flush=True)
    notes = ("ratio = system time / qvdp time (>1: qvdp faster). 'FA3 attn only' and 'qvdp attn only' exclude the "
             "RoPE pass (q and k rotated before; qvdp's in a packed [T, 3, H, D] tensor as the tower's qkv GEMM with "
             "the rotary in its epilogue leaves them); 'qvdp RoPE pass + FA3' is qvdp's backend='fa3' (one Triton "
             "RoPE launch, then FA3); the other anchors include HF's fp32 RoPE on q and k. err: qvdp vs fp32 torch "
             "reference, ‖out−ref‖/‖ref‖.")
    write_results("attention", "Varlen vision attention with 2D RoPE (bf16, fwd)",
                  ["shape", "system", "ms", "TFLOP/s", "time / qvdp", "err"], table, notes, out_dir=args.out)
    bar_plot("attention", [s[0] for s in shapes], tflops, "TFLOP/s (attention FLOPs)", out_dir=args.out)


if __name__ == "__main__":
    main()
