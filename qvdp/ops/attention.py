"""Fused varlen vision attention (Triton): packed QKV views in, 2D RoPE applied inside,
per-frame segments from cu_seqlens, head dims 64/72/80 without padding to 128.

Two launches per call (one at D=64 without RoPE):
  0. `_pack_kv`: K is rotated once (fp32 math, like HF) and K, V are packed head-major, the head
     dim split into a power-of-two main chunk and a power-of-two tail >= 16 (72 -> 64 + 16,
     80 -> 64 + 16) with zero columns past D. Layout 0: rows of DA + DB; layout 1 (the 16-wide
     tails of 72/80): main chunks, K's tail rows, and V's tail transposed (token-contiguous) - the
     form that stays exact at BLOCK_N >= 64 with Triton 3.6 on Hopper. One read of k/v, one write.
     (Rotating K inside the attention loop instead re-reads cos/sin for every (query tile, key
     tile) pair - measured 20 TFLOP/s at D=72, see NOTES.md.)
  1. `_varlen_attn_fwd`, one program = one BLOCK_M slice of queries of one segment, one head:
     load the Q tile from the strided qkv view and rotate it in fp32 on load; stream the
     segment's packed K/V tiles: S = Qa Ka^T + Qb Kb^T, base-2 online softmax, O += P [Va|Vb]
     (two chunked dots), with the next tile's S issued before this tile's softmax (PIPE); full
     tiles unmasked, the ragged last tile with a key mask; normalise, store the valid rows and
     columns.
  1'. v5/v6/v9, head dims without a tail chunk (D=64): the same loop with Q/K/V boxes loaded through
     TMA descriptors (`_varlen_attn_fwd_tma`). v9 (the D=64 default, `_attention_tma_direct`): V's
     descriptor covers the caller's strided view itself ([T, H*D] rows, no copy), and so do Q's and
     K's without RoPE (no pre-pass at all); with RoPE the pre-pass `_rot_pack` rotates only K and Q
     into packed [H*T, D] buffers, and the attention is a programmatic dependent launch of it.
     Views no descriptor can cover take v6 (`_pack_kv` packs K, V and Q). Tails stay on 1.
  1''. v13, the D=64 default for 16-bit inputs where Triton has Gluon's Hopper API
     (`attention_gluon.py`): v9's loop written in Gluon, Q rotated inside the kernel straight into its
     shared-memory MMA tile, so the pre-pass rotates K only; v9 is the fallback.
A CPU-side-free "block map" (segment, q offset) per program, longest segments first, is
built with a few device ops (searchsorted) - no host sync - and may be reused across layers.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Optional

import torch

from ._direct import call_direct
from .attention_gluon import attention_gluon, gluon_ok
from ._triton_utils import (FP_FUSION, HAS_TRITON, gdc_launch_dependents, gdc_wait, next_pow2, split_head_dim,
                            triton_usable)
from .. import reference as _ref

if HAS_TRITON:
    import triton
    import triton.language as tl
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # pragma: no cover - older Triton: the pointer kernel only
        TensorDescriptor = None

    @triton.jit
    def _load_rot(base, rows, rmask, offs, stride_t, COS, SIN, stride_ct,
                  HALF: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_ROPE: tl.constexpr):
        # a [rows, len(offs)] tile of a strided [T, D] head, rotated in fp32 when HAS_ROPE:
        # x * cos + rotate_half(x) * sin, rotate_half(x)[j] = -x[j + D/2] (j < D/2) else x[j - D/2];
        # columns >= D read as 0 (and rotate to 0).
        cmask = offs < HEAD_DIM
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(base + rows[:, None] * stride_t + offs[None, :], mask=m2, other=0.0)
        if HAS_ROPE:
            partner = (offs + HALF) % HEAD_DIM
            sign = tl.where(offs < HALF, -1.0, 1.0)
            xp = tl.load(base + rows[:, None] * stride_t + partner[None, :], mask=m2, other=0.0).to(tl.float32)
            c = tl.load(COS + rows[:, None] * stride_ct + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            s = tl.load(SIN + rows[:, None] * stride_ct + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            x = (x.to(tl.float32) * c + sign[None, :] * xp * s).to(base.dtype.element_ty)
        return x

    @triton.jit
    def _pack_kv(K, V, KP, VP, COS, SIN, T, TP, stride_kt, stride_kh, stride_vt, stride_vh, stride_ct,
                 Q, QP, stride_qt, stride_qh,
                 HEAD_DIM: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HAS_B: tl.constexpr,
                 HAS_ROPE: tl.constexpr, LAYOUT: tl.constexpr, BLOCK_T: tl.constexpr, HAS_Q: tl.constexpr):
        # K (rotated once here, not once per query tile) and V into head-major buffers with zero
        # columns past D; the main loop then loads whole aligned rows, unmasked.
        # LAYOUT 0: rows of DP = DA + DB, [H, T, DP] (K and V alike).
        # LAYOUT 1: main parts [H, T, DA]; after them K's tail [H, T, DB] and V's tail transposed,
        #   [H, DB, TP] (token-contiguous, TP = T rounded up to 64). V's 16-wide tail as a [BLOCK_N, 16]
        #   row-major tile gave wrong P@V results at BLOCK_N >= 64 (H100, Triton 3.6); loaded as
        #   [16, BLOCK_N] and transposed in registers it is exact (NOTES.md, v3).
        # HAS_Q (head dims without a tail, LAYOUT 0): Q too, rotated, into QP [H, T, DA] (the Q boxes of the
        #   TMA kernel with QTMA).
        DP: tl.constexpr = DA + DB if HAS_B else DA
        pid = tl.program_id(0)
        head = tl.program_id(1).to(tl.int64)
        rows = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        rmask = rows < T
        k_base = K + head * stride_kh
        v_base = V + head * stride_vh
        offs_bl = tl.arange(0, DB)
        tail0 = T * tl.num_programs(1).to(tl.int64) * DA
        if LAYOUT == 0:
            off_a = head * T * DP + rows[:, None] * DP
            off_bk = off_a + DA + offs_bl[None, :]
            off_bv = off_bk
        else:
            off_a = head * T * DA + rows[:, None] * DA
            off_bk = tail0 + head * T * DB + rows[:, None] * DB + offs_bl[None, :]
            off_bv = tail0 + head * DB * TP + offs_bl[None, :] * TP + rows[:, None]
        offs_a = tl.arange(0, DA)
        ka = _load_rot(k_base, rows, rmask, offs_a, stride_kt, COS, SIN, stride_ct, HEAD_DIM // 2, HEAD_DIM, HAS_ROPE)
        tl.store(KP + off_a + offs_a[None, :], ka, mask=rmask[:, None])
        va = _load_rot(v_base, rows, rmask, offs_a, stride_vt, COS, SIN, stride_ct, HEAD_DIM // 2, HEAD_DIM, False)
        tl.store(VP + off_a + offs_a[None, :], va, mask=rmask[:, None])
        if HAS_Q:
            qa = _load_rot(Q + head * stride_qh, rows, rmask, offs_a, stride_qt, COS, SIN, stride_ct, HEAD_DIM // 2,
                           HEAD_DIM, HAS_ROPE)
            tl.store(QP + off_a + offs_a[None, :], qa, mask=rmask[:, None])
        if HAS_B:
            offs_b = DA + tl.arange(0, DB)
            kb = _load_rot(k_base, rows, rmask, offs_b, stride_kt, COS, SIN, stride_ct, HEAD_DIM // 2, HEAD_DIM,
                           HAS_ROPE)
            tl.store(KP + off_bk, kb, mask=rmask[:, None])
            vb = _load_rot(v_base, rows, rmask, offs_b, stride_vt, COS, SIN, stride_ct, HEAD_DIM // 2, HEAD_DIM,
                           False)
            tl.store(VP + off_bv, vb, mask=rmask[:, None])

    @triton.jit
    def _cos_sin_halves(COS, SIN, rows, rmask, stride_ct, HALF: tl.constexpr):
        # the four [rows, HALF] fp32 half-tiles of cos and sin
        co = rows[:, None] * stride_ct + tl.arange(0, HALF)[None, :]
        c1 = tl.load(COS + co, mask=rmask[:, None], other=0.0).to(tl.float32)
        c2 = tl.load(COS + co + HALF, mask=rmask[:, None], other=0.0).to(tl.float32)
        s1 = tl.load(SIN + co, mask=rmask[:, None], other=0.0).to(tl.float32)
        s2 = tl.load(SIN + co + HALF, mask=rmask[:, None], other=0.0).to(tl.float32)
        return c1, c2, s1, s2

    @triton.jit
    def _rot_halves(src, dst, mask, c1, c2, s1, s2, HALF: tl.constexpr):
        # rotate-half RoPE in fp32 on a tile of first-half pointers (partners HALF elements on), both
        # halves from plain loads, no gathered partner column:
        # out[:HALF] = x1 cos1 - x2 sin1, out[HALF:] = x2 cos2 + x1 sin2
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(dst, (x1 * c1 - x2 * s1).to(dst.dtype.element_ty), mask=mask)
        tl.store(dst + HALF, (x2 * c2 + x1 * s2).to(dst.dtype.element_ty), mask=mask)

    @triton.jit
    def _rot_head(X, XP, c1, c2, s1, s2, T, rows, m2, h, stride_xt, stride_xh, HALF: tl.constexpr):
        # head h of X's rows, rotated, into the head-major [H, T, 2*HALF] buffer XP
        c = tl.arange(0, HALF)
        _rot_halves(X + h * stride_xh + rows[:, None] * stride_xt + c[None, :],
                    XP + (h * T + rows)[:, None] * (2 * HALF) + c[None, :], m2, c1, c2, s1, s2, HALF)

    @triton.jit
    def _rot_pack(X, XP, X2, XP2, COS, SIN, T, H, stride_xt, stride_xh, stride_x2t, stride_x2h, stride_ct,
                  HALF: tl.constexpr, TWO: tl.constexpr, HG: tl.constexpr, BLOCK_T: tl.constexpr,
                  PDL: tl.constexpr = False):
        # v9 pre-pass of the TMA kernel: X (K; and X2 = Q when TWO) rotated once into head-major buffers.
        # One program = BLOCK_T tokens x HG heads, so cos/sin are loaded once per HG heads. PDL: the
        # attention launch behind it may start once every program here has started.
        if PDL:
            gdc_launch_dependents()
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        rmask = rows < T
        c1, c2, s1, s2 = _cos_sin_halves(COS, SIN, rows, rmask, stride_ct, HALF)
        for i in tl.static_range(HG):
            h = tl.program_id(1) * HG + i
            m2 = (rmask & ((rows * 0 + h) < H))[:, None]
            _rot_head(X, XP, c1, c2, s1, s2, T, rows, m2, h, stride_xt, stride_xh, HALF)
            if TWO:
                _rot_head(X2, XP2, c1, c2, s1, s2, T, rows, m2, h, stride_x2t, stride_x2h, HALF)

    @triton.jit
    def _rope_qk(Q, K, QO, KO, COS, SIN, T, stride_qt, stride_qh, stride_kt, stride_kh, stride_ct,
                 H: tl.constexpr, HEAD_DIM: tl.constexpr, LANES: tl.constexpr, BLOCK_T: tl.constexpr):
        # BLOCK_T rows of q and k, all heads, rotated in fp32 and written contiguous [T, H, D]: the RoPE
        # pass in front of an external attention kernel (backend "fa3" / "flash_attn"). One lane per
        # (head, j < D/2) pair: out[j] = x[j] cos[j] - x[j+D/2] sin[j], out[j+D/2] = x[j+D/2] cos[j+D/2]
        # + x[j] sin[j+D/2] - both halves from two plain loads, no gathers of a partner column.
        # Grid axis 1 walks the H * D/2 pairs in chunks of LANES: by default one chunk, the pairs padded
        # to a power of two (v3); 64-lane chunks without idle lanes (v4) measured slower on an H100.
        # The tower uses _rope_qk_tile (v5) when heads are packed.
        HALF: tl.constexpr = HEAD_DIM // 2
        pid = tl.program_id(0)
        rows = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        lane = tl.program_id(1) * LANES + tl.arange(0, LANES)
        head = lane // HALF
        j = lane % HALF
        m2 = (rows < T)[:, None] & (lane < H * HALF)[None, :]
        cb = COS + rows[:, None] * stride_ct + j[None, :]
        sb = SIN + rows[:, None] * stride_ct + j[None, :]
        c_lo = tl.load(cb, mask=m2, other=0.0).to(tl.float32)
        c_hi = tl.load(cb + HALF, mask=m2, other=0.0).to(tl.float32)
        s_lo = tl.load(sb, mask=m2, other=0.0).to(tl.float32)
        s_hi = tl.load(sb + HALF, mask=m2, other=0.0).to(tl.float32)
        dst = rows[:, None] * (H * HEAD_DIM) + (head * HEAD_DIM + j)[None, :]
        _rot_halves(Q + rows[:, None] * stride_qt + (head * stride_qh + j)[None, :], QO + dst, m2,
                    c_lo, c_hi, s_lo, s_hi, HALF)
        _rot_halves(K + rows[:, None] * stride_kt + (head * stride_kh + j)[None, :], KO + dst, m2,
                    c_lo, c_hi, s_lo, s_hi, HALF)

    @triton.jit
    def _rope_qk_tile(Q, K, QO, KO, COS, SIN, T, stride_qt, stride_kt, stride_ct,
                      H: tl.constexpr, HP: tl.constexpr, HEAD_DIM: tl.constexpr, JP: tl.constexpr,
                      BLOCK_T: tl.constexpr):
        # v5 of the RoPE pass: a [BLOCK_T, H, D/2] tile per half (padded to powers of two), heads packed
        # (stride D, a constexpr, so the compiler sees 8-byte-aligned runs of D/2 elements and vectorises
        # the loads and stores; v3's one-lane-per-element form issued one 2-byte access per lane).
        HALF: tl.constexpr = HEAD_DIM // 2
        pid = tl.program_id(0)
        rows = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        hh = tl.arange(0, HP)
        jj = tl.arange(0, JP)
        rm = rows < T
        jm = jj < HALF
        m_cs = rm[:, None] & jm[None, :]
        cb = COS + rows[:, None] * stride_ct + jj[None, :]
        sb = SIN + rows[:, None] * stride_ct + jj[None, :]
        c_lo = tl.load(cb, mask=m_cs, other=0.0).to(tl.float32)[:, None, :]
        c_hi = tl.load(cb + HALF, mask=m_cs, other=0.0).to(tl.float32)[:, None, :]
        s_lo = tl.load(sb, mask=m_cs, other=0.0).to(tl.float32)[:, None, :]
        s_hi = tl.load(sb + HALF, mask=m_cs, other=0.0).to(tl.float32)[:, None, :]
        m3 = rm[:, None, None] & (hh < H)[None, :, None] & jm[None, None, :]
        col = hh[None, :, None] * HEAD_DIM + jj[None, None, :]
        dst = rows[:, None, None] * (H * HEAD_DIM) + col
        _rot_halves(Q + rows[:, None, None] * stride_qt + col, QO + dst, m3, c_lo, c_hi, s_lo, s_hi, HALF)
        _rot_halves(K + rows[:, None, None] * stride_kt + col, KO + dst, m3, c_lo, c_hi, s_lo, s_hi, HALF)

    @triton.jit
    def _qk_tile(qa, qb, kpa, kpb, start_n, seqlen, DA: tl.constexpr, DB: tl.constexpr, SA, SBK,
                 HAS_B: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
        # S = Qa Ka^T + Qb Kb^T for keys start_n .. start_n + BLOCK_N (keys past seqlen -> -inf if MASKED);
        # K rows: main chunk at kpa (row stride SA), tail at kpb (row stride SBK)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < seqlen
        rn = offs_n.to(tl.int64)[:, None]
        offs_a = tl.arange(0, DA)
        if MASKED:
            ka = tl.load(kpa + rn * SA + offs_a[None, :], mask=n_mask[:, None], other=0.0)
        else:
            ka = tl.load(kpa + rn * SA + offs_a[None, :])
        qk = tl.dot(qa, tl.trans(ka))
        if HAS_B:
            offs_b = tl.arange(0, DB)
            if MASKED:
                kb = tl.load(kpb + rn * SBK + offs_b[None, :], mask=n_mask[:, None], other=0.0)
            else:
                kb = tl.load(kpb + rn * SBK + offs_b[None, :])
            qk = tl.dot(qb, tl.trans(kb), qk)
        if MASKED:
            qk = tl.where(n_mask[None, :], qk, float("-inf"))
        return qk

    @triton.jit
    def _softmax_pv(acc_a, acc_b, m_i, l_i, qk, vpa, vpb, start_n, seqlen, qk_scale,
                    DA: tl.constexpr, DB: tl.constexpr, SA, SBV, HAS_B: tl.constexpr, MASKED: tl.constexpr,
                    BLOCK_N: tl.constexpr, VT: tl.constexpr):
        # online softmax of one score tile (base 2) and O += P V. V rows: main chunk at vpa (row stride SA);
        # tail at vpb, row-major (row stride SBV) or, VT, transposed ([DB, tokens], row stride SBV).
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < seqlen
        rn = offs_n.to(tl.int64)[:, None]
        offs_a = tl.arange(0, DA)
        offs_b = tl.arange(0, DB)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(vpa.dtype.element_ty)
        if MASKED:
            va = tl.load(vpa + rn * SA + offs_a[None, :], mask=n_mask[:, None], other=0.0)
        else:
            va = tl.load(vpa + rn * SA + offs_a[None, :])
        acc_a = tl.dot(p, va, acc_a * alpha[:, None])
        if HAS_B:
            if VT:
                tptr = vpb + offs_b.to(tl.int64)[:, None] * SBV + offs_n[None, :]
                if MASKED:
                    vb = tl.trans(tl.load(tptr, mask=n_mask[None, :], other=0.0))
                else:
                    vb = tl.trans(tl.load(tptr))
            else:
                if MASKED:
                    vb = tl.load(vpb + rn * SBV + offs_b[None, :], mask=n_mask[:, None], other=0.0)
                else:
                    vb = tl.load(vpb + rn * SBV + offs_b[None, :])
            acc_b = tl.dot(p, vb, acc_b * alpha[:, None])
        return acc_a, acc_b, m_new, l_i

    @triton.jit
    def _attn_loop(acc_a, acc_b, m_i, l_i, qa, qb, kpa, kpb, vpa, vpb, seqlen, qk_scale,
                   DA: tl.constexpr, DB: tl.constexpr, SA, SBK, SBV, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr,
                   VT: tl.constexpr, PIPE: tl.constexpr):
        # unmasked full key tiles, then the ragged last tile. PIPE: the next tile's S = Q K^T is issued
        # before this tile's softmax (software pipelining; the last iteration recomputes a valid tile).
        n_full = (seqlen // BLOCK_N) * BLOCK_N
        if PIPE:
            qk = _qk_tile(qa, qb, kpa, kpb, 0, seqlen, DA, DB, SA, SBK, HAS_B, True, BLOCK_N)
            for start_n in range(0, n_full, BLOCK_N):
                nxt = tl.minimum(start_n + BLOCK_N, n_full - BLOCK_N)
                qk_next = _qk_tile(qa, qb, kpa, kpb, nxt, seqlen, DA, DB, SA, SBK, HAS_B, False, BLOCK_N)
                acc_a, acc_b, m_i, l_i = _softmax_pv(acc_a, acc_b, m_i, l_i, qk, vpa, vpb, start_n, seqlen, qk_scale,
                                                     DA, DB, SA, SBV, HAS_B, False, BLOCK_N, VT)
                qk = qk_next
        else:
            for start_n in range(0, n_full, BLOCK_N):
                qk = _qk_tile(qa, qb, kpa, kpb, start_n, seqlen, DA, DB, SA, SBK, HAS_B, False, BLOCK_N)
                acc_a, acc_b, m_i, l_i = _softmax_pv(acc_a, acc_b, m_i, l_i, qk, vpa, vpb, start_n, seqlen, qk_scale,
                                                     DA, DB, SA, SBV, HAS_B, False, BLOCK_N, VT)
        if n_full < seqlen:
            qk = _qk_tile(qa, qb, kpa, kpb, n_full, seqlen, DA, DB, SA, SBK, HAS_B, True, BLOCK_N)
            acc_a, acc_b, m_i, l_i = _softmax_pv(acc_a, acc_b, m_i, l_i, qk, vpa, vpb, n_full, seqlen, qk_scale,
                                                 DA, DB, SA, SBV, HAS_B, True, BLOCK_N, VT)
        return acc_a, acc_b, m_i, l_i

    @triton.jit
    def _q_rows(CU, BLOCKS, pid, seg, BLOCK_M: tl.constexpr):
        # segment seg's bounds and this program's query rows (q offset from the block map)
        q_off = tl.load(BLOCKS + 2 * pid + 1)
        seg_start = tl.load(CU + seg)
        seqlen = tl.load(CU + seg + 1) - seg_start
        offs_m = q_off + tl.arange(0, BLOCK_M)
        return q_off, seg_start, seqlen, (seg_start + offs_m).to(tl.int64), offs_m < seqlen

    @triton.jit
    def _q_prologue(Q, COS, SIN, CU, BLOCKS, stride_qt, stride_qh, stride_ct, pid, seg, head,
                    HEAD_DIM: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HAS_B: tl.constexpr,
                    HAS_ROPE: tl.constexpr, BLOCK_M: tl.constexpr):
        # _q_rows, and the program's Q tile from the strided view, rotated in fp32 on load
        _, seg_start, seqlen, rows_m, m_mask = _q_rows(CU, BLOCKS, pid, seg, BLOCK_M)
        q_base = Q + head * stride_qh
        qa = _load_rot(q_base, rows_m, m_mask, tl.arange(0, DA), stride_qt, COS, SIN, stride_ct, HEAD_DIM // 2,
                       HEAD_DIM, HAS_ROPE)
        if HAS_B:
            qb = _load_rot(q_base, rows_m, m_mask, DA + tl.arange(0, DB), stride_qt, COS, SIN, stride_ct,
                           HEAD_DIM // 2, HEAD_DIM, HAS_ROPE)
        else:
            qb = qa  # unused
        return seg_start, seqlen, rows_m, m_mask, qa, qb

    @triton.jit
    def _store_o(O, acc_a, acc_b, l_i, rows_m, m_mask, head, stride_ot, stride_oh, HEAD_DIM: tl.constexpr,
                 DA: tl.constexpr, DB: tl.constexpr, HAS_B: tl.constexpr):
        inv_l = 1.0 / l_i
        o_base = O + head * stride_oh
        offs_a = tl.arange(0, DA)
        tl.store(o_base + rows_m[:, None] * stride_ot + offs_a[None, :],
                 (acc_a * inv_l[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None] & (offs_a < HEAD_DIM)[None, :])
        if HAS_B:
            offs_b = DA + tl.arange(0, DB)
            tl.store(o_base + rows_m[:, None] * stride_ot + offs_b[None, :],
                     (acc_b * inv_l[:, None]).to(O.dtype.element_ty),
                     mask=m_mask[:, None] & (offs_b < HEAD_DIM)[None, :])

    @triton.jit
    def _varlen_attn_fwd(Q, KP, VP, O, COS, SIN, CU, BLOCKS, T, TP,
                         stride_qt, stride_qh, stride_ot, stride_oh, stride_ct, qk_scale,
                         HEAD_DIM: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HAS_B: tl.constexpr,
                         HAS_ROPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         LAYOUT: tl.constexpr, PIPE: tl.constexpr):
        DP: tl.constexpr = DA + DB if HAS_B else DA
        pid = tl.program_id(0)
        head = tl.program_id(1).to(tl.int64)
        seg = tl.load(BLOCKS + 2 * pid)
        if seg < 0:  # past the last real q block (the grid is an upper bound)
            return
        seg_start, seqlen, rows_m, m_mask, qa, qb = _q_prologue(
            Q, COS, SIN, CU, BLOCKS, stride_qt, stride_qh, stride_ct, pid, seg, head, HEAD_DIM, DA, DB, HAS_B,
            HAS_ROPE, BLOCK_M)

        # ---- stream the segment's packed K/V: unmasked full tiles, then the ragged tail ------
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc_a = tl.zeros([BLOCK_M, DA], tl.float32)
        acc_b = tl.zeros([BLOCK_M, DB], tl.float32)
        s0 = seg_start.to(tl.int64)
        tail0 = T * tl.num_programs(1).to(tl.int64) * DA
        if LAYOUT == 0:
            kpa = KP + head * T * DP + s0 * DP
            vpa = VP + head * T * DP + s0 * DP
            acc_a, acc_b, m_i, l_i = _attn_loop(acc_a, acc_b, m_i, l_i, qa, qb, kpa, kpa + DA, vpa, vpa + DA, seqlen,
                                                qk_scale, DA, DB, DP, DP, DP, HAS_B, BLOCK_N, False, PIPE)
        else:
            kpa = KP + head * T * DA + s0 * DA
            vpa = VP + head * T * DA + s0 * DA
            kpb = KP + tail0 + head * T * DB + s0 * DB
            vpb = VP + tail0 + head * DB * TP + s0
            acc_a, acc_b, m_i, l_i = _attn_loop(acc_a, acc_b, m_i, l_i, qa, qb, kpa, kpb, vpa, vpb, seqlen, qk_scale,
                                                DA, DB, DA, DB, TP, HAS_B, BLOCK_N, True, PIPE)
        _store_o(O, acc_a, acc_b, l_i, rows_m, m_mask, head, stride_ot, stride_oh, HEAD_DIM, DA, DB, HAS_B)

    # ---- v5: K/V tiles through TMA descriptors (head dims without a tail chunk) -----------------
    @triton.jit
    def _scores_d(qa, k_d, row, col, start_n, seqlen, MASKED: tl.constexpr, BN: tl.constexpr):
        # S = Q K^T for the BN key rows row + start_n ... at column col (one TMA box). Rows past the
        # segment belong to the next segment / head (finite) or lie past the buffer (TMA fills zeros):
        # masked to -inf, and their V rows meet p = 0.
        s = tl.dot(qa, tl.trans(k_d.load([row + start_n, col])))
        if MASKED:
            s = tl.where(((start_n + tl.arange(0, BN)) < seqlen)[None, :], s, float("-inf"))
        return s

    @triton.jit
    def _step_d(acc, m_i, l_i, qk, v_d, row, col, start_n, qk_scale):
        # online softmax (base 2) and O += P V for one key tile
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = v_d.load([row + start_n, col])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, m_new, l_i

    @triton.jit
    def _attn_tma_body(pid, head, seg, Q, Q_D, K_D, V_D, O, COS, SIN, CU, BLOCKS,
                       stride_qt, stride_qh, stride_ot, stride_oh, stride_ct, qk_scale,
                       q_hr, q_hc, k_hr, k_hc, v_hr, v_hc,
                       HEAD_DIM: tl.constexpr, DA: tl.constexpr, HAS_ROPE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PIPE: tl.constexpr, QTMA: tl.constexpr):
        # _varlen_attn_fwd's loop for D = DA (no tail chunk) with K/V boxes loaded by TMA: no per-thread
        # address math, async copies into swizzled shared memory, no masked loads (only the last tile's
        # scores are masked). Each descriptor is either a packed head-major [H*T, DA] buffer (head h's
        # token t at row h*T + t, column 0: *_hr = T, *_hc = 0) or the caller's strided [T, H*D] view
        # itself (row t, column h*D: *_hr = 0, *_hc = D; v9: V always, Q and K without RoPE, so nothing
        # is copied for them). QTMA: the Q tile too, from the packed buffer the pre-pass rotated it into
        # (or the caller's view), so Q K^T reads both operands from shared memory (with a Q tile rotated
        # in registers, Triton 3.9's ptxas serialises the wgmma chain: advisory C7513).
        if QTMA:
            q_off, seg_start, seqlen, rows_m, m_mask = _q_rows(CU, BLOCKS, pid, seg, BLOCK_M)
            # int32 coordinates: the host checks H * T < 2^31; rows past the segment: finite or
            # zero-filled, never stored
            qa = Q_D.load([head * q_hr + seg_start + q_off, head * q_hc])
        else:
            seg_start, seqlen, rows_m, m_mask, qa, _ = _q_prologue(
                Q, COS, SIN, CU, BLOCKS, stride_qt, stride_qh, stride_ct, pid, seg, head.to(tl.int64), HEAD_DIM, DA,
                16, False, HAS_ROPE, BLOCK_M)
        krow = head * k_hr + seg_start
        kcol = head * k_hc
        vrow = head * v_hr + seg_start
        vcol = head * v_hc
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, DA], tl.float32)
        n_full = (seqlen // BLOCK_N) * BLOCK_N
        if PIPE:  # the next tile's scores issued before this tile's softmax
            qk = _scores_d(qa, K_D, krow, kcol, 0, seqlen, True, BLOCK_N)
            for start_n in range(0, n_full, BLOCK_N):
                nxt = tl.minimum(start_n + BLOCK_N, n_full - BLOCK_N)
                qk_next = _scores_d(qa, K_D, krow, kcol, nxt, seqlen, False, BLOCK_N)
                acc, m_i, l_i = _step_d(acc, m_i, l_i, qk, V_D, vrow, vcol, start_n, qk_scale)
                qk = qk_next
        else:
            for start_n in range(0, n_full, BLOCK_N):
                qk = _scores_d(qa, K_D, krow, kcol, start_n, seqlen, False, BLOCK_N)
                acc, m_i, l_i = _step_d(acc, m_i, l_i, qk, V_D, vrow, vcol, start_n, qk_scale)
        if n_full < seqlen:
            qk = _scores_d(qa, K_D, krow, kcol, n_full, seqlen, True, BLOCK_N)
            acc, m_i, l_i = _step_d(acc, m_i, l_i, qk, V_D, vrow, vcol, n_full, qk_scale)
        _store_o(O, acc, acc, l_i, rows_m, m_mask, head.to(tl.int64), stride_ot, stride_oh, HEAD_DIM, DA, 16, False)

    @triton.jit
    def _varlen_attn_fwd_tma(Q, Q_D, K_D, V_D, O, COS, SIN, CU, BLOCKS, T,
                             stride_qt, stride_qh, stride_ot, stride_oh, stride_ct, qk_scale,
                             q_hr, q_hc, k_hr, k_hc, v_hr, v_hc,
                             HEAD_DIM: tl.constexpr, DA: tl.constexpr, HAS_ROPE: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PIPE: tl.constexpr,
                             QTMA: tl.constexpr, PDL: tl.constexpr = False):
        # one program = one (block map row, head); its pre-pass ran before as its own launch. PDL (v9, with
        # launch_pdl): this grid may start while the pre-pass finishes; it reads its block map row, then
        # waits for the pre-pass's writes (griddepcontrol.wait) before any load of the packed buffers.
        pid = tl.program_id(0)
        seg = tl.load(BLOCKS + 2 * pid)
        if PDL:
            gdc_wait()
        if seg >= 0:
            _attn_tma_body(pid, tl.program_id(1), seg, Q, Q_D, K_D, V_D, O, COS, SIN, CU, BLOCKS,
                           stride_qt, stride_qh, stride_ot, stride_oh, stride_ct, qk_scale,
                           q_hr, q_hc, k_hr, k_hc, v_hr, v_hc, HEAD_DIM, DA, HAS_ROPE, BLOCK_M, BLOCK_N, PIPE, QTMA)


# ------------------------------------------------------------------------------------------
# host side
# ------------------------------------------------------------------------------------------
def attention_config(head_dim: int, max_seqlen: int, device_type: str, elem_bytes: int = 2) -> dict:
    """Tile sizes, K/V layout and launch knobs, from the H100 sweeps logged in benchmarks/NOTES.md.

    LAYOUT=1 (head dims with a 16-wide tail chunk) stores V's tail transposed: that is what makes
    BLOCK_N >= 64 exact with Triton 3.6 on Hopper (a row-major [BLOCK_N, 16] V tile gave wrong P@V
    results there). PIPE=1 (the default) issues the next key tile's Q K^T before this tile's softmax.
    fp32 inputs (elem_bytes=4, tf32 dots) with a tail chunk keep the 128x32 packed-layout tile: the
    bf16 128x128 tile's K/V stages do not fit in shared memory at 4 bytes. TMA=1 (D=64) runs the v5
    kernel (K/V by TMA descriptor); it is ignored for head dims with a tail chunk. QTMA=1 (with TMA) has
    the pre-pass rotate Q too and the kernel load Q tiles by TMA, so Q K^T reads both operands from shared
    memory. maxnreg caps the registers per thread (more programs per SM). DIRECT=1 (v9, default with TMA):
    V, and without RoPE Q and K, come straight from the caller's [T, H, D] views by descriptor (no copy),
    with RoPE one pre-pass rotates K and Q into packed buffers; PDL=1 (default) launches the attention as
    a programmatic dependent launch of that pre-pass. GLUON=1 (v13, the D=64 default where Triton has Gluon's
    Hopper API; qvdp/ops/attention_gluon.py): Q rotated inside the kernel into its shared-memory MMA tile, K
    by a pre-pass of half v9's bytes; without RoPE nothing is copied.
    Set QVDP_ATTN_CONFIG to override (see _config_override)."""
    if device_type != "cuda":  # interpreter: big tiles = fewer numpy calls
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
    _, db = split_head_dim(head_dim)
    override = _config_override()
    if max_seqlen > 64 and override:
        got = override.get(str(head_dim)) or (override.get("tail") if db else None)
        if got:
            return dict(got)
    if max_seqlen <= 64:
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    if db and elem_bytes > 2:
        return dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=3, PIPE=0)
    if db == 16 and 64 < head_dim <= 72:  # 72 = 64 + 16
        return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, LAYOUT=1)
    if db == 16:  # 80 = 64 + 16 (and 24, 40, 48: 16 or 32 + 16)
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, LAYOUT=1)
    if db:
        return dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=3)
    if head_dim == 64 and elem_bytes == 2:  # v13 (Gluon, where available), else v9: 64x128 tiles, 3 programs per SM
        return dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, PIPE=0, TMA=1, QTMA=1, maxnreg=168, GLUON=1)
    if head_dim <= 64:  # (fp32 inputs at D=64 keep the pointer kernel: the TMA form is measured in bf16 only)
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)


def _config_override() -> dict:
    """QVDP_ATTN_CONFIG='{"72": {...}, "tail": {...}}': tile/layout override per head dim ("tail": every
    head dim with a tail chunk), for tuning runs. Parsed once per distinct value."""
    return _parse_override(os.environ.get("QVDP_ATTN_CONFIG", ""))


@lru_cache(maxsize=4)
def _parse_override(raw: str) -> dict:
    if not raw:
        return {}
    try:
        got = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"QVDP_ATTN_CONFIG must be JSON like '{{\"72\": {{\"BLOCK_M\": 128, ...}}}}': {e}")
    if not isinstance(got, dict):
        raise ValueError("QVDP_ATTN_CONFIG must be a JSON object keyed by head dim or 'tail'")
    return got


def build_block_map(cu_seqlens: torch.Tensor, total_tokens: int, block_m: int) -> torch.Tensor:
    """int32 [num_programs, 2] = (segment, q offset), longest segments first; -1 marks spare
    programs. Device ops only (no host sync): the grid is the bound T // BLOCK_M + S."""
    S = cu_seqlens.numel() - 1
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nblk = (lens + block_m - 1) // block_m
    order = torch.argsort(lens, descending=True, stable=True)
    nblk_o = nblk[order]
    cum = nblk_o.cumsum(0)
    bound = max(total_tokens // block_m + S, 1)
    ar = torch.arange(bound, device=cu_seqlens.device)
    idx = torch.searchsorted(cum, ar, right=True)
    valid = idx < S
    idx_c = idx.clamp(max=max(S - 1, 0))
    first = cum[idx_c] - nblk_o[idx_c]
    seg = torch.where(valid, order[idx_c], torch.full_like(idx_c, -1))
    qoff = (ar - first) * block_m
    return torch.stack([seg, qoff], 1).to(torch.int32).contiguous()


def _check_inputs(q, k, v, cu_seqlens, max_seqlen, cos, sin, validate):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [T, H, D], got {type(t).__name__}")
        if t.ndim != 3:
            raise ValueError(f"{name} must have shape [T, H, D], got {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {t.stride()}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype or k.device != q.device or v.device != q.device:
        raise TypeError("q, k, v must share dtype and device")
    T, H, D = q.shape
    if D % 8 or D > 128 or D < 8:
        raise ValueError(f"head dim D must be a multiple of 8 in [8, 128], got {D}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.ndim != 1:
        got = cu_seqlens.dtype if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise TypeError(f"cu_seqlens must be a 1-D int32 tensor [num_segments + 1], got {got}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have at least 2 entries [0, ..., T], got {cu_seqlens.numel()}")
    if cu_seqlens.device.type != q.device.type:
        raise ValueError(f"cu_seqlens must be on {q.device}, got {cu_seqlens.device}")
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must be given together (or neither)")
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            if not isinstance(t, torch.Tensor) or t.shape != (T, D) or not t.dtype.is_floating_point:
                raise ValueError(f"{name} must be a float tensor [T, D] = [{T}, {D}], got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if t.device != q.device or t.stride(-1) != 1:
                raise ValueError(f"{name} must be on {q.device} with a contiguous last dim")
        if D % 2:
            raise ValueError(f"RoPE needs an even head dim, got {D}")
    if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
        raise TypeError(f"max_seqlen must be a non-negative int, got {max_seqlen!r}")
    if validate:
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != T:
            raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {cu[0]} ... {cu[-1]}")
        if any(b < a for a, b in zip(cu[:-1], cu[1:])):
            raise ValueError("cu_seqlens must be non-decreasing")
        longest = max(b - a for a, b in zip(cu[:-1], cu[1:]))
        if longest > max_seqlen:
            raise ValueError(f"max_seqlen={max_seqlen} is smaller than the longest segment ({longest})")


def _tma_view_ok(x: torch.Tensor) -> bool:
    """Whether a TMA descriptor can read the [T, H, D] view x as [T, H*D] rows (heads side by side,
    unit last stride, 16-byte aligned base and row stride): then the TMA kernel needs no packed copy."""
    es = x.element_size()
    fake = type(x).__name__ == "FakeTensor"  # tests/_compile_sm90.py: no storage, alignment as allocated
    return (x.stride(2) == 1 and x.stride(1) == x.shape[2] and (fake or x.data_ptr() % 16 == 0)
            and (x.stride(0) * es) % 16 == 0 and x.stride(0) >= x.shape[1] * x.shape[2])


def _reg_cap(cfg: dict) -> dict:
    """The launch's register cap (ptxas maxnreg) where a config sets one: fewer registers per thread,
    more programs per SM."""
    return {"maxnreg": int(cfg["maxnreg"])} if cfg.get("maxnreg") else {}


def _packed_desc(x, H, T, D, box):
    """TMA descriptor over a head-major packed [H*T, D] buffer (head h's token t at row h*T + t), with the
    kernel's per-head row and column steps (T, 0)."""
    return TensorDescriptor(x.view(H * T, D), [H * T, D], [D, 1], [box, D]), T, 0


def _attention_tma_direct(q, k, v, out, cu_seqlens, block_map, cos, sin, has_rope, scale, cfg, qtma):
    """v9: the TMA kernel reading the caller's [T, H, D] views through descriptors over [T, H*D] rows: V
    always, Q and K too without RoPE, so nothing is copied for them. With RoPE, K (and Q with QTMA) is
    rotated once into head-major buffers by the pre-pass launch `_rot_pack`; the attention launch behind it
    is a programmatic dependent launch (config PDL, default on)."""
    T, H, D = q.shape
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    qtma = qtma or not has_rope

    def view(x, box):  # rows t, columns h*D: rows per head 0, columns per head D
        return TensorDescriptor(x, [T, H * D], [x.stride(0), 1], [box, D]), 0, D

    v_d, v_hr, v_hc = view(v, bn)
    common = (q.stride(0), q.stride(1))
    # PDL: the attention launch is queued while the pre-pass runs, hiding the launch gap (CUDA only; not in
    # the interpreter). Its programs still wait for the whole pre-pass: they cannot share an SM with it
    # anyway (registers, L1/shared split; NOTES.md v11 OVL)
    pdl = has_rope and bool(cfg.get("PDL", 1)) and q.device.type == "cuda" and gdc_wait is not None
    if has_rope:
        kp = torch.empty((H * T, D), dtype=q.dtype, device=q.device)
        qp = torch.empty((H * T, D), dtype=q.dtype, device=q.device) if qtma else kp
        bt, hg = int(cfg.get("PBT", 32)), int(cfg.get("PHG", 4))  # pre-pass tokens x heads per program
        _rot_pack[(triton.cdiv(T, bt), triton.cdiv(H, hg))](
            k, kp, q, qp, cos, sin, T, H, k.stride(0), k.stride(1), *common, cos.stride(0),
            HALF=D // 2, TWO=qtma, HG=hg, BLOCK_T=bt, PDL=pdl, num_warps=4, **FP_FUSION)
        k_d, k_hr, k_hc = _packed_desc(kp, H, T, D, bn)
        q_d, q_hr, q_hc = _packed_desc(qp, H, T, D, bm) if qtma else (k_d, 0, 0)
    else:
        k_d, k_hr, k_hc = view(k, bn)
        q_d, q_hr, q_hc = view(q, bm)
    grid = (block_map.shape[0], H)
    _varlen_attn_fwd_tma[grid](
        q, q_d, k_d, v_d, out, cos, sin, cu_seqlens, block_map, T,
        *common, out.stride(0), out.stride(1), cos.stride(0), float(scale) * 1.4426950408889634,
        q_hr, q_hc, k_hr, k_hc, v_hr, v_hc,
        HEAD_DIM=D, DA=D, HAS_ROPE=has_rope, BLOCK_M=bm, BLOCK_N=bn, PIPE=int(cfg.get("PIPE", 1)), QTMA=qtma,
        PDL=pdl, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **_reg_cap(cfg),
        **({"launch_pdl": True} if pdl else {}), **FP_FUSION)
    return out


def _varlen_attention_triton(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map=None, config=None):
    T, H, D = q.shape
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    if T == 0:
        return out
    cfg = config or attention_config(D, max_seqlen, q.device.type, q.element_size())
    bm = cfg["BLOCK_M"]
    S = cu_seqlens.numel() - 1
    # a caller's map must be built for this BLOCK_M: its row count T // BLOCK_M + S tells (for T < 64,
    # where counts coincide, the maps are identical)
    if block_map is None or block_map.shape[0] != max(T // bm + S, 1):
        block_map = build_block_map(cu_seqlens, T, bm)
    da, db = split_head_dim(D)
    if cfg.get("DB"):  # tail width override (diagnostics)
        db = cfg["DB"]
    layout = int(cfg.get("LAYOUT", 0)) if db else 0
    # v5 (TMA) for head dims without a tail chunk; with one, the 16-wide tail boxes gave wrong results /
    # illegal addresses on an H100 with Triton 3.6 (NOTES.md, v5)
    tma = (bool(cfg.get("TMA")) and not db and TensorDescriptor is not None
           and H * T + max(cfg["BLOCK_N"], bm) < 2 ** 31)
    tp = (T + 63) // 64 * 64 if layout else T
    has_rope = cos is not None
    if has_rope:
        cos = cos.float() if cos.dtype != torch.float32 else cos
        sin = sin.float() if sin.dtype != torch.float32 else sin
    else:
        cos = sin = q  # never read
    qtma = tma and bool(cfg.get("QTMA", 0))
    views = tma and all(_tma_view_ok(x) for x in (q, k, v))  # descriptors can read the caller's views
    if views and gluon_ok(q, k, v, cfg):  # v13: Q rotated inside the kernel (Gluon), K by a half-size pre-pass
        return attention_gluon(q, k, v, out, cu_seqlens, block_map, cos, sin, has_rope, scale, cfg, _rot_pack)
    if views and cfg.get("DIRECT", 1):
        return _attention_tma_direct(q, k, v, out, cu_seqlens, block_map, cos, sin, has_rope, scale, cfg, qtma)
    # 1) K rotated once + V, packed head-major [H, T, DP] (zero columns past D)
    nbuf = H * (T * da + tp * db) if db else H * T * da
    kp = torch.empty(nbuf, dtype=q.dtype, device=q.device)
    vp = torch.empty(nbuf, dtype=q.dtype, device=q.device)
    # QTMA (v6): Q rotated once here too, its tiles then come by TMA (shared-memory operand)
    qp = torch.empty(nbuf, dtype=q.dtype, device=q.device) if qtma else kp
    bt = 64
    _pack_kv[(triton.cdiv(T, bt), H)](k, v, kp, vp, cos, sin, T, tp, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                                     cos.stride(0), q, qp, q.stride(0), q.stride(1),
                                     HEAD_DIM=D, DA=da, DB=db if db else 16, HAS_B=db > 0,
                                     HAS_ROPE=has_rope, LAYOUT=layout, BLOCK_T=bt, HAS_Q=qtma, num_warps=4, **FP_FUSION)
    # 2) attention, Q rotated on load (QTMA: already rotated by the pre-pass)
    grid = (block_map.shape[0], H)
    bn = cfg["BLOCK_N"]
    if tma:
        k_d, k_hr, k_hc = _packed_desc(kp, H, T, da, bn)
        v_d, v_hr, v_hc = _packed_desc(vp, H, T, da, bn)
        q_d, q_hr, q_hc = _packed_desc(qp, H, T, da, bm) if qtma else (k_d, k_hr, k_hc)
        _varlen_attn_fwd_tma[grid](
            q, q_d, k_d, v_d, out, cos, sin, cu_seqlens, block_map, T,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), cos.stride(0), float(scale) * 1.4426950408889634,
            q_hr, q_hc, k_hr, k_hc, v_hr, v_hc,
            HEAD_DIM=D, DA=da, HAS_ROPE=has_rope, BLOCK_M=bm, BLOCK_N=bn, PIPE=int(cfg.get("PIPE", 1)), QTMA=qtma,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **_reg_cap(cfg), **FP_FUSION)
        return out
    _varlen_attn_fwd[grid](
        q, kp, vp, out, cos, sin, cu_seqlens, block_map, T, tp,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), cos.stride(0), float(scale) * 1.4426950408889634,
        HEAD_DIM=D, DA=da, DB=db if db else 16, HAS_B=db > 0, HAS_ROPE=has_rope,
        BLOCK_M=bm, BLOCK_N=cfg["BLOCK_N"], LAYOUT=layout, PIPE=int(cfg.get("PIPE", 1)),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **_reg_cap(cfg), **FP_FUSION)
    return out


# ---- torch custom op: torch.compile traces through it without a graph break ---------------
def _varlen_attention_impl(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map):
    if triton_usable(q):
        return _varlen_attention_triton(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map)
    return _ref.varlen_attention_torch(q, k, v, cu_seqlens, cos, sin, scale).contiguous()


@torch.library.custom_op("qvdp::varlen_attention", mutates_args=())
def _varlen_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         max_seqlen: int, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor],
                         scale: float, block_map: Optional[torch.Tensor]) -> torch.Tensor:
    return _varlen_attention_impl(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map)


@_varlen_attention_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except Exception:
        return False


@lru_cache(maxsize=1)
def fa3_varlen_func():
    """FlashAttention-3's varlen forward, or None: the `flash_attn_interface` module of a FA3 build
    (flash-attention's hopper/ package), else the PyPI wheel `fa3-fwd` (`fa3_fwd_interface`, whose
    import of `flash_attn_config` is served by its own `fa3_fwd_config`)."""
    import sys
    try:
        from flash_attn_interface import flash_attn_varlen_func
        return flash_attn_varlen_func
    except Exception:
        pass
    try:
        import fa3_fwd_config
        sys.modules.setdefault("flash_attn_config", fa3_fwd_config)
        from fa3_fwd_interface import flash_attn_varlen_func
        return flash_attn_varlen_func
    except Exception:
        return None


# Equal segments go through FA3's fixed-length kernel only where it measured faster than its varlen
# kernel (one H100, H=16, D=72, benchmarks/diag_fa3_dense.py): 4 x 6400 -5.0%, 16 x 3520 -3.0% time, but
# 4 x 3520 +1.4% and 64 x 256 +32%; so at least FA3_DENSE_MIN_TOKENS tokens in segments of at least
# FA3_DENSE_MIN_SEQLEN.
FA3_DENSE_MIN_TOKENS = 25600
FA3_DENSE_MIN_SEQLEN = 2048


def fa3_dense_func(num_segments: int | None = None, seqlen: int | None = None):
    """FlashAttention-3's fixed-length forward (flash_attn_func) from the module fa3_varlen_func found, for
    `num_segments` equal segments of `seqlen` tokens; None when unavailable or not worth it (see
    FA3_DENSE_MIN_*). QVDP_FA3_DENSE=0: never; =1: for every batch of equal segments."""
    mode = os.environ.get("QVDP_FA3_DENSE", "")
    if mode == "0":
        return None
    if mode != "1" and num_segments is not None and seqlen is not None and not (
            num_segments * seqlen >= FA3_DENSE_MIN_TOKENS and seqlen >= FA3_DENSE_MIN_SEQLEN):
        return None
    return _fa3_dense_func()


@lru_cache(maxsize=1)
def _fa3_dense_func():
    import sys
    if fa3_varlen_func() is None:
        return None
    for name in ("flash_attn_interface", "fa3_fwd_interface"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "flash_attn_func"):
            return mod.flash_attn_func
    return None


def fa3_available() -> bool:
    return fa3_varlen_func() is not None


@lru_cache(maxsize=1)
def fa3_dtypes() -> tuple:
    """The activation dtypes the importable FA3 build runs: its build config (`flash_attn_config`, the
    fa3-fwd wheel's `fa3_fwd_config`) may disable fp16 - the fa3-fwd 0.0.3 wheel does."""
    if not fa3_available():
        return ()
    import sys
    cfg = sys.modules.get("flash_attn_config")
    if cfg is None:
        try:
            import flash_attn_config as cfg
        except Exception:
            cfg = None
    flags = (getattr(cfg, "CONFIG", None) or {}).get("build_flags", {}) if cfg is not None else {}
    return (torch.bfloat16,) if flags.get("FLASHATTENTION_DISABLE_FP16") else (torch.float16, torch.bfloat16)


def rope_qk(q, k, cos, sin, *, impl: str | None = None, lanes: int = 1024, elems: int = 8192):
    """q, k [T, H, D] (strided views allowed, last dim contiguous) rotated by cos/sin [T, D] (HF's
    rotate-half form, fp32 math) into two new contiguous [T, H, D] tensors, one Triton launch (torch
    on CPU tensors outside the interpreter). impl: "tile" (v5, heads packed: q.stride(1) == k.stride(1)
    == D; else "lanes" is used) or "lanes" (v3: lanes x elems/lanes per program); default from the
    environment QVDP_ROPE_IMPL, else "tile". Tuning: benchmarks/diag_rope.py."""
    if not triton_usable(q):
        return _ref.apply_rope(q, cos, sin), _ref.apply_rope(k, cos, sin)
    T, H, D = q.shape
    qo = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    ko = torch.empty((T, H, D), dtype=k.dtype, device=k.device)
    if T == 0:
        return qo, ko
    cos = cos if cos.dtype == torch.float32 else cos.float()
    sin = sin if sin.dtype == torch.float32 else sin.float()
    if D % 2:
        raise ValueError(f"RoPE needs an even head dim, got {D}")
    impl = impl or os.environ.get("QVDP_ROPE_IMPL", "tile")
    if impl not in ("tile", "lanes"):
        raise ValueError(f"impl must be 'tile' or 'lanes', got {impl!r}")
    if impl == "tile" and q.stride(1) == D and k.stride(1) == D:
        hp, jp = next_pow2(H), next_pow2(D // 2)
        bt = max(1, min(64, int(elems) // (hp * jp)))
        bt = 1 << (bt.bit_length() - 1)  # a power of two
        _rope_qk_tile[(triton.cdiv(T, bt),)](q, k, qo, ko, cos, sin, T, q.stride(0), k.stride(0), cos.stride(0),
                                             H=H, HP=hp, HEAD_DIM=D, JP=jp, BLOCK_T=bt,
                                             num_warps=8 if bt * hp * jp >= 4096 else 4, **FP_FUSION)
        return qo, ko
    pairs = H * D // 2
    lanes = min(int(lanes), 1 << max(pairs - 1, 1).bit_length())
    bt = max(1, int(elems) // lanes)
    bt = 1 << (bt.bit_length() - 1)
    _rope_qk[(triton.cdiv(T, bt), triton.cdiv(pairs, lanes))](
        q, k, qo, ko, cos, sin, T, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
        H=H, HEAD_DIM=D, LANES=lanes, BLOCK_T=bt, num_warps=8 if lanes * bt >= 4096 else 4, **FP_FUSION)
    return qo, ko


def _external_attention(fn, q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, dense=None):
    """RoPE pass, then the library's varlen kernel; or, when `dense` (its fixed-length function) is given
    and every segment has max_seqlen tokens (S * max_seqlen == T, read off shapes: no device sync), one
    [S, max_seqlen, H, D] batch through it (no varlen scheduling metadata)."""
    if cos is not None:
        q, k = rope_qk(q, k, cos, sin)
    T = q.shape[0]
    S = cu_seqlens.shape[0] - 1
    if dense is not None and S > 0 and S * int(max_seqlen) == T:
        o = dense(q.unflatten(0, (S, int(max_seqlen))), k.unflatten(0, (S, int(max_seqlen))),
                  v.unflatten(0, (S, int(max_seqlen))), softmax_scale=scale, causal=False)
        o = o[0] if isinstance(o, tuple) else o
        return o.reshape(q.shape)
    o = fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=False)
    return o[0] if isinstance(o, tuple) else o


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, *, cos=None, sin=None, scale=None,
                     backend: str = "auto", validate: bool = True, block_map=None):
    """Bidirectional attention within each segment of cu_seqlens, RoPE fused.

    Args:
        q, k, v: [T, H, D] (may be strided views of a packed [T, 3, H, D] qkv; last dim contiguous).
        cu_seqlens: int32 [S + 1], 0 ... T.  max_seqlen: longest segment (host int).
        cos, sin: optional [T, D] rotary tables in HF's rotate-half layout, applied to q and k.
        scale: softmax scale, default D^-0.5.
        backend: "auto" (Triton on CUDA, else torch), "triton", "torch", "flash_attn" (flash-attn's
            varlen kernel after qvdp's one-pass Triton RoPE), "fa3" (FlashAttention-3's varlen kernel
            after the same RoPE pass; bf16 on Hopper, and fp16 where the FA3 build has it: fa3_dtypes();
            equal segments of >= FA3_DENSE_MIN_SEQLEN tokens, >= FA3_DENSE_MIN_TOKENS in all, go through
            its fixed-length kernel instead: fa3_dense_func()).
        validate: check cu_seqlens values (one device->host copy when it lives on the GPU).
        block_map: optional output of build_block_map() to reuse across layers.
    Returns [T, H, D] in q's dtype.
    """
    _check_inputs(q, k, v, cu_seqlens, max_seqlen, cos, sin, validate)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":  # the interpreter is for tests: CPU tensors take torch unless asked
        backend = "triton" if q.is_cuda and triton_usable(q) else "torch"
    if backend == "triton":
        if not triton_usable(q):
            raise ValueError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
        # eager inference skips the custom op's dispatch (host time); torch.compile and autograd keep it
        op = _varlen_attention_impl if call_direct(q, k, v, cos, sin) else _varlen_attention_op
        return op(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map)
    if backend == "torch":
        return _ref.varlen_attention_torch(q, k, v, cu_seqlens, cos, sin, scale)
    if backend == "flash_attn":
        if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"backend='flash_attn' needs CUDA fp16/bf16 tensors, got {q.dtype} on {q.device}")
        try:
            from flash_attn import flash_attn_varlen_func
        except ImportError as e:
            raise ImportError("backend='flash_attn' needs the flash-attn package (pip install flash-attn)") from e
        return _external_attention(flash_attn_varlen_func, q, k, v, cu_seqlens, max_seqlen, cos, sin, scale)
    if backend == "fa3":
        fn = fa3_varlen_func()
        if fn is None:
            raise ImportError("backend='fa3' needs FlashAttention-3 (flash_attn_interface, or the fa3-fwd wheel)")
        if not q.is_cuda or q.dtype not in fa3_dtypes():
            raise ValueError(f"backend='fa3' needs CUDA tensors of a dtype this FA3 build runs "
                             f"({', '.join(str(d) for d in fa3_dtypes())}), got {q.dtype} on {q.device}")
        dense = fa3_dense_func(cu_seqlens.shape[0] - 1, int(max_seqlen))
        return _external_attention(fn, q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, dense=dense)
    raise ValueError(f"backend must be 'auto', 'triton', 'torch', 'flash_attn' or 'fa3', got {backend!r}")


def attention_flops(seqlens, num_heads: int, head_dim: int) -> float:
    """4 * sum(s^2) * H * D (QK^T and PV)."""
    return 4.0 * sum(int(s) ** 2 for s in seqlens) * num_heads * head_dim
