"""Patch merger: norm + 2x2 merge + Linear + GELU + Linear.

Triton path (CUDA, or CPU under TRITON_INTERPRET=1):
  1. `_row_stats_tile`: mean / rstd of every norm row (per patch over H, or per merged row over 4H
     for the deepstack mergers' post-shuffle norm; RMSNorm: rstd only), fp32, one read of x;
  2. `_fc1_fold_tma` (default, "tma"): the norm folded into the weights (WG = W1 * gamma, cached), so
     the first GEMM reads raw x through TMA; per patch chunk p the accumulator gets rstd_p applied by
     rescaling between chunks, then the centring term, b1 + W1 @ beta, and exact-erf GELU in the
     epilogue. The normalised [N, H] tensor is never written; the [N/4, 4H] intermediate is.
     Older forms kept for comparison (QVDP_MERGER_VARIANT): "tmap" (persistent), "fold" (pointer
     loads, two accumulators), "load" (x tiles normalised in registers on load);
  3. the second GEMM with its bias: torch.addmm (cuBLAS, bias fused in its epilogue).
CUTLASS path (backend="cutlass", bf16 on Hopper, `csrc/merger_gemm.cu` via qvdp.ops.merger_gemm): fc1
as one CUTLASS TMA warp-specialised GEMM whose epilogue-visitor tree applies the folded post-shuffle
norm (rstd, -mean*rstd, rowsum(WG), b1 + W1 @ beta) or the bias, and exact-erf GELU; per-patch norms
run torch's norm kernel first. fc2 by cuBLAS.
The torch path (CPU and CUDA default, reference) runs norm -> view -> addmm -> gelu -> addmm.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F

from ._stamp import stamp
from ._direct import call_direct
from ._triton_utils import FP_FUSION, HAS_TRITON, gdc_launch_dependents, gdc_wait, triton_usable

if HAS_TRITON:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    @triton.jit
    def _pdl_start(PDL: tl.constexpr):
        # a pass launched as a programmatic dependent (launch_pdl): let the kernel after it launch now (the
        # CUTLASS fc1 / fc2 behind it are PDL launches that wait for this grid's completion before their first
        # load), then wait for the kernel before it to complete before any global access of this one
        if PDL:
            gdc_launch_dependents()
            gdc_wait()

    @triton.jit
    def _gelu_erfc(x):
        # exact-erf GELU as x * (1 - q) (x >= 0) or x * q (x < 0), q = erfc(|x| / sqrt 2) / 2 from the fit in
        # csrc/qvdp_cutlass_gemm.h (GeluErfc: t exp(-x^2 / 2) P(t), t = 1 / (1 + 0.335 |x| / sqrt 2), relative
        # error of erfc 1.6e-7 on [0, 14]); ~15 FP32 instructions and 2 MUFU against libdevice erf's ~24, and no
        # cancellation in the negative tail
        a = tl.abs(x)
        t = tl.math.fdiv(1.0, 1.0 + 0.2368807717 * a)  # div.full.f32 (ieee_rounding=False)
        p = -6.006897883e-02 * t + 1.881990598e-01
        p = p * t - 1.140790118e-01
        p = p * t + 1.547405906e-01
        p = p * t + 4.730256656e-02
        p = p * t + 9.557727363e-02
        p = p * t + 9.379387755e-02
        p = p * t + 9.453454161e-02
        q = t * p * tl.math.exp2((a * -0.72134752) * a)
        return x * tl.where(x >= 0, 1.0 - q, q)

    @triton.jit
    def _gelu_inplace(Y, n, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
        # the cublas form's GELU pass over fc1's output, in place (flat blocks of BLOCK elements)
        _pdl_start(PDL)
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        y = _gelu_erfc(tl.load(Y + offs, mask=m).to(tl.float32))
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _bias_gelu_inplace(Y, B, M, N, BR: tl.constexpr, BC: tl.constexpr, I64: tl.constexpr,
                           PDL: tl.constexpr = False):
        # the "cublas-mm" form's pass over fc1's output (torch.mm, no bias), in place: + b1, exact-erf GELU, over
        # [BR, BC] blocks, the programs along a row first (grid (cdiv(N, BC), cdiv(M, BR))), int32 offsets where
        # M * N allows (s29f, H200, 3520 x 4608: level with the plain GELU pass; row blocks first with int64
        # offsets, or flat blocks with the column as offs % N, cost 1-3 us more)
        _pdl_start(PDL)
        rows = tl.program_id(1) * BR + tl.arange(0, BR)
        cols = tl.program_id(0) * BC + tl.arange(0, BC)
        cm = cols < N
        b = tl.load(B + cols, mask=cm).to(tl.float32)
        if I64:
            offs = (rows.to(tl.int64) * N)[:, None] + cols[None, :]
        else:
            offs = (rows * N)[:, None] + cols[None, :]
        m = (rows[:, None] < M) & cm[None, :]
        y = tl.load(Y + offs, mask=m).to(tl.float32) + b[None, :]
        tl.store(Y + offs, _gelu_erfc(y).to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _bias_gelu_store(acc, C, Y, rows64, rmask, cols, cmask, stride_ym):
        # fc1's epilogue: + C (b1, plus W1 @ beta where the norm has a bias), exact-erf GELU, store
        acc += tl.load(C + cols, mask=cmask, other=0.0)[None, :]
        acc = _gelu_erfc(acc)
        tl.store(Y + rows64[:, None] * stride_ym + cols[None, :], acc.to(Y.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])

    @triton.jit
    def _row_moments(X, base, n_rows, rows, width, eps, RMS: tl.constexpr, BLOCK: tl.constexpr,
                     TAIL: tl.constexpr):
        # ROWS whole rows at X + base, in fp32: (mean, x - mean on the first BLOCK columns and on the TAIL columns
        # after them, 1 / sqrt(var + eps)); exact centred variance; masked lanes are 0. A row is read as two
        # power-of-two blocks (1152 = 1024 + 128, 4608 = 4096 + 512: no lane masked off; s24c, H200: the padded
        # block, 1152 -> 2048, ran the pass at 2.6 TB/s, the split one at 2.8-3.0) or, with TAIL = 0, as one
        # block padded to a power of two. RMSNorm: mean 0, x itself, 1 / sqrt(mean(x^2) + eps).
        rm = rows < n_rows
        ca = tl.arange(0, BLOCK)
        ma = rm[:, None] & (ca < width)[None, :]
        xa = tl.load(X + base + ca[None, :], mask=ma, other=0.0).to(tl.float32)
        if TAIL > 0:
            cb = BLOCK + tl.arange(0, TAIL)
            mb = rm[:, None] & (cb < width)[None, :]
            xb = tl.load(X + base + cb[None, :], mask=mb, other=0.0).to(tl.float32)
        else:  # (a [ROWS, 1] zero stand-in, never stored)
            cb = tl.zeros([1], tl.int32)
            mb = rm[:, None] & (cb < 0)[None, :]
            xb = tl.zeros([1, 1], tl.float32) + tl.sum(xa, 1)[:, None] * 0.0
        if RMS:
            mean = tl.sum(xa, 1) * 0.0
            da = xa
            db = xb
        else:
            mean = (tl.sum(xa, 1) + tl.sum(xb, 1)) / width
            da = tl.where(ma, xa - mean[:, None], 0.0)
            db = tl.where(mb, xb - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt((tl.sum(da * da, 1) + tl.sum(db * db, 1)) / width + eps)
        return mean, da, db, rstd, ca, cb, ma, mb

    @triton.jit
    def _row_stats_tile(X, MEAN, RSTD, n_rows, width, stride_x, eps, RMS: tl.constexpr, ROWS: tl.constexpr,
                        BLOCK: tl.constexpr, NEGM: tl.constexpr, TAIL: tl.constexpr = 0,
                        PDL: tl.constexpr = False):
        # ROWS whole rows per program held in registers: one read of x, exact centred variance
        _pdl_start(PDL)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        base = rows.to(tl.int64)[:, None] * stride_x
        mean, _, _, rstd, _, _, _, _ = _row_moments(X, base, n_rows, rows, width, eps, RMS, BLOCK, TAIL)
        if NEGM:  # the CUTLASS fc1's per-row shift: -mean * rstd
            mean = -mean * rstd
        tl.store(MEAN + rows, mean, mask=rows < n_rows)
        tl.store(RSTD + rows, rstd, mask=rows < n_rows)

    @triton.jit
    def _fold_stats_tile(X, C, RN, n_rows, width, eps, RMS: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK: tl.constexpr, TAIL: tl.constexpr, MU: tl.constexpr):
        # the folded per-patch norm's rescale (csrc/qvdp_fold_mainloop.h): ROWS merged rows per program, each MU
        # patches of `width`; per boundary j: C1 = r_j / r_(j+1), C2 = -mu_j r_j / r_(j+1) (C: [2, MU - 1, n_rows]);
        # the last patch's r and -mu r in RN: [2, n_rows]
        C1 = C
        C2 = C + (MU - 1) * n_rows
        RSTD = RN
        NEGM = RN + n_rows
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rm = rows < n_rows
        prev_r = tl.zeros([ROWS], tl.float32)
        prev_m = tl.zeros([ROWS], tl.float32)
        for j in tl.static_range(MU):
            base = rows.to(tl.int64)[:, None] * (MU * width) + j * width
            mean, _, _, rstd, _, _, _, _ = _row_moments(X, base, n_rows, rows, width, eps, RMS, BLOCK, TAIL)
            if j > 0:
                tl.store(C1 + (j - 1) * n_rows + rows, prev_r / rstd, mask=rm)
                tl.store(C2 + (j - 1) * n_rows + rows, -prev_m * prev_r / rstd, mask=rm)
            prev_r = rstd
            prev_m = mean
        tl.store(RSTD + rows, prev_r, mask=rm)
        tl.store(NEGM + rows, -prev_m * prev_r, mask=rm)

    @triton.jit
    def _row_norm_tile(X, W, B, Y, n_rows, width, eps, RMS: tl.constexpr, HAS_B: tl.constexpr,
                       ROWS: tl.constexpr, BLOCK: tl.constexpr, TAIL: tl.constexpr = 0,
                       PDL: tl.constexpr = False):
        # the norm itself, ROWS whole rows per program: one read of x, fp32 statistics, one write of y
        _pdl_start(PDL)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        base = rows.to(tl.int64)[:, None] * width
        _, da, db, rstd, ca, cb, ma, mb = _row_moments(X, base, n_rows, rows, width, eps, RMS, BLOCK, TAIL)
        ya = da * rstd[:, None] * tl.load(W + ca, mask=ca < width, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            ya += tl.load(B + ca, mask=ca < width, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + base + ca[None, :], ya.to(Y.dtype.element_ty), mask=ma)
        if TAIL > 0:
            yb = db * rstd[:, None] * tl.load(W + cb).to(tl.float32)[None, :]
            if HAS_B:
                yb += tl.load(B + cb).to(tl.float32)[None, :]
            tl.store(Y + base + cb[None, :], yb.to(Y.dtype.element_ty), mask=mb)

    @triton.jit
    def _chunk_moments(X, base, rm, width, eps, RMS: tl.constexpr, ROWS: tl.constexpr, CW: tl.constexpr,
                       NCH: tl.constexpr):
        # ROWS rows at X + base read as NCH chunks of CW columns, every chunk the same [ROWS, CW] block, so no row
        # reduction or broadcast changes register layout (the two-block form, 1152 = 1024 + 128, has the blocks in
        # two layouts: 15 barriers and 122 registers per program, sm_90a). Exact centred variance: pass 1 sums,
        # pass 2 sums the squared deviations (the chunks read again: registers or L1). (mean, rstd, columns, mask)
        c = tl.arange(0, CW)
        m = rm[:, None] & (c < CW)[None, :]
        q = tl.zeros([ROWS, CW], tl.float32)
        if RMS:
            mean = tl.zeros([ROWS], tl.float32)
            for j in tl.static_range(NCH):
                x = tl.load(X + base + j * CW + c[None, :], mask=m, other=0.0).to(tl.float32)
                q += x * x
        else:
            s = tl.zeros([ROWS, CW], tl.float32)
            for j in tl.static_range(NCH):
                s += tl.load(X + base + j * CW + c[None, :], mask=m, other=0.0).to(tl.float32)
            mean = tl.sum(s, 1) / width
            for j in tl.static_range(NCH):
                x = tl.load(X + base + j * CW + c[None, :], mask=m, other=0.0).to(tl.float32)
                d = tl.where(m, x - mean[:, None], 0.0)
                q += d * d
        rstd = 1.0 / tl.sqrt(tl.sum(q, 1) / width + eps)
        return mean, rstd, c, m

    @triton.jit
    def _row_norm_chunks(X, W, B, Y, n_rows, width, eps, RMS: tl.constexpr, HAS_B: tl.constexpr,
                         ROWS: tl.constexpr, CW: tl.constexpr, NCH: tl.constexpr, PDL: tl.constexpr = False):
        # row_norm with the row as NCH chunks of CW columns (chunk_tiles): statistics, then each chunk normalised
        _pdl_start(PDL)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rm = rows < n_rows
        base = rows.to(tl.int64)[:, None] * width
        mean, rstd, c, m = _chunk_moments(X, base, rm, width, eps, RMS, ROWS, CW, NCH)
        for j in tl.static_range(NCH):
            x = tl.load(X + base + j * CW + c[None, :], mask=m, other=0.0).to(tl.float32)
            # (the weight / bias chunk loaded as a [ROWS, CW] block, every row the same addresses: in x's layout; a
            # 1-D load broadcast with [None, :] goes through shared memory once warps split the rows)
            wc = j * CW + c[None, :] + tl.zeros([ROWS, 1], tl.int32)
            y = (x - mean[:, None]) * rstd[:, None] * tl.load(W + wc).to(tl.float32)
            if HAS_B:
                y += tl.load(B + wc).to(tl.float32)
            tl.store(Y + base + j * CW + c[None, :], y.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _row_stats_chunks(X, MEAN, RSTD, n_rows, width, eps, RMS: tl.constexpr, ROWS: tl.constexpr,
                          CW: tl.constexpr, NCH: tl.constexpr, NEGM: tl.constexpr, PDL: tl.constexpr = False):
        # row_stats with the row as NCH chunks of CW columns (chunk_tiles)
        _pdl_start(PDL)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rm = rows < n_rows
        mean, rstd, _, _ = _chunk_moments(X, rows.to(tl.int64)[:, None] * width, rm, width, eps, RMS, ROWS, CW,
                                          NCH)
        if NEGM:
            mean = -mean * rstd
        tl.store(MEAN + rows, mean, mask=rm)
        tl.store(RSTD + rows, rstd, mask=rm)

    @triton.jit
    def _fold_tile(x_desc, w_desc, MEAN, RSTD, S, C, Y, M, N, KC, stride_ym, off_m, off_n, NCHUNK: tl.constexpr,
                   RMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   NUM_STAGES: tl.constexpr):
        # one [BM, BN] output tile of the folded fc1 (v3): TMA loads of raw x and WG, ONE accumulator.
        # The per-chunk scales are applied flash-attention style: after chunk p the accumulator is
        # rescaled by rstd_p / rstd_{p+1}, after the last by rstd_last, which leaves
        # sum_p rstd_p * (x_p @ WG_p^T) without a second [BM, BN] register tile.
        rows = off_m + tl.arange(0, BM)
        cols = off_n + tl.arange(0, BN)
        rmask = rows < M
        cmask = cols < N
        rows64 = rows.to(tl.int64)
        acc = tl.zeros([BM, BN], tl.float32)
        rstd = tl.load(RSTD + rows64 * NCHUNK, mask=rmask, other=1.0)
        for p in tl.static_range(NCHUNK):
            for k0 in tl.range(p * KC, (p + 1) * KC, BK, num_stages=NUM_STAGES):
                a = x_desc.load([off_m, k0])
                b = w_desc.load([off_n, k0])
                acc = tl.dot(a, b.T, acc)
            if p + 1 < NCHUNK:
                rstd_next = tl.load(RSTD + rows64 * NCHUNK + p + 1, mask=rmask, other=1.0)
                acc = acc * (rstd / rstd_next)[:, None]
                rstd = rstd_next
        acc = acc * rstd[:, None]
        if not RMS:  # minus sum_p rstd_p * mean_p * S_p (the centring, folded)
            for p in tl.static_range(NCHUNK):
                r_p = tl.load(RSTD + rows64 * NCHUNK + p, mask=rmask, other=0.0)
                m_p = tl.load(MEAN + rows64 * NCHUNK + p, mask=rmask, other=0.0)
                s_p = tl.load(S + p * N + cols, mask=cmask, other=0.0)
                acc -= (r_p * m_p)[:, None] * s_p[None, :]
        _bias_gelu_store(acc, C, Y, rows64, rmask, cols, cmask, stride_ym)

    @triton.jit
    def _fc1_fold_tma_persistent(x_desc, w_desc, MEAN, RSTD, S, C, Y, M, N, KC, stride_ym, NUM_PROGS,
                                 NCHUNK: tl.constexpr, RMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                 BK: tl.constexpr, GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr):
        # v3p: _fc1_fold_tma as a persistent kernel (one program per SM walking the tiles in grouped
        # order), so the next tile's first loads are issued while this tile's epilogue runs
        num_m = tl.cdiv(M, BM)
        num_n = tl.cdiv(N, BN)
        for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_PROGS, flatten=NCHUNK == 1):
            pid_m, pid_n = _tile_ids(tile, M, N, BM, BN, GROUP_M)
            _fold_tile(x_desc, w_desc, MEAN, RSTD, S, C, Y, M, N, KC, stride_ym, pid_m * BM, pid_n * BN,
                       NCHUNK, RMS, BM, BN, BK, NUM_STAGES)

    @triton.jit
    def _tile_ids(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
        # tile number pid -> (row tile, column tile) in grouped order: GROUP_M row-tiles share each weight
        # column tile while it is in L2
        num_m = tl.cdiv(M, BM)
        num_n = tl.cdiv(N, BN)
        group = pid // (GROUP_M * num_n)
        first_m = group * GROUP_M
        gsize = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * num_n)) % gsize
        pid_n = (pid % (GROUP_M * num_n)) // gsize
        return pid_m, pid_n

    @triton.jit
    def _tile_coords(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
        # this program's output tile: rows, row mask, int64 rows, cols, col mask
        pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BM, BN, GROUP_M)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        return rows, rows < M, rows.to(tl.int64), cols, cols < N

    @triton.jit
    def _fc1_norm_gelu(X, MEAN, RSTD, GAMMA, BETA, W, B, Y, M, N, K, H, stride_xm, stride_wn, stride_ym,
                       POST: tl.constexpr, RMS: tl.constexpr, HAS_BIAS: tl.constexpr, MERGE: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
        rows, rmask, rows64, cols, cmask = _tile_coords(M, N, BM, BN, GROUP_M)
        if POST:  # one norm row per merged row
            mean_r = tl.load(MEAN + rows, mask=rmask, other=0.0)
            rstd_r = tl.load(RSTD + rows, mask=rmask, other=0.0)
        acc = tl.zeros([BM, BN], tl.float32)
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            x = tl.load(X + rows64[:, None] * stride_xm + offs_k[None, :], mask=rmask[:, None], other=0.0)
            if POST:
                mean = mean_r
                rstd = rstd_r
                g_idx = offs_k
            else:  # norm over each patch: the K tile lies inside patch k0 // H (BK divides H)
                p = k0 // H
                mean = tl.load(MEAN + rows64 * MERGE + p, mask=rmask, other=0.0)
                rstd = tl.load(RSTD + rows64 * MERGE + p, mask=rmask, other=0.0)
                g_idx = offs_k - p * H
            gamma = tl.load(GAMMA + g_idx).to(tl.float32)
            xf = x.to(tl.float32)
            if not RMS:
                xf = xf - mean[:, None]
            xn = xf * rstd[:, None] * gamma[None, :]
            if not RMS:
                xn += tl.load(BETA + g_idx).to(tl.float32)[None, :]
            w = tl.load(W + cols[:, None].to(tl.int64) * stride_wn + offs_k[None, :], mask=cmask[:, None], other=0.0)
            acc = tl.dot(xn.to(w.dtype), tl.trans(w), acc)
        if HAS_BIAS:
            acc += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        acc = _gelu_erfc(acc)  # exact GELU (nn.GELU())
        tl.store(Y + rows64[:, None] * stride_ym + cols[None, :], acc.to(Y.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])


    @triton.jit
    def _fc1_folded_gelu(X, MEAN, RSTD, WG, S, C, Y, M, N, K, KC, stride_xm, stride_wn, stride_ym,
                         NCHUNK: tl.constexpr, RMS: tl.constexpr, MERGE: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
        # fc1(norm(x)) with the norm folded into the weights: WG = W1 * gamma (bf16), S = rowsum(WG),
        # C = b1 + W1 @ beta. Per norm chunk p (one patch, or the whole merged row):
        #   acc += rstd_p * (x_p @ WG_p^T) - rstd_p * mean_p * S_p
        # so the tensor cores read raw x straight from memory: a plain pipelined GEMM.
        rows, rmask, rows64, cols, cmask = _tile_coords(M, N, BM, BN, GROUP_M)
        acc = tl.zeros([BM, BN], tl.float32)
        for p in tl.static_range(NCHUNK):
            part = tl.zeros([BM, BN], tl.float32)
            for k0 in range(p * KC, (p + 1) * KC, BK):
                offs_k = k0 + tl.arange(0, BK)
                x = tl.load(X + rows64[:, None] * stride_xm + offs_k[None, :], mask=rmask[:, None], other=0.0)
                w = tl.load(WG + cols[:, None].to(tl.int64) * stride_wn + offs_k[None, :], mask=cmask[:, None],
                            other=0.0)
                part = tl.dot(x, tl.trans(w), part)
            rstd = tl.load(RSTD + rows64 * NCHUNK + p, mask=rmask, other=0.0)
            acc += part * rstd[:, None]
            if not RMS:
                mean = tl.load(MEAN + rows64 * NCHUNK + p, mask=rmask, other=0.0)
                s_p = tl.load(S + p * N + cols, mask=cmask, other=0.0)
                acc -= (rstd * mean)[:, None] * s_p[None, :]
        _bias_gelu_store(acc, C, Y, rows64, rmask, cols, cmask, stride_ym)

    @triton.jit
    def _fc1_fold_tma(x_desc, w_desc, MEAN, RSTD, S, C, Y, M, N, KC, stride_ym,
                      NCHUNK: tl.constexpr, RMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr):
        # v3: the folded fc1 (see _fc1_folded_gelu, _fold_tile), one program per output tile
        pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BM, BN, GROUP_M)
        _fold_tile(x_desc, w_desc, MEAN, RSTD, S, C, Y, M, N, KC, stride_ym, pid_m * BM, pid_n * BN,
                   NCHUNK, RMS, BM, BN, BK, NUM_STAGES)


_FOLD_CACHE = {}


def _folded_weights(norm_weight, norm_bias, fc1_weight, fc1_bias, mu, postshuffle_norm, rms):
    """(WG, S, C) for the folded fc1, cached per weight version (weights are reused every call)."""
    src = (norm_weight, norm_bias, fc1_weight, fc1_bias)
    key = tuple(stamp(t) if t is not None else None for t in src) + (mu, postshuffle_norm, rms)
    hit = _FOLD_CACHE.get(key)
    # the entry holds the source tensors, so their memory cannot be reused by other tensors while cached;
    # the identity check rules out a stale hit
    if hit is not None and all(a is b for a, b in zip(hit[0], src)):
        return hit[1:]
    K = fc1_weight.shape[1]
    nchunk = 1 if postshuffle_norm else mu
    g = norm_weight.float().repeat(nchunk) if not postshuffle_norm else norm_weight.float()
    wg = (fc1_weight.float() * g[None, :]).to(fc1_weight.dtype).contiguous()
    s = wg.float().view(wg.shape[0], nchunk, K // nchunk).sum(-1).t().contiguous()  # [nchunk, N]
    c = fc1_bias.float().clone() if fc1_bias is not None else torch.zeros(wg.shape[0], device=wg.device)
    if not rms and norm_bias is not None:
        b = norm_bias.float().repeat(nchunk) if not postshuffle_norm else norm_bias.float()
        c += fc1_weight.float() @ b
    if len(_FOLD_CACHE) >= 8:  # entries pin their source weights: keep few (one model has 4 mergers)
        _FOLD_CACHE.clear()
    _FOLD_CACHE[key] = (src, wg, s, c.contiguous())
    return _FOLD_CACHE[key][1:]


@functools.lru_cache(maxsize=256)
def norm_tiles(width: int) -> tuple:
    """(BLOCK, TAIL, ROWS, num_warps) of the row norm / statistics kernels for `width`-wide rows: a row as two
    power-of-two blocks where the width allows (1152 = 1024 + 128), else one padded to a power of two; two rows
    per program up to 2048 wide, one above; two warps per program (up to 128 columns per thread, more warps
    beyond). Three calls on freshly started H200s, every configuration timed in turn, median of 25 rounds (s24c,
    s24d, s24e), against session 23's tiles (one padded block, 4-16 rows, 4-8 warps): the norm at 3520 x 4608
    30.0 -> 21.8 us, 6400 x 4608 50.3 -> 35.2, 14080 x 1024 18.7-19.5 -> 16.7-16.8, 25600 x 1024 30.7-30.9 ->
    28.4-28.6; the statistics at 3520 x 4608 12.3 -> 9.1, 6400 x 4608 22.5 -> 18.6; at 1152 wide the calls
    disagreed (14080 rows: 25.1 -> 23.6 and 23.5 -> 24.7; 25600 rows: 45.0 -> 39.0 and 39.1 -> 41.0)."""
    p = triton.next_power_of_2(width)
    half = p // 2
    if p == width:
        block, tail = width, 0
    elif width - half & (width - half - 1) == 0:
        block, tail = half, width - half
    else:
        block, tail = p, 0
    rows = 2 if width <= 2048 else 1
    warps = max(2, min(16, triton.next_power_of_2(-(-rows * width // 4096))))
    return block, tail, rows, warps


@functools.lru_cache(maxsize=256)
def chunk_tiles(width: int, stats: bool = False):
    """(CW, NCH, ROWS, num_warps) of the chunked norm (stats=False) / statistics kernels for `width`-wide rows: the
    row as NCH chunks of CW columns, CW its largest power-of-two divisor up to 128 (norm) / 512 (statistics); None
    where the block kernels (norm_tiles) are used: power-of-two widths, divisors under 32, more than 64 chunks, and
    norms wider than 2048. Every configuration timed in turn on one H200 (s25f, benchmarks/diag_merger_chunks.py,
    median of 15 rounds): the 1152-wide norm 24.7 -> 21.9 us at 14080 rows and 41.1 -> 33.8 us at 25600 (two rows,
    two warps per program; a copy of the bytes 18.0 / 30.5 us), the 4608-wide statistics 9.1 -> 7.9 us at 3520 rows
    and 18.9 -> 17.1 us at 6400 (one row, two warps); the 4608-wide norm was level or slower chunked (21.9 -> 22.7,
    35.1 -> 34.8 at its best), so it keeps the two blocks."""
    if width & (width - 1) == 0 or (not stats and width > 2048):
        return None
    cw = min(width & -width, 512 if stats else 128)
    if cw < 32 or width // cw > 64:
        return None
    rows = max(1, 256 // cw) if stats else 2
    return cw, width // cw, rows, 2


def _chunk_plan(width, tiles, chunks, stats):
    """(CW, NCH, ROWS, num_warps) of a chunked launch, or None for the block kernel (tiles given, or no chunk plan
    for this width); explicit chunks must split the row into equal power-of-two chunks."""
    if tiles is not None and chunks is not None:
        raise ValueError("give tiles (the block kernel) or chunks (the chunked kernel), not both")
    if chunks is None:
        return None if tiles is not None else chunk_tiles(width, stats)
    cw, rows, warps = chunks
    if cw < 1 or cw & (cw - 1) or width % cw:
        raise ValueError(f"chunks: the chunk width must be a power of two dividing the row width {width}, got {cw}")
    return cw, width // cw, rows, warps


# The merger's Triton passes (norm, statistics, GELU) launch as programmatic dependents on CUDA: each lets the
# kernel after it launch at its start and waits for the kernel before it (_pdl_start), so a PDL launch behind it
# (the CUTLASS kernels, merger_gemm.PDL) has its launch and prologue under the pass, and the pass itself may be
# scheduled under a CUTLASS kernel's tail. QVDP_PASS_PDL=0: plain launches.
PASS_PDL = os.environ.get("QVDP_PASS_PDL", "1") != "0"


@functools.lru_cache(maxsize=64)
def _pdl_capable(index) -> bool:
    """Programmatic dependent launch (griddepcontrol) needs sm_90 or newer."""
    return torch.cuda.get_device_capability(index)[0] >= 9


def _pdl(t) -> dict:
    """The launch options of a pass over t: PDL (the kernels' constexpr) and Triton's launch_pdl, on a CUDA device
    of compute capability 9.0 or newer."""
    if PASS_PDL and t.is_cuda and gdc_wait is not None and _pdl_capable(t.get_device()):
        return {"PDL": True, "launch_pdl": True}
    return {}


def row_stats(x, mean, rstd, width, eps, rms, negm=False, tiles=None, chunks=None):
    """mean / rstd (fp32) of every `width`-wide row of x (contiguous), one Triton pass; negm: store
    -mean * rstd in place of the mean. tiles: (BLOCK, TAIL, ROWS, num_warps) for the block kernel, chunks: (CW,
    ROWS, num_warps) for the chunked one; default chunk_tiles(width, stats=True), else norm_tiles(width)."""
    n = mean.numel()
    plan = _chunk_plan(width, tiles, chunks, True)
    if plan:
        cw, nch, rows, warps = plan
        _row_stats_chunks[(triton.cdiv(n, rows),)](x, mean, rstd, n, width, float(eps), RMS=rms, ROWS=rows,
                                                   CW=cw, NCH=nch, NEGM=negm, num_warps=warps, **_pdl(x),
                                                   **FP_FUSION)
        return
    block, tail, rows, warps = tiles or norm_tiles(width)
    _row_stats_tile[(triton.cdiv(n, rows),)](x, mean, rstd, n, width, width, float(eps), RMS=rms, ROWS=rows,
                                             BLOCK=block, NEGM=negm, TAIL=tail, num_warps=warps, **_pdl(x),
                                             **FP_FUSION)


def fold_stats(x, mu, width, eps, rms):
    """The folded per-patch norm's per-row factors for merger_gemm.launch_fold from x [M * mu, width]
    (contiguous): (c1c2 [2, mu - 1, M]: r_j / r_(j+1) and -mu_j r_j / r_(j+1) per patch boundary j; rn [2, M]: the
    last patch's r and -mu r), fp32, one Triton pass."""
    M = x.shape[0] // mu
    c1c2 = torch.empty((2, mu - 1, M), dtype=torch.float32, device=x.device)
    rn = torch.empty((2, M), dtype=torch.float32, device=x.device)
    if M:
        block, tail, rows, warps = norm_tiles(width)
        _fold_stats_tile[(triton.cdiv(M, rows),)](x, c1c2, rn, M, width, float(eps), RMS=rms, ROWS=rows,
                                                  BLOCK=block, TAIL=tail, MU=mu, num_warps=warps, **FP_FUSION)
    return c1c2, rn


def row_norm(x, weight, bias, width, eps, rms, tiles=None, chunks=None):
    """LayerNorm (rms=False) or RMSNorm over every `width`-wide row of x (contiguous), one Triton pass
    in fp32; returns a tensor shaped and typed like x. weight/bias: [width] (bias None: none). tiles:
    (BLOCK, TAIL, ROWS, num_warps) for the block kernel, chunks: (CW, ROWS, num_warps) for the chunked one;
    default chunk_tiles(width), else norm_tiles(width)."""
    y = torch.empty_like(x)
    n = x.numel() // width
    if n == 0:
        return y
    has_b = bias is not None
    weight = weight.contiguous()
    bias = bias.contiguous() if has_b else weight
    plan = _chunk_plan(width, tiles, chunks, False)
    if plan:
        cw, nch, rows, warps = plan
        _row_norm_chunks[(triton.cdiv(n, rows),)](x, weight, bias, y, n, width, float(eps), RMS=rms, HAS_B=has_b,
                                                  ROWS=rows, CW=cw, NCH=nch, num_warps=warps, **_pdl(x),
                                                  **FP_FUSION)
        return y
    block, tail, rows, warps = tiles or norm_tiles(width)
    # (Triton's own launcher: qvdp's fast_launch took 26-34 us of host time per call against its
    # 21-24, s23a, H200, Triton 3.6)
    _row_norm_tile[(triton.cdiv(n, rows),)](x, weight, bias, y, n, width, float(eps),
                                            RMS=rms, HAS_B=has_b, ROWS=rows, BLOCK=block, TAIL=tail,
                                            num_warps=warps, **_pdl(x), **FP_FUSION)
    return y


# the GELU pass's flat block (elements per program, warps): s28a/s28b, H200, 3520 x 4608 after cuBLAS's fc1:
# 2048-8192 elements with 4-8 warps within 1 us of each other
GELU_BLOCK = (4096, 4)


def gelu_(h):
    """Exact-erf GELU of h in place (h contiguous; one Triton pass, _gelu_erfc); aten's gelu_ where Triton cannot
    take h."""
    if not (triton_usable(h) and h.is_contiguous()):
        return torch.ops.aten.gelu_(h)
    n = h.numel()
    if n:
        block, warps = GELU_BLOCK
        _gelu_inplace[(triton.cdiv(n, block),)](h, n, BLOCK=block, num_warps=warps, **_pdl(h), **FP_FUSION)
    return h


# rows x columns x warps per program of bias_gelu_
BIAS_GELU_BLOCK = (8, 512, 4)


def bias_gelu_(h, b):
    """Exact-erf GELU(h + b) in place (h [M, N] contiguous, b [N]; one Triton pass, _bias_gelu_inplace, the sum in
    fp32); torch's add_ then gelu_ where Triton cannot take them."""
    M, N = h.shape
    br, bc, warps = BIAS_GELU_BLOCK
    if not (triton_usable(h) and h.is_contiguous() and b.is_contiguous() and b.device == h.device
            and b.shape == (N,)) or -(-M // br) > 65535:
        return gelu_(h.add_(b))
    if h.numel():
        _bias_gelu_inplace[(triton.cdiv(N, bc), triton.cdiv(M, br))](
            h, b, M, N, BR=br, BC=bc, I64=(M + br) * N >= 2 ** 31, num_warps=warps, **_pdl(h), **FP_FUSION)
    return h


def config_from_tuple(c):
    keys = ("BM", "BN", "BK", "GROUP_M", "num_warps", "num_stages", "persistent")
    return dict(zip(keys, c))


def merger_config(M: int, N: int, device_type: str) -> dict:
    if device_type != "cuda":
        return dict(BM=32, BN=32, BK=32, GROUP_M=4, num_warps=4, num_stages=1)
    env = os.environ.get("QVDP_MERGER_CFG")
    if env:  # experiments: "BM,BN,BK,GROUP_M,num_warps,num_stages[,persistent CTAs per SM]"
        return config_from_tuple(tuple(int(v) for v in env.split(",")))
    # H100 sweep (benchmarks/diag_merger.py, session 5): 128x256x64, 8 warps, 4 stages, one program per
    # tile was best or within 5% of the best on 4 of 5 shapes; persistent and 2-CTA/SM forms were slower
    return dict(BM=128, BN=256, BK=64, GROUP_M=8, num_warps=8, num_stages=4)


def _patch_merger_triton(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                         postshuffle_norm, norm, eps, config=None):
    mu = merge_size * merge_size
    Np, H = x.shape
    M, K = Np // mu, mu * H
    N1 = fc1_weight.shape[0]
    x = x.contiguous()
    rms = norm == "rmsnorm"
    width = K if postshuffle_norm else H
    n_norm_rows = Np * H // width
    mean = torch.empty(n_norm_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if n_norm_rows:
        row_stats(x, mean, rstd, width, eps, rms)
    cfg = config or merger_config(M, N1, x.device.type)
    y = torch.empty((M, N1), dtype=x.dtype, device=x.device)
    variant = os.environ.get("QVDP_MERGER_VARIANT") or "tma"
    if M and variant in ("tma", "tmap"):
        wg, s_, c_ = _folded_weights(norm_weight, norm_bias, fc1_weight, fc1_bias, mu, postshuffle_norm, rms)
        nchunk = 1 if postshuffle_norm else mu
        bm, bn, bk = cfg["BM"], cfg["BN"], cfg["BK"]
        x_desc = TensorDescriptor.from_tensor(x.view(M, K), [bm, bk])
        w_desc = TensorDescriptor.from_tensor(wg, [bn, bk])
        tiles = triton.cdiv(M, bm) * triton.cdiv(N1, bn)
        kw = dict(NCHUNK=nchunk, RMS=rms, BM=bm, BN=bn, BK=bk, GROUP_M=cfg["GROUP_M"], NUM_STAGES=cfg["num_stages"],
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **FP_FUSION)
        if cfg.get("persistent") or variant == "tmap":
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2
            progs = min(tiles, sms * max(1, cfg.get("persistent") or 1))
            _fc1_fold_tma_persistent[(progs,)](x_desc, w_desc, mean, rstd, s_, c_, y, M, N1, K // nchunk,
                                               y.stride(0), progs, **kw)
        else:
            _fc1_fold_tma[(tiles,)](x_desc, w_desc, mean, rstd, s_, c_, y, M, N1, K // nchunk, y.stride(0), **kw)
    elif M and variant == "fold":
        wg, s_, c_ = _folded_weights(norm_weight, norm_bias, fc1_weight, fc1_bias, mu, postshuffle_norm, rms)
        nchunk = 1 if postshuffle_norm else mu
        grid = (triton.cdiv(M, cfg["BM"]) * triton.cdiv(N1, cfg["BN"]),)
        _fc1_folded_gelu[grid](x, mean, rstd, wg, s_, c_, y, M, N1, K, K // nchunk, K, wg.stride(0), y.stride(0),
                               NCHUNK=nchunk, RMS=rms, MERGE=mu, BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"],
                               GROUP_M=cfg["GROUP_M"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                               **FP_FUSION)
    elif M:
        w1 = fc1_weight.contiguous()
        grid = (triton.cdiv(M, cfg["BM"]) * triton.cdiv(N1, cfg["BN"]),)
        _fc1_norm_gelu[grid](x, mean, rstd, norm_weight, norm_bias if norm_bias is not None else norm_weight, w1,
                             fc1_bias if fc1_bias is not None else w1, y, M, N1, K, H, K, w1.stride(0), y.stride(0),
                             POST=postshuffle_norm, RMS=rms, HAS_BIAS=fc1_bias is not None, MERGE=mu,
                             BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], GROUP_M=cfg["GROUP_M"],
                             num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **FP_FUSION)
    return _linear(y, fc2_weight, fc2_bias)


_F32_CACHE = {}


def _f32(t):
    """fp32 copy of a (bias) vector, cached per tensor version."""
    key = (*stamp(t), t.dtype, t.numel())
    hit = _F32_CACHE.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    if len(_F32_CACHE) >= 16:
        _F32_CACHE.clear()
    _F32_CACHE[key] = (t, t.float().contiguous())
    return _F32_CACHE[key][1]


def _normalised(x, norm_weight, norm_bias, merge_size, postshuffle_norm, norm, eps):
    """The norm as the reference applies it, returned as the merged [N / mu, mu * H] view."""
    mu = merge_size * merge_size
    H = x.shape[-1]
    if norm == "layernorm":
        if postshuffle_norm:
            return F.layer_norm(x.reshape(-1, mu * H), (mu * H,), norm_weight, norm_bias, eps)
        return F.layer_norm(x, (H,), norm_weight, norm_bias, eps).reshape(-1, mu * H)
    width = mu * H if postshuffle_norm else H
    xf = x.reshape(-1, width).float()
    y = (norm_weight.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))).to(x.dtype)
    return y.reshape(-1, mu * H)


def cutlass_ok(x, K, N1, fc1_weight=None, *others):
    """The CUTLASS kernels take this merger: bf16 CUDA x on Hopper with the library built, 4H and the fc1 width
    multiples of 8; where given, the operands too (_operands_ok)."""
    from . import merger_gemm
    if not (x.is_cuda and x.dtype == torch.bfloat16 and K % 8 == 0 and N1 % 8 == 0
            and merger_gemm.available(x.device)):
        return False
    return fc1_weight is None or _operands_ok(x, fc1_weight, *others)


def _operands_ok(x, fc1_weight, *others):
    """fc1_weight bf16, and it and `others` (weights, biases; None allowed) on x's device: the CUTLASS kernels
    are launched without merger_gemm's own checks (merger_gemm.launch)."""
    dev = x.get_device()
    return fc1_weight.dtype == torch.bfloat16 and all(t is None or (t.is_cuda and t.get_device() == dev)
                                                      for t in (fc1_weight, *others))


def _patch_merger_cutlass(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                          postshuffle_norm, norm, eps):
    """fc1 + its epilogue in one CUTLASS kernel (csrc/merger_gemm.cu, the default configuration), fc2 by cuBLAS."""
    y = _fc1_cutlass(x, norm_weight, norm_bias, fc1_weight, fc1_bias, merge_size, postshuffle_norm, norm, eps)
    return _linear(y, fc2_weight, fc2_bias)


def _fc1_cutlass(x, norm_weight, norm_bias, fc1_weight, fc1_bias, merge_size, postshuffle_norm, norm, eps,
                 variant=None):
    """The norm and fc1 + GELU by a CUTLASS kernel: GELU(norm(x) @ W1^T + b1), [N / mu, mu * H].
    Post-shuffle LayerNorm ("fold"): one stats pass over the merged rows, the norm folded into fc1
    (WG = W1 * gamma, cached; rstd, -mean * rstd, rowsum(WG), b1 + W1 @ beta in the epilogue): the
    normalised tensor is never written. Per-patch norms and RMSNorm ("prenorm"): qvdp's one-pass Triton
    norm (row_norm) writes the normalised input, then fc1 with bias + GELU in its epilogue (no separate GELU pass).
    A FOLD_VARIANTS configuration (merger_gemm.launch_fold) folds the per-patch norms too: statistics only, the
    accumulator rescaled between the patch chunks."""
    from . import merger_gemm
    mu = merge_size * merge_size
    Np, H = x.shape
    M, K = Np // mu, mu * H
    v = merger_gemm.selected_variant(variant)
    fold = v in merger_gemm.FOLD_VARIANTS  # the per-patch norm folded into the kernel's mainloop: no norm pass
    if fold:
        why = merger_gemm.fold_unavailable_reason(x.device)
        if why:
            raise RuntimeError(f"CUTLASS configuration {v} cannot run: {why}")
        if not postshuffle_norm and (mu != 4 or H % FOLD_BLOCK_K):
            raise ValueError(f"CUTLASS configuration {v} folds 2x2 merges of norms whose width is a multiple of "
                             f"{FOLD_BLOCK_K}, got merge_size={merge_size} and H={H}")
    rms = norm == "rmsnorm"
    # (normalising first: 1-4% slower on most shapes, s10b; the swapped configurations, merger_gemm.BIAS_ONLY, take
    # no per-row vectors and always run on the normalised input)
    if postshuffle_norm and (norm == "layernorm" or fold) and v not in merger_gemm.BIAS_ONLY:
        x = x.contiguous()
        negm = torch.empty(M, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(negm)
        if M:
            row_stats(x, negm, rstd, K, eps, rms, negm=True)
        wg, s_, c_ = _folded_weights(norm_weight, norm_bias, fc1_weight, fc1_bias, mu, True, rms)
        if fold:  # one chunk: the fold kernel without its rescale, the norm in its epilogue as here
            return merger_gemm.launch_fold(x.view(M, K), wg, rstd, negm, s_.view(-1), c_, None, None, None, 0,
                                           variant=v)
        return merger_gemm.launch(x.view(M, K), wg, rstd, negm, s_.view(-1), c_, None, v)
    if fold:
        x = x.contiguous()
        wg, s_, c_ = _folded_weights(norm_weight, norm_bias, fc1_weight, fc1_bias, mu, False, rms)
        c1c2, rn = fold_stats(x, mu, H, eps, rms)
        return merger_gemm.launch_fold(x.view(M, K), wg, rn[0], rn[1], s_[mu - 1], c_, c1c2[0], c1c2[1],
                                       s_[:mu - 1], H // FOLD_BLOCK_K, variant=v)
    # the norm by one Triton pass: 24-26 us vs torch's LayerNorm kernel's 38-39 at 14080 x 1152 (H100, H200)
    xn = _row_normed(x, norm_weight, norm_bias, merge_size, postshuffle_norm, norm, eps)
    return merger_gemm.launch(xn, fc1_weight.contiguous(), None, None, None,
                              _f32(fc1_bias) if fc1_bias is not None else None, None, v)


# the folded-norm kernel's K tile: a patch chunk (H wide) must be whole K tiles, and there are four chunks
FOLD_BLOCK_K = 64


def _fc1_cublas(x, norm_weight, norm_bias, fc1_weight, fc1_bias, merge_size, postshuffle_norm, norm, eps,
                gemm="cublas"):
    """qvdp's one-pass Triton norm, cuBLAS fc1 with its bias, qvdp's GELU pass in place (gelu_: 19.3-19.7 us against
    aten's gelu_'s 23.5-24.3 after the fc1 at 3520 x 4608, s28c, H200). gemm: "cublas" (torch.addmm), "cublas-mm"
    (torch.mm, the bias added in the GELU pass: bias_gelu_) or one of cuBLASLt's candidates ("cublaslt ...",
    _linear_named)."""
    xn = _row_normed(x, norm_weight, norm_bias, merge_size, postshuffle_norm, norm, eps)
    if gemm == MM_FORM and fc1_bias is not None:
        return bias_gelu_(xn @ fc1_weight.t(), fc1_bias)
    return gelu_(_linear_named(gemm, xn, fc1_weight, fc1_bias))


# The cublas form with fc1 as torch.mm and its bias added in the GELU pass (bias_gelu_), a candidate of the "tuned"
# path's fc1 stage where fc1 has a bias. s29e / s29f, one H200, 3520 merged rows, H=1152: cuBLAS runs the same
# 128x160 tile with and without its bias epilogue, without it 6.1-8.3 us faster (mm 188.0-193.3 against addmm
# 194.1-200.3 us); with the pass's bias the whole chain (norm, fc1, GELU, CUTLASS fc2) 5.7 us faster than with addmm
# (340.4 against 346.1 us; post-shuffle 341.2 against 345.7); at 6400 rows (the same 256x128 tile either way) 3 us
# slower. Accuracy as addmm's: the fc1 output 2.54e-3 from fp64 against 2.60e-3 (both round before and after the GELU).
MM_FORM = "cublas-mm"


# The "tuned" path's candidates besides cuBLAS: CUTLASS configurations (qvdp.ops.merger_gemm) for fc1 + GELU
# (VARIANTS) and for fc2 (LINEAR_VARIANTS), timed once per (device model, shape, row bucket) by ops._tune
# (s21a/s21b, H100: cuBLAS's fc1 is strong at N = K = 4608 and weak at 4096, where ping-pong 128x128 (v12) wins;
# for fc2 the ping-pong kernels v14 / v15 / v19 beat cuBLAS on some shapes, the cooperative ones on none;
# s26a/s26b, H200: ping-pong 128x160 (v43) is the pick at most 6400-row shapes, the cooperative 128x160 fc2 (v45)
# at some; s30a, H200: the swapped kernels, tokens as the GEMM's N (merger_gemm.BIAS_ONLY), fc1 v73 / v72 and fc2 v70:
# at 3520 merged rows, H=1152, O=2048 the chain norm + v73 + v70 0.999x the floor against 1.081x for the best before)
TUNE_FC1 = (0, 1, 12, 13, 43, 72, 73)
# (the fc1 with the per-patch norm folded into its mainloop, merger_gemm.FOLD_VARIANTS, is not a candidate: variant 30
# timed as one on one H200 (s24f, s24g) was never picked: with its statistics pass it took
# 0.249 ms against the norm pass + variant 0's 0.238 at 3520 merged rows (pre, H=1152), 0.442 against 0.424 at 6400
# (s24h, benchmarks/diag_merger_fold.py: its kernel 237.7 us with the rescale, 221.3 without; the three drains of the
# MMA pipeline per tile cost 7-10% of the GEMM, more than the norm pass it saves). It stays callable as
# _fc1_cutlass(..., variant=30) and is tested.)
# (the stream-K fc2 kernels 21 / 22 are not candidates: 2-6% ahead of cuBLAS on a few 6400-row fc2 shapes alone, but
# their launch costs ~0.1 ms more host time per call, which made the merger host-bound at 3520 rows in s22g)
TUNE_FC2 = (14, 15, 19, 45, 70)
TUNE_ROWS = 256
# row buckets: multiples of TUNE_ROWS up to TUNE_FINE_ROWS merged rows, then TUNE_PER_OCTAVE per doubling (each
# bucket ~19% wide), so a serving process meeting every image size tunes ~4 buckets per doubling, not one per
# 256 rows (the picks at 3520 / 6400 / 14080 rows stay the same within such a bucket in sessions 21-22)
TUNE_FINE_ROWS = 2048
TUNE_PER_OCTAVE = 4


@functools.lru_cache(maxsize=1024)
def tune_rows(merged_rows: int) -> int:
    """The row bucket a merged-row count is tuned under (its upper edge)."""
    up = lambda r: -(-int(math.ceil(r)) // TUNE_ROWS) * TUNE_ROWS
    edge, k = up(merged_rows), 0
    if edge <= TUNE_FINE_ROWS:
        return edge
    while edge > up(TUNE_FINE_ROWS * 2.0 ** (k / TUNE_PER_OCTAVE)):
        k += 1
    return up(TUNE_FINE_ROWS * 2.0 ** (k / TUNE_PER_OCTAVE))


_DEVICE_MODELS: dict = {}


def _device_model(device) -> str:
    """The device's model and compute capability (a tuning key part that a cache file can carry over)."""
    if device.type != "cuda":
        return device.type
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _DEVICE_MODELS:
        cc = torch.cuda.get_device_capability(idx)
        _DEVICE_MODELS[idx] = f"{torch.cuda.get_device_name(idx)} sm{cc[0]}{cc[1]}"
    return _DEVICE_MODELS[idx]


def tune_keys(device, merged_rows, K, N1, N2, postshuffle_norm, norm):
    """The ops._tune keys of the "tuned" path's two stages (fc1 + GELU, fc2) for this shape."""
    dev, rows = _device_model(device), tune_rows(merged_rows)
    return ("merger.fc1", dev, postshuffle_norm, norm, rows, N1, K), ("merger.fc2", dev, rows, N2, N1)


def _pair_key(key1, N2):
    """The ops._tune key of the "tuned" path's whole-merger round (fc1 + fc2 pairs)."""
    return ("merger.pair",) + key1[1:] + (N2,)


@functools.lru_cache(maxsize=4096)
def _tuned_keys(device, M, K, N1, N2, postshuffle_norm, norm):
    """(fc1 key, fc2 key, pair key) of the "tuned" path for a shape on `device`, kept: the common call's host
    time (s25b, H200: ~20 us of a ~115 us call went to the "tuned" layer's own Python)."""
    key1, key2 = tune_keys(device, M, K, N1, N2, postshuffle_norm, norm)
    return key1, key2, _pair_key(key1, N2)


@functools.lru_cache(maxsize=256)
def _candidate_names(fc1_variants, fc2_variants, fc2_cutlass, lt1=(), lt2=(), mm=False):
    """(fc1 names, fc2 names, their pair names as a frozenset) of the "tuned" path's candidates (lt1 / lt2: the
    cuBLASLt candidates' names for the two GEMMs, _lt_names; mm: the MM_FORM candidate, where fc1 has a bias)."""
    names1 = ("cublas",) + ((MM_FORM,) if mm else ()) + tuple(lt1) + tuple(f"cutlass v{v}" for v in fc1_variants)
    names2 = ("cublas",) + tuple(lt2) + (tuple(f"cutlass v{v}" for v in fc2_variants) if fc2_cutlass else ())
    return names1, names2, frozenset(f"{a} + {b}" for a in names1 for b in names2)


# cuBLASLt's own candidates for the GEMMs (its heuristic's list, up to 8 per shape, qvdp.ops._cublaslt) next to the
# one torch.addmm runs (the first), in the "tuned" path with QVDP_CUBLASLT=1 (off by default). s29a, one H200, each
# GEMM alone against addmm: the best candidate 0.93-0.99x at 19 of the 21 merger GEMM shapes (fc1 at N = K = 4096
# and 3520 / 6400 rows 0.93x, fc2 4608 -> 2048 at 3520 rows 0.97x). But in the merger (s29b, s29c): fc2 by the best
# candidate level with CUTLASS v45 in the whole chain (342.0 against 342.3 us, pre 3520 rows H=1152 O=2048), each
# call ~15-30 us more host time (ctypes), and bench_merger with them 28 of 30 within 1.10x (without: 28-29), several
# 3520-row shapes slower (more candidates, more tuning noise: post 3520 H=1024 O=2048 1.086x against 1.001x).
LT_PREFIX = "cublaslt "


def _lt_names(x, M, N, K, has_bias, weight_dtype):
    """The cuBLASLt candidates' names for [M, K] @ [N, K]^T (+ bias) in x's dtype on x's device (() where they do
    not apply: see _cublaslt.gemm_for)."""
    from . import _cublaslt
    if weight_dtype != x.dtype:
        return ()
    g = _cublaslt.gemm_for(x.device, M, N, K, x.dtype, has_bias)
    return tuple(g.names) if g is not None else ()


def _linear_named(name, y, weight, bias):
    """y @ weight.T (+ bias) by "cublas" (torch.addmm) or by the cuBLASLt candidate `name`; a candidate that is not
    among this shape's, or cannot take these operands (not contiguous, not 256-byte aligned, ...), falls back to
    torch.addmm (the same product, cuBLAS's own choice of kernel)."""
    if name.startswith(LT_PREFIX):
        from . import _cublaslt
        g = _cublaslt.gemm_for(y.device, y.shape[0], weight.shape[0], y.shape[1], y.dtype, bias is not None)
        out = g.run(name, y, weight, bias) if g is not None else None
        if out is not None:
            return out
    return _linear(y, weight, bias)


def tuned_picks(device, merged_rows, K, N1, N2, postshuffle_norm, norm):
    """(fc1, fc2): the candidates the "tuned" path runs for this shape (None where not tuned yet)."""
    from . import _tune
    key1, key2, keyc = _tuned_keys(device, merged_rows, K, N1, N2, postshuffle_norm, norm)
    pair = _tune.choice(keyc)
    return tuple(pair.split(" + ")) if pair else (_tune.choice(key1), _tune.choice(key2))


def _patch_merger_tuned(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                        postshuffle_norm, norm, eps):
    """fc1 + GELU and fc2 each by whichever of cuBLAS (fc1 also as MM_FORM; with QVDP_CUBLASLT=1 also cuBLASLt's
    candidates) and the TUNE_FC1 / TUNE_FC2 CUTLASS kernels was fastest for this shape when first seen (ops._tune);
    then, where more than one candidate of a stage came within
    TUNE_CONTEXT of that stage's best, those pairs timed as whole mergers (the stage run alone is not the stage
    run in context: the L2 holds the other stage's operands, the clock depends on the load before). Untuned
    (CUDA graph capture, QVDP_TUNE=0): the "auto" rule for fc1, cuBLAS for fc2."""
    from . import _tune, merger_gemm
    mu = merge_size * merge_size
    M, K = x.shape[0] // mu, mu * x.shape[1]
    if M == 0:  # an empty rank: nothing to time; the path "auto" took for it before session 21
        return _patch_merger_cublas(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                    merge_size, postshuffle_norm, norm, eps)
    N1, N2 = fc1_weight.shape[0], fc2_weight.shape[0]
    key1, key2, keyc = _tuned_keys(x.device, M, K, N1, N2, postshuffle_norm, norm)
    args = (x, norm_weight, norm_bias, fc1_weight, fc1_bias, merge_size, postshuffle_norm, norm, eps)
    within = _tune_context()
    pair = _tune.choice(keyc) if within > 0 else None
    if pair is not None:  # the common call: the shape was tuned (to kernels this build has: a cache file may not)
        a, _, b = pair.partition(" + ")
        if _runnable(a, TUNE_FC1, True, mm=True) and _runnable(b, TUNE_FC2, _fc2_cutlass_ok(fc2_weight)):
            return _fc2_named(b, _fc1_named(a, args), fc2_weight, fc2_bias)
    names1, names2, _ = _candidate_names(tuple(TUNE_FC1), tuple(TUNE_FC2), _fc2_cutlass_ok(fc2_weight),
                                         _lt_names(x, M, N1, K, fc1_bias is not None, fc1_weight.dtype),
                                         _lt_names(x, M, N2, N1, fc2_bias is not None, fc2_weight.dtype),
                                         fc1_bias is not None)
    pair_reps = _pair_reps_fixed()  # (a bad QVDP_TUNE_PAIR_REPS raises before anything is timed)
    run1 = lambda a: _fc1_named(a, args)
    run2 = lambda b, h: _fc2_named(b, h, fc2_weight, fc2_bias)
    default = f"cutlass v{merger_gemm.selected_variant()}" if M >= CUTLASS_AUTO_MIN_ROWS else "cublas"
    if default not in names1:
        default = "cublas"
    a = _tune.pick(key1, {n: (lambda n=n: run1(n)) for n in names1}, default)
    h = run1(a)
    b = _tune.pick(key2, {n: (lambda n=n: run2(n, h)) for n in names2}, "cublas")
    near1 = [n for n in _tune.near(key1, within) if n in names1]
    near2 = [n for n in _tune.near(key2, within) if n in names2]
    if len(near1) * len(near2) > 1:
        pairs = {f"{p} + {q}": (lambda p=p, q=q: run2(q, run1(p))) for p in near1 for q in near2}
        a, b = _tune.pick(keyc, pairs, f"{a} + {b}", reps=_tune_pair_reps(key1, key2, pair_reps)).split(" + ")
        h = run1(a)
    elif within > 0 and all(len(ns) == 1 or _tune.choice(k) == n
                            for k, ns, n in ((key1, names1, a), (key2, names2, b))):
        _tune.remember(keyc, f"{a} + {b}")  # both stages settled, no pair to time: later calls take the fast path
    return run2(b, h)


def _runnable(name, variants, cutlass_ok, mm=False) -> bool:
    """A stage pick this build and these weights run: "cublas", MM_FORM (mm: the fc1 stage), a cuBLASLt candidate
    (run where it is among the shape's candidates, else torch.addmm: _linear_named), or one of `variants` where the
    CUTLASS kernels apply."""
    if name == "cublas" or (mm and name == MM_FORM) or name.startswith(LT_PREFIX):
        return True
    return cutlass_ok and name.startswith("cutlass v") and name[len("cutlass v"):].isdigit() \
        and int(name[len("cutlass v"):]) in variants


def _fc1_named(name, args):
    """The "tuned" path's fc1 + GELU candidate `name` ("cublas", MM_FORM, "cublaslt ..." or "cutlass v<N>") on
    args."""
    if name == "cublas":
        return _fc1_cublas(*args)
    if name == MM_FORM or name.startswith(LT_PREFIX):
        return _fc1_cublas(*args, gemm=name)
    return _fc1_cutlass(*args, variant=int(name[len("cutlass v"):]))


def _fc2_named(name, h, fc2_weight, fc2_bias):
    """The "tuned" path's fc2 candidate `name` on h (the fp32 bias only where a CUTLASS kernel runs)."""
    if name == "cublas" or name.startswith(LT_PREFIX):
        return _linear_named(name, h, fc2_weight, fc2_bias)
    from . import merger_gemm
    return merger_gemm.launch(h, fc2_weight.contiguous(), None, None, None,
                              _f32(fc2_bias) if fc2_bias is not None else None, None, int(name[len("cutlass v"):]))


def _fc2_cutlass_ok(fc2_weight):
    """The CUTLASS fc2 kernels (merger_gemm.linear) take this weight: bf16, out a multiple of 8 (its device and
    the bias's: cutlass_ok in _patch_merger_impl)."""
    return fc2_weight.shape[0] % 8 == 0 and fc2_weight.dtype == torch.bfloat16


# the "tuned" path's second round: the candidates of a stage within this fraction of the stage's best (at most
# three per stage) are timed again as whole mergers, in pairs (s21: picks 6% apart flipped between runs);
# QVDP_TUNE_CONTEXT overrides it (0: no second round)
TUNE_CONTEXT = 0.08


def _tune_context() -> float:
    raw = os.environ.get("QVDP_TUNE_CONTEXT")
    if raw is None:
        return TUNE_CONTEXT
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"QVDP_TUNE_CONTEXT must be a number (a fraction, 0 turns the pair round off), "
                         f"got {raw!r}") from None


# calls per timed sample in the pair round: enough for a sample to last TUNE_PAIR_SAMPLE_MS (by the stages' fastest
# times), between 3 and TUNE_PAIR_REPS_MAX; QVDP_TUNE_PAIR_REPS fixes the count. 3-call samples (~1 ms at 3520
# merged rows) start on a GPU cooled by the busy-wait in front of them and favoured the more power-hungry CUTLASS
# kernels over what a sustained run measures. s26g (one H200, bench_merger --quick, 3520 merged rows, 3 / 10 / 3
# calls per pair sample): the pick against the best fixed path of the same run (min of the cublas and cutlass
# columns), max 1.019 / 0.997 / 1.015, mean 0.959 / 0.951 / 0.960.
TUNE_PAIR_SAMPLE_MS = 3.0
TUNE_PAIR_REPS_MAX = 10


def _pair_reps_fixed():
    """QVDP_TUNE_PAIR_REPS as a count of calls (None: unset); a bad value is a ValueError (read before the tuning
    launches anything)."""
    raw = os.environ.get("QVDP_TUNE_PAIR_REPS")
    if raw is None:
        return None
    try:
        reps = int(raw)
    except ValueError:
        reps = 0
    if reps < 1:
        raise ValueError(f"QVDP_TUNE_PAIR_REPS must be a whole number of calls >= 1, got {raw!r}")
    return reps


def _tune_pair_reps(key1, key2, fixed=None) -> int:
    """Calls per timed sample of the pair round for the stages tuned under key1 / key2 (fixed: _pair_reps_fixed())."""
    from . import _tune
    if fixed is not None:
        return fixed
    t1, t2 = _tune.timings(key1), _tune.timings(key2)
    per_call = (min(t1.values()) if t1 else 0.0) + (min(t2.values()) if t2 else 0.0)
    if per_call <= 0.0:
        return TUNE_PAIR_REPS_MAX
    return max(3, min(TUNE_PAIR_REPS_MAX, math.ceil(TUNE_PAIR_SAMPLE_MS / per_call)))


def _row_normed(x, norm_weight, norm_bias, merge_size, postshuffle_norm, norm, eps):
    """The merger's norm by row_norm (one Triton pass), as the merged [N / mu, mu * H] rows."""
    mu = merge_size * merge_size
    width = x.shape[1] * (mu if postshuffle_norm else 1)
    return row_norm(x.contiguous(), norm_weight, norm_bias if norm == "layernorm" else None, width, eps,
                    norm == "rmsnorm").view(x.shape[0] // mu, mu * x.shape[1])


def _linear(y, weight, bias):
    """y @ weight.T (+ bias), the bias fused by cuBLAS (addmm)."""
    return torch.addmm(bias, y, weight.t()) if bias is not None else y @ weight.t()


def _triton_ok(x, H, K, cfg_bk=64):
    """The fused path needs BK | H for the per-patch norm; interpreter tiles use BK=32."""
    bk = 32 if x.device.type != "cuda" else cfg_bk
    return H % bk == 0 and K % bk == 0 and x.dtype in (torch.float16, torch.bfloat16, torch.float32)

NORMS = ("layernorm", "rmsnorm")
BACKENDS = ("auto", "cublas", "cutlass", "tuned", "triton", "torch")


def _check(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size, postshuffle_norm,
           norm):
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a tensor [N, H], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    mu = merge_size * merge_size
    N, H = x.shape
    if N % mu:
        raise ValueError(f"x has {N} rows, not a multiple of merge_size^2 = {mu}")
    nw = mu * H if postshuffle_norm else H
    if norm_weight.shape != (nw,):
        raise ValueError(f"norm_weight must have shape [{nw}], got {tuple(norm_weight.shape)}")
    if norm == "layernorm" and (norm_bias is None or norm_bias.shape != (nw,)):
        raise ValueError(f"norm_bias must have shape [{nw}] for layernorm")
    if fc1_weight.ndim != 2 or fc1_weight.shape[1] != mu * H:
        raise ValueError(f"fc1_weight must have shape [inner, {mu * H}], got {tuple(fc1_weight.shape)}")
    if fc2_weight.ndim != 2 or fc2_weight.shape[1] != fc1_weight.shape[0]:
        raise ValueError(f"fc2_weight must have shape [out, {fc1_weight.shape[0]}], got {tuple(fc2_weight.shape)}")


def _patch_merger_torch(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                        postshuffle_norm, norm, eps):
    y = _normalised(x, norm_weight, norm_bias, merge_size, postshuffle_norm, norm, eps)
    y = F.gelu(F.linear(y, fc1_weight, fc1_bias))
    return F.linear(y, fc2_weight, fc2_bias)


def _patch_merger_cublas(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                         postshuffle_norm, norm, eps):
    """qvdp's one-pass Triton norm (row_norm: 24-26 us against torch's LayerNorm kernel's 38-39 us at
    14080 x 1152 on an H100), then cuBLAS fc1 with its bias, qvdp's GELU pass in place, cuBLAS fc2 with its bias."""
    return _linear(_fc1_cublas(x, norm_weight, norm_bias, fc1_weight, fc1_bias, merge_size, postshuffle_norm, norm,
                               eps), fc2_weight, fc2_bias)


# "auto" on CUDA where the CUTLASS library is built: "tuned" at every size; with QVDP_TUNE=0 the CUTLASS path from
# this many merged rows up and the cuBLAS path with qvdp's norm below (benchmarks/results/merger-h100.md, sessions
# 13 and 21)
CUTLASS_AUTO_MIN_ROWS = 6400


def auto_backend(x, K: int, N1: int) -> str:
    """The path "auto" takes for this input: QVDP_MERGER_AUTO (torch / cublas / cutlass / tuned) when set, else
    on Hopper bf16 with the CUTLASS library built "tuned" (with QVDP_TUNE=0: "cutlass" from CUTLASS_AUTO_MIN_ROWS
    merged rows up, "cublas" below), else "cublas" on CUDA (fp16 / bf16 / fp32), else "torch" (CPU)."""
    from . import _tune
    forced = os.environ.get("QVDP_MERGER_AUTO")
    if forced in ("torch", "cublas", "cutlass", "tuned"):
        want = forced
    elif _tune.enabled():
        want = "tuned" if x.is_cuda else "cublas"
    else:
        merged_rows = x.shape[0] * x.shape[1] // K
        want = "cutlass" if x.is_cuda and merged_rows >= CUTLASS_AUTO_MIN_ROWS else "cublas"
    if want in ("cutlass", "tuned") and not cutlass_ok(x, K, N1):
        want = "cublas"
    if want == "cublas" and not (x.is_cuda and cublas_ok(x)):
        want = "torch"
    return want


def cublas_ok(x) -> bool:
    """The "cublas" path runs: its norm is a Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    return triton_usable(x) and x.dtype in (torch.float16, torch.bfloat16, torch.float32)


def _patch_merger_impl(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                       postshuffle_norm, norm, eps, backend="auto"):
    H = x.shape[1]
    K = H * merge_size * merge_size
    checked = False
    if backend == "auto":
        backend = auto_backend(x, K, fc1_weight.shape[0])  # (cutlass / tuned: x checked by cutlass_ok)
        if backend in ("cutlass", "tuned"):
            checked = _operands_ok(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
            if not checked:
                backend = "cublas"  # (weights in another dtype or on another device: torch's ops report it)
    if backend == "cublas":
        if not cublas_ok(x):
            raise ValueError("backend='cublas' needs a CUDA tensor (or TRITON_INTERPRET=1) of dtype float16, "
                             f"bfloat16 or float32, got {x.dtype} on {x.device}")
        return _patch_merger_cublas(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                    merge_size, postshuffle_norm, norm, eps)
    if backend in ("cutlass", "tuned"):
        if checked or cutlass_ok(x, K, fc1_weight.shape[0], fc1_weight, fc1_bias, fc2_weight, fc2_bias):
            path = _patch_merger_cutlass if backend == "cutlass" else _patch_merger_tuned
            return path(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                        postshuffle_norm, norm, eps)
        from . import merger_gemm
        why = merger_gemm.unavailable_reason(x.device) if x.is_cuda else "x is not on a CUDA device"
        raise ValueError(f"backend={backend!r} needs bf16 CUDA input on Hopper with 4H and the fc1 width "
                         f"multiples of 8, fc1_weight bf16, the weights and biases on x's device and the library "
                         f"built ({why or f'x {x.dtype}, fc1_weight {fc1_weight.dtype} on {fc1_weight.device}'})")
    use_triton = backend == "triton"
    if use_triton and triton_usable(x) and _triton_ok(x, H, K):
        return _patch_merger_triton(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                    merge_size, postshuffle_norm, norm, eps)
    if backend == "triton":
        raise ValueError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1) and H divisible by the "
                         "K tile")
    return _patch_merger_torch(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                               postshuffle_norm, norm, eps).contiguous()


@torch.library.custom_op("qvdp::patch_merger", mutates_args=())
def _patch_merger_op(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: Optional[torch.Tensor],
                     fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor], fc2_weight: torch.Tensor,
                     fc2_bias: Optional[torch.Tensor], merge_size: int, postshuffle_norm: bool, norm: str,
                     eps: float, backend: str = "auto") -> torch.Tensor:
    return _patch_merger_impl(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                              postshuffle_norm, norm, eps, backend)


@_patch_merger_op.register_fake
def _(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size, postshuffle_norm, norm,
      eps, backend="auto"):
    return x.new_empty((x.shape[0] // (merge_size * merge_size), fc2_weight.shape[0]))


def patch_merger(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, *, merge_size=2,
                 postshuffle_norm=False, norm="layernorm", eps=1e-6, backend="auto"):
    """[N, H] patches in merge-window order -> [N / merge_size^2, out].

    norm="layernorm" (Qwen3-VL; postshuffle_norm=True for the deepstack mergers, LayerNorm over
    4H after the 2x2 view) or "rmsnorm" (Qwen2.5-VL, norm_bias None). GELU is the exact erf form.
    backend: "auto" (on CUDA: "tuned" where the CUTLASS library is built and runs, else "cublas"; on CPU:
    "torch"; see auto_backend), "cublas" (qvdp's one-pass Triton norm,
    then cuBLAS fc1 + bias, GELU in place, cuBLAS fc2 + bias), "cutlass" (fc1 and its norm fold / bias /
    GELU epilogue as one CUTLASS Hopper kernel, bf16, sm_90, built with QVDP_BUILD_CUTLASS=1; fc2 by
    cuBLAS), "tuned" (fc1 + GELU and fc2 each by the fastest of cuBLAS and a few CUTLASS kernels for the
    shape, timed the first time a shape is seen), "triton" (the fused Triton
    kernels: norm statistics in one pass, the norm folded into fc1's weights, TMA GEMM with bias + GELU
    epilogue, then cuBLAS fc2; 1.22-1.55x the two-GEMM floor on an H100) or "torch" (cuBLAS, eager).
    """
    _check(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size, postshuffle_norm,
           norm)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    args = (x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, int(merge_size),
            bool(postshuffle_norm), norm, float(eps), backend)
    # eager inference skips the custom op's dispatch (~0.14 ms of host time); torch.compile and autograd keep it
    return (_patch_merger_impl if call_direct(*args[:7]) else _patch_merger_op)(*args)
