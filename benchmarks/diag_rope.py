"""RoPE pass tuning (diagnostics): qvdp.ops.attention.rope_qk at 4 x 3520 x 16 x 72 bf16 (q, k strided
views of a packed qkv, as in the tower), for each implementation and tile size, against the bandwidth
floor (read q, k, cos, sin; write q, k at 3.35 TB/s). Prints one line per variant and the fastest.

    python benchmarks/diag_rope.py [--winner FILE]   # FILE gets the fastest impl's name
"""
import argparse

import torch
import triton

from qvdp.ops.attention import rope_qk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--winner", default=None)
    a = ap.parse_args()
    T, H, D = 14080, 16, 72
    qkv = torch.randn(T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    q, k = qkv[:, 0], qkv[:, 1]
    ang = torch.rand(T, D, device="cuda") * 40
    cos, sin = ang.cos(), ang.sin()
    ref = rope_qk(q, k, cos, sin, impl="lanes")
    nbytes = 4 * T * H * D * 2 + 4 * T * D * 4
    floor_us = nbytes / 3.35e12 * 1e6
    print(f"{T} x {H} x {D} bf16: {nbytes / 1e6:.1f} MB, floor {floor_us:.1f} us at 3.35 TB/s")
    best = None
    for impl, kw in (("lanes", dict(lanes=1024, elems=8192)), ("lanes", dict(lanes=256, elems=4096)),
                     ("tile", dict(elems=4096)), ("tile", dict(elems=8192)), ("tile", dict(elems=16384)),
                     ("tile", dict(elems=32768))):
        out = rope_qk(q, k, cos, sin, impl=impl, **kw)
        same = all(torch.equal(x, y) for x, y in zip(out, ref))
        ms = triton.testing.do_bench(lambda: rope_qk(q, k, cos, sin, impl=impl, **kw), warmup=50, rep=300)
        us = ms * 1e3
        print(f"{impl:5s} {kw}: {us:6.1f} us  {nbytes / (us * 1e-6) / 1e9:7.0f} GB/s  {us / floor_us:.2f}x floor  "
              f"equal to v3: {same}")
        if same and (best is None or us < best[0]):
            best = (us, impl, kw)
    print("fastest:", best)
    if a.winner and best:
        with open(a.winner, "w") as f:
            f.write(best[1])


if __name__ == "__main__":
    main()
