"""v13 (Hopper, head dim 64, fp16/bf16): the varlen attention kernel written in Gluon, Triton's explicit
layout/shared-memory dialect, so that Q can be rotated ONCE per program straight into the shared-memory
tile its Q K^T MMA reads - what plain Triton cannot express (NOTES.md: register Q, QSCR, FUSED, OVL all
paid for Q's rotation with an attention slot or a global round trip). With RoPE only K keeps a pre-pass
(`_rot_pack` with TWO=False: half of v9's pre-pass bytes); V (and Q, K without RoPE) are read by TMA
straight from the caller's packed qkv views.

One program = one (block map row, head): BLOCK_M query rows of one segment; one warpgroup; K/V tiles
through a STAGES-deep TMA ring with one mbarrier per stage; S = Q K^T and O += P V as asynchronous
wgmma (P from registers), the next tile's loads issued as soon as the previous tile's MMAs are done.
Optional: used when this Triton has Gluon's Hopper API (3.6 and 3.9 both do), else v9."""
from __future__ import annotations

import torch

from ._triton_utils import fast_launch, prepared_launch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_init,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    # the TMA load builtin: async_load in Triton 3.9, async_copy_global_to_shared in 3.6
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier  # barrier in 3.9, thread_barrier in 3.6
    _SMEM_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)  # 128-byte rows
    HAS_GLUON = True
except Exception:  # pragma: no cover - Triton without Gluon's Hopper API
    HAS_GLUON = False

if HAS_GLUON:
    @gluon.jit
    def _kv_tile(j, q_smem, k_smem, v_smem, bars, m_i, l_i, acc, zero_s, cols_n, seqlen, qk_scale,
                 k_desc, v_desc, k0, kc, v0, vc, n_tiles,
                 BLOCK_N: gl.constexpr, STAGES: gl.constexpr, NBYTES: gl.constexpr, MASKED: gl.constexpr,
                 o_layout: gl.constexpr, p_layout: gl.constexpr, LATE: gl.constexpr):
        # one key tile: S = Q K^T (async, then waited together with the last tile's P V), refill of the
        # stage the last tile used, online softmax (keys past the segment masked only when MASKED), O += P V
        # issued asynchronously
        s = j % STAGES
        mbarrier.wait(bars.index(s), (j // STAGES) & 1)
        sacc = warpgroup_mma(q_smem, k_smem.index(s).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        sacc, acc = warpgroup_mma_wait(0, deps=[sacc, acc])
        if not LATE:
            _refill(j, k_smem, v_smem, bars, k_desc, v_desc, k0, kc, v0, vc, n_tiles, BLOCK_N, STAGES, NBYTES)
        if MASKED:
            sacc = gl.where((j * BLOCK_N + cols_n < seqlen)[None, :], sacc, -float("inf"))
        m_new = gl.maximum(m_i, gl.max(sacc, 1) * qk_scale)
        p = gl.exp2(sacc * qk_scale - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout), assert_trivial=True)[:, None]
        acc = warpgroup_mma(gl.convert_layout(p.to(k_desc.dtype), p_layout, assert_trivial=True), v_smem.index(s),
                            acc, is_async=True)
        if LATE:  # (v9's order: the loads behind this tile's P V)
            _refill(j, k_smem, v_smem, bars, k_desc, v_desc, k0, kc, v0, vc, n_tiles, BLOCK_N, STAGES, NBYTES)
        return m_new, l_i, acc

    @gluon.jit
    def _refill(j, k_smem, v_smem, bars, k_desc, v_desc, k0, kc, v0, vc, n_tiles,
                BLOCK_N: gl.constexpr, STAGES: gl.constexpr, NBYTES: gl.constexpr):
        # the stage tile j - 1 used is free once tile j's S wait returned (it also waited tile j-1's P V):
        # load tile j - 1 + STAGES into it
        jn = j - 1 + STAGES
        sp = jn % STAGES
        pr = (j >= 1) & (jn < n_tiles)
        mbarrier.expect(bars.index(sp), NBYTES, pred=pr)
        _tma_load(k_desc, [k0 + jn * BLOCK_N, kc], bars.index(sp), k_smem.index(sp), pred=pr)
        _tma_load(v_desc, [v0 + jn * BLOCK_N, vc], bars.index(sp), v_smem.index(sp), pred=pr)

    @gluon.jit
    def _attn_fwd_gluon(Q, q_desc, k_desc, v_desc, Out, COS, SIN, CU, MAP,
                        stride_qt, stride_qh, stride_ot, stride_oh, stride_ct, qk_scale,
                        k_hr, k_hc, v_hr, v_hc,
                        HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                        STAGES: gl.constexpr, ROT_Q: gl.constexpr, LATE: gl.constexpr):
        dtype: gl.constexpr = k_desc.dtype
        HALF: gl.constexpr = HEAD_DIM // 2
        NBYTES: gl.constexpr = 2 * BLOCK_N * HEAD_DIM * 2  # one K and one V tile, 16-bit
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        blk: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8],
                                             warps_per_cta=[4, 1], order=[1, 0])

        pid = gl.program_id(0)
        head = gl.program_id(1)
        seg = gl.load(MAP + 2 * pid)
        qoff = gl.load(MAP + 2 * pid + 1)
        segc = gl.maximum(seg, 0)
        start = gl.load(CU + segc)
        seqlen = gl.where(seg >= 0, gl.load(CU + segc + 1) - start, 0)  # spare program: no tiles, no store
        n_tiles = gl.cdiv(seqlen, BLOCK_N)

        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES + 1, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES + 1):
            mbarrier.init(bars.index(i), count=1)

        k0 = head * k_hr + start
        kc = head * k_hc
        v0 = head * v_hr + start
        vc = head * v_hc
        for i in gl.static_range(STAGES):  # the first tiles' loads, under Q's preparation
            pr = i < n_tiles
            mbarrier.expect(bars.index(i), NBYTES, pred=pr)
            _tma_load(k_desc, [k0 + i * BLOCK_N, kc], bars.index(i), k_smem.index(i), pred=pr)
            _tma_load(v_desc, [v0 + i * BLOCK_N, vc], bars.index(i), v_smem.index(i), pred=pr)

        if ROT_Q:  # Q rows rotated in fp32 (rotate-half: partner column (d + D/2) % D) into Q's MMA tile
            rows = qoff + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, blk))
            cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, blk))
            tok = (start + rows).to(gl.int64)
            m2 = (rows < seqlen)[:, None] & (cols < HEAD_DIM)[None, :]
            qb = Q + tok[:, None] * stride_qt + head * stride_qh
            x = gl.load(qb + cols[None, :], mask=m2, other=0.0).to(gl.float32)
            xp = gl.load(qb + ((cols + HALF) % HEAD_DIM)[None, :], mask=m2, other=0.0).to(gl.float32)
            cb = tok[:, None] * stride_ct + cols[None, :]
            c = gl.load(COS + cb, mask=m2, other=0.0)
            sn = gl.load(SIN + cb, mask=m2, other=0.0)
            sgn = gl.where(cols < HALF, -1.0, 1.0)
            q_smem.store((x * c + xp * sn * sgn[None, :]).to(dtype))
            fence_async_shared()
            _cta_barrier()
        else:
            mbarrier.expect(bars.index(STAGES), BLOCK_M * HEAD_DIM * 2)
            _tma_load(q_desc, [start + qoff, head * HEAD_DIM], bars.index(STAGES), q_smem)
            mbarrier.wait(bars.index(STAGES), 0)

        m_i = gl.full([BLOCK_M], -float("inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = warpgroup_mma_init(gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout))  # async-typed
        zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
        cols_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        n_full = seqlen // BLOCK_N
        for j in range(n_full):  # full key tiles: no mask
            m_i, l_i, acc = _kv_tile(j, q_smem, k_smem, v_smem, bars, m_i, l_i, acc, zero_s, cols_n, seqlen,
                                     qk_scale, k_desc, v_desc, k0, kc, v0, vc, n_tiles,
                                     BLOCK_N, STAGES, NBYTES, False, o_layout, p_layout, LATE)
        for j in range(n_full, n_tiles):  # the segment's last, partial tile
            m_i, l_i, acc = _kv_tile(j, q_smem, k_smem, v_smem, bars, m_i, l_i, acc, zero_s, cols_n, seqlen,
                                     qk_scale, k_desc, v_desc, k0, kc, v0, vc, n_tiles,
                                     BLOCK_N, STAGES, NBYTES, True, o_layout, p_layout, LATE)
        acc = warpgroup_mma_wait(0, deps=[acc])
        for i in gl.static_range(STAGES + 1):
            mbarrier.invalidate(bars.index(i))

        rows_o = qoff + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))
        cols_o = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        o = acc / gl.where(l_o > 0, l_o, 1.0)[:, None]
        optr = Out + (start + rows_o).to(gl.int64)[:, None] * stride_ot + head * stride_oh + cols_o[None, :]
        gl.store(optr, o.to(dtype), mask=(rows_o < seqlen)[:, None] & (cols_o < HEAD_DIM)[None, :])


def gluon_ok(q, k, v, cfg) -> bool:
    """Whether the v13 Gluon kernel takes this call: Gluon's Hopper API, config GLUON=1, 16-bit q/k/v of
    head dim 64 (the caller has checked that TMA can read their [T, H*D] views: _tma_view_ok)."""
    return (HAS_GLUON and bool(cfg.get("GLUON")) and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] == 64)


def attention_gluon(q, k, v, out, cu_seqlens, block_map, cos, sin, has_rope, scale, cfg, rot_pack):
    """Launch v13. With RoPE, K is rotated first by `rot_pack` (v9's pre-pass, K only) into a head-major
    [H*T, D] buffer; Q is rotated inside the kernel. The attention launch is prepared (descriptors, arguments,
    its compiled kernel looked up) before the pre-pass is launched, so little host work separates the two: the
    pre-pass takes ~21 us of GPU time at 4 x 3520 x 16 heads, less than a JIT launch's host time."""
    T, H, D = q.shape
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]

    def view(x, box):  # rows t, columns h*D of a [T, H, D] view
        return GluonDescriptor(x, [T, H * D], [x.stride(0), 1], [box, D], _SMEM_LAYOUT)

    q_d, v_d = view(q, bm), view(v, bn)
    if has_rope:
        kp = torch.empty((H * T, D), dtype=q.dtype, device=q.device)
        k_d, k_hr, k_hc = GluonDescriptor(kp, [H * T, D], [D, 1], [bn, D], _SMEM_LAYOUT), T, 0
    else:
        k_d, k_hr, k_hc = view(k, bn), 0, D
    grid = (block_map.shape[0], H)
    args = (q, q_d, k_d, v_d, out, cos, sin, cu_seqlens, block_map, q.stride(0), q.stride(1), out.stride(0),
            out.stride(1), cos.stride(0), float(scale) * 1.4426950408889634, k_hr, k_hc, 0, D)
    consts = dict(HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, STAGES=int(cfg.get("STAGES", 2)), ROT_Q=has_rope,
                  LATE=bool(cfg.get("LATE", 0)))
    opts = dict(num_warps=4, **({"maxnreg": int(cfg["GREG"])} if cfg.get("GREG") else {}))
    attend = prepared_launch(_attn_fwd_gluon, grid, args, consts, **opts)
    if has_rope:
        bt, hg = int(cfg.get("PBT", 32)), int(cfg.get("PHG", 4))
        fast_launch(rot_pack, ((T + bt - 1) // bt, (H + hg - 1) // hg),
                    (k, kp, k, kp, cos, sin, T, H, k.stride(0), k.stride(1), k.stride(0), k.stride(1), cos.stride(0)),
                    dict(HALF=D // 2, TWO=False, HG=hg, BLOCK_T=bt, PDL=False), num_warps=4)
    attend()
    return out
