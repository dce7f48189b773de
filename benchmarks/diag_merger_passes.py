"""The merger's memory-bound passes against a copy of the same bytes (diagnostics, one GPU).

Session 24's context profile (diag_merger_context.py, H200) had the norm pass at 2.7 TB/s, the post-shuffle
statistics pass at 2.2 TB/s and aten's in-place GELU at 2.7 TB/s, where a copy of the same bytes runs at
3.4-3.9. Candidates:

  norm / stats    qvdp's row_norm / row_stats with their default tiles (norm_tiles: the row as two power-of-two
                  blocks where the width allows, 1152 = 1024 + 128, 4608 = 4096 + 512, so no lane is masked off),
                  session 23's tiles (the row padded to a power of two: 1152 -> 2048), and split tiles with
                  ROWS rows per program x num_warps
  gelu            (written here) an in-place exact-erf GELU over a flat block per program (BLOCK x num_warps),
                  against aten's gelu_ (the "cublas" form's pass), alone and right after the cuBLAS fc1 that writes
                  its input

Every system is timed in turn, round after round (each sample 10 calls behind the tuner's GPU busy-wait, i.e. GPU
time), and the median of the rounds is printed with the bytes moved per second.

    python benchmarks/diag_merger_passes.py [--rounds 15] [--rows 3520 6400] [--no-gelu]
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from _common import interleaved_ms as interleaved, report_bandwidth as report

from qvdp.ops.patch_merger import norm_tiles, row_norm, row_stats


@triton.jit
def _gelu_(H, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    h = tl.load(H + offs, mask=m, other=0.0).to(tl.float32)
    y = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    tl.store(H + offs, y.to(H.dtype.element_ty), mask=m)


def s23_tiles(width):
    """session 23's tiles: one block padded to a power of two, min(16, 8192 / block) rows, 4 or 8 warps"""
    block = triton.next_power_of_2(width)
    rows = max(1, min(16, 8192 // block))
    return block, 0, rows, 4 if block * rows <= 4096 else 8


def split_tiles(width, rows, warps):
    block, tail, _, _ = norm_tiles(width)
    return block, tail, rows, warps


def gelu_(h, block, warps):
    n = h.numel()
    _gelu_[(triton.cdiv(n, block),)](h, n, BLOCK=block, num_warps=warps)






def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rows", type=int, nargs="+", default=[3520, 6400])
    ap.add_argument("--no-gelu", action="store_true", help="skip the GELU pass (s24c: aten's gelu_ the fastest)")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    for M in a.rows:
        for H, n in ((1152, 4 * M), (1024, 4 * M), (4608, M)):  # pre-norm passes, and the post-shuffle norm
            x = (torch.randn(n, H, device="cuda", generator=g) * 2 + 0.3).bfloat16()
            w = (1 + 0.1 * torch.randn(H, device="cuda", generator=g)).bfloat16()
            b = (0.1 * torch.randn(H, device="cuda", generator=g)).bfloat16()
            y = torch.empty_like(x)
            fns = {f"row_norm default {norm_tiles(H)}": lambda: row_norm(x, w, b, H, 1e-6, False),
                   f"row_norm session 23 {s23_tiles(H)}": lambda: row_norm(x, w, b, H, 1e-6, False, s23_tiles(H)),
                   "copy_ (same bytes)": lambda: y.copy_(x)}
            for rows in ((1, 2, 4) if H <= 2048 else (1, 2)):
                for warps in (2, 4, 8):
                    t = split_tiles(H, rows, warps)
                    fns[f"row_norm {t}"] = lambda t=t: row_norm(x, w, b, H, 1e-6, False, t)
            report(f"norm pass, {n} x {H}", interleaved(fns, a.rounds), {k: 2 * x.numel() * 2 for k in fns})
        K = 4608  # the post-shuffle statistics pass: M merged rows of 4H
        xm = (torch.randn(M, K, device="cuda", generator=g) * 2 + 0.3).bfloat16()
        mean, rstd = torch.empty(M, device="cuda"), torch.empty(M, device="cuda")
        fns = {f"row_stats default {norm_tiles(K)}": lambda: row_stats(xm, mean, rstd, K, 1e-6, False, negm=True),
               f"row_stats session 23 {s23_tiles(K)}":
                   lambda: row_stats(xm, mean, rstd, K, 1e-6, False, negm=True, tiles=s23_tiles(K)),
               "sum over rows (torch, fp32 out)": lambda: xm.sum(1, dtype=torch.float32)}
        for rows in (1, 2):
            for warps in (2, 4, 8):
                t = split_tiles(K, rows, warps)
                fns[f"row_stats {t}"] = lambda t=t: row_stats(xm, mean, rstd, K, 1e-6, False, negm=True, tiles=t)
        report(f"stats pass, {M} x {K}", interleaved(fns, a.rounds), {k: xm.numel() * 2 for k in fns})
        if a.no_gelu:
            continue
        # the GELU pass on fc1's output [M, 4H]; alone (input not in L2 beyond what the last call left) and right
        # after the cuBLAS fc1 that writes it
        h = torch.randn(M, K, device="cuda", generator=g).bfloat16()
        h0 = h.clone()
        gelu_(h, 4096, 8)
        err = ((h.float() - torch.nn.functional.gelu(h0.float())).norm() / h0.float().norm()).item()
        fns = {"aten gelu_ (cublas form)": lambda: torch.ops.aten.gelu_(h),
               "copy_ (same bytes)": lambda: h0.copy_(h)}
        for block in (1024, 2048, 4096, 8192):
            for warps in (4, 8):
                fns[f"gelu block {block} warps {warps}"] = lambda block=block, warps=warps: gelu_(h, block, warps)
        report(f"GELU pass, {M} x {K} (err {err:.1e})", interleaved(fns, a.rounds), {k: 2 * h.numel() * 2 for k in fns})
        xn = torch.randn(M, K, device="cuda", generator=g).bfloat16()
        w1 = (torch.randn(K, K, device="cuda", generator=g) / K ** 0.5).bfloat16()
        b1 = torch.randn(K, device="cuda", generator=g).bfloat16()
        fns = {"addmm": lambda: torch.addmm(b1, xn, w1.t(), out=h),
               "addmm + aten gelu_": lambda: torch.ops.aten.gelu_(torch.addmm(b1, xn, w1.t(), out=h))}
        for block, warps in ((2048, 4), (4096, 8), (8192, 8)):
            fns[f"addmm + gelu block {block} warps {warps}"] = (
                lambda block=block, warps=warps: gelu_(torch.addmm(b1, xn, w1.t(), out=h), block, warps))
        report(f"fc1 + GELU in context, {M} x {K}", interleaved(fns, a.rounds), {k: 2 * h.numel() * 2 for k in fns})


if __name__ == "__main__":
    main()
