"""Session 25: the merger's norm / statistics passes with the row read as NCH equal power-of-two chunks.

    python benchmarks/diag_merger_chunks.py [--rounds 15]

Offline compiles for sm_90a (Triton 3.9's ptxas) showed why the 1152-wide norm runs at 2.6-2.9 TB/s while the
1024-wide one reaches 3.4-3.6: the row read as a 1024-wide and a 128-wide block (norm_tiles) gives the two blocks
different register layouts, so every row reduction and broadcast between them goes through shared memory (15 barriers,
40 shared loads / stores per program) and the kernel holds 122 registers (the 1024-wide one: 55, no barrier but
three). Here the row is NCH chunks of CW columns (1152 = 9 x 128, 4608 = 9 x 512), every chunk the same [ROWS, CW]
block: pass 1 sums the chunks, pass 2 sums the squared deviations (exact centred variance), pass 3 normalises and
stores; passes 2 and 3 read the row again (from registers where the compiler keeps the loads, else from L1). The
kernels are qvdp's (patch_merger._row_norm_chunks / _row_stats_chunks, chunk_tiles; s25f ran them from this file).
Timed against the current kernels and a copy of the same bytes, every system in turn (samples behind the tuner's
busy-wait: GPU time), median of the rounds; each chunked variant checked against an fp32 torch reference first.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton

from _common import interleaved_ms as interleaved, report_bandwidth as report

from qvdp.ops.patch_merger import norm_tiles, row_norm, row_stats


def norm_chunks(x, w, b, width, cw, rows, warps, rms=False):
    return row_norm(x, w, b, width, 1e-6, rms, chunks=(cw, rows, warps))


def stats_chunks(x, mean, rstd, width, cw, rows, warps, rms=False):
    row_stats(x, mean, rstd, width, 1e-6, rms, negm=True, chunks=(cw, rows, warps))






def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    # (width, rows of x): pre-norm 1152 at 3520 / 6400 merged rows, post-shuffle 4608 at 3520 / 6400
    for H, n in ((1152, 14080), (1152, 25600), (4608, 3520), (4608, 6400)):
        x = (torch.randn(n, H, device="cuda", generator=g) * 2 + 0.3).bfloat16()
        w = (1 + 0.1 * torch.randn(H, device="cuda", generator=g)).bfloat16()
        b = (0.1 * torch.randn(H, device="cuda", generator=g)).bfloat16()
        y = torch.empty_like(x)
        ref = F.layer_norm(x.float(), (H,), w.float(), b.float(), 1e-6)
        refr = w.float() * x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        fns = {f"row_norm default {norm_tiles(H)}": lambda: row_norm(x, w, b, H, 1e-6, False),
               "row_norm padded (2048/8192, 0, 4/1, 8)": lambda: row_norm(
                   x, w, b, H, 1e-6, False, (triton.next_power_of_2(H), 0, 4 if H <= 2048 else 1, 8)),
               "copy_ (same bytes)": lambda: y.copy_(x)}
        cws = (128,) if H == 1152 else (512,)
        for cw in cws:
            for rows, warps in ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (8, 4), (1, 4)):
                if rows * cw < 32 * warps * 4:  # fewer than 4 columns (8 bytes) per thread
                    continue
                e = rel(norm_chunks(x, w, b, H, cw, rows, warps), ref)
                er = rel(norm_chunks(x, w, None, H, cw, rows, warps, rms=True), refr)
                if e > 1e-2 or er > 1e-2:
                    print(f"  chunks cw {cw} rows {rows} warps {warps}: WRONG (ln {e:.1e}, rms {er:.1e})")
                    continue
                fns[f"chunks cw {cw} rows {rows} warps {warps}"] = (
                    lambda cw=cw, rows=rows, warps=warps: norm_chunks(x, w, b, H, cw, rows, warps))
        print(f"\n(norm {n} x {H}: default err {rel(row_norm(x, w, b, H, 1e-6, False), ref):.1e})")
        report(f"norm pass, {n} x {H}", interleaved(fns, a.rounds), 2 * x.numel() * 2)
        if H != 4608:
            continue
        mean, rstd = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
        xf = x.float()
        mref, rref = xf.mean(-1), torch.rsqrt(xf.var(-1, unbiased=False) + 1e-6)
        fns = {f"row_stats default {norm_tiles(H)}": lambda: row_stats(x, mean, rstd, H, 1e-6, False, negm=True),
               "sum over rows (torch, fp32 out)": lambda: x.sum(1, dtype=torch.float32)}
        for cw in cws:
            for rows, warps in ((1, 1), (1, 2), (1, 4), (2, 2), (2, 4), (4, 4)):
                if rows * cw < 32 * warps * 4:
                    continue
                stats_chunks(x, mean, rstd, H, cw, rows, warps)
                e = max(rel(rstd, rref), rel(-mean / rstd, mref))
                if e > 1e-5:
                    print(f"  stats chunks cw {cw} rows {rows} warps {warps}: WRONG ({e:.1e})")
                    continue
                fns[f"stats chunks cw {cw} rows {rows} warps {warps}"] = (
                    lambda cw=cw, rows=rows, warps=warps: stats_chunks(x, mean, rstd, H, cw, rows, warps))
        report(f"stats pass, {n} x {H}", interleaved(fns, a.rounds), x.numel() * 2)


if __name__ == "__main__":
    main()
