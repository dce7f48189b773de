"""Fused varlen vision attention (Triton): packed QKV views in, 2D RoPE applied inside,
per-frame segments from cu_seqlens, head dims 64/72/80 without padding to 128.

Algorithm (one program = one BLOCK_M slice of queries of one segment, one head):
  1. load the Q tile as two column chunks (DA = largest power of two <= D, DB = the
     power-of-two tail >= 16: 72 -> 64 + 16, 80 -> 64 + 16), rotate it in fp32 with the
     rotate-half partner column (j + D/2) mod D, and cast back to the input dtype;
  2. stream the segment's K/V tiles: rotate K the same way, S = Qa Ka^T + Qb Kb^T,
     base-2 online softmax, O += P V (two chunked dots); full tiles run without masks and
     the ragged last tile with a key mask;
  3. normalise and store the valid rows and columns.
A CPU-side-free "block map" (segment, q offset) per program, longest segments first, is
built with a few device ops (searchsorted) - no host sync - and may be reused across layers.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._triton_utils import HAS_TRITON, split_head_dim, triton_usable
from .. import reference as _ref

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _rope_tile(x, base, rows, rmask, offs, cmask, stride_t, COS, SIN, stride_ct,
                   HALF: tl.constexpr, HEAD_DIM: tl.constexpr):
        # x * cos + rotate_half(x) * sin, rotate_half(x)[j] = -x[j + D/2] (j < D/2) else x[j - D/2]
        partner = (offs + HALF) % HEAD_DIM
        sign = tl.where(offs < HALF, -1.0, 1.0)
        m2 = rmask[:, None] & cmask[None, :]
        xp = tl.load(base + rows[:, None] * stride_t + partner[None, :], mask=m2, other=0.0).to(tl.float32)
        c = tl.load(COS + rows[:, None] * stride_ct + offs[None, :], mask=m2, other=0.0).to(tl.float32)
        s = tl.load(SIN + rows[:, None] * stride_ct + offs[None, :], mask=m2, other=0.0).to(tl.float32)
        return x.to(tl.float32) * c + sign[None, :] * xp * s

    @triton.jit
    def _attn_tile(acc_a, acc_b, m_i, l_i, qa, qb, k_base, v_base, COS, SIN, start_n, seg_start, seqlen,
                   stride_kt, stride_vt, stride_ct, qk_scale,
                   HEAD_DIM: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HAS_B: tl.constexpr,
                   HAS_ROPE: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < seqlen
        rows_n = (seg_start + offs_n).to(tl.int64)
        offs_a = tl.arange(0, DA)
        a_mask = offs_a < HEAD_DIM
        if MASKED:
            ka = tl.load(k_base + rows_n[:, None] * stride_kt + offs_a[None, :],
                         mask=n_mask[:, None] & a_mask[None, :], other=0.0)
        else:
            ka = tl.load(k_base + rows_n[:, None] * stride_kt + offs_a[None, :], mask=a_mask[None, :], other=0.0)
        if HAS_ROPE:
            ka = _rope_tile(ka, k_base, rows_n, n_mask, offs_a, a_mask, stride_kt, COS, SIN, stride_ct,
                            HEAD_DIM // 2, HEAD_DIM).to(qa.dtype)
        qk = tl.dot(qa, tl.trans(ka))
        if HAS_B:
            offs_b = DA + tl.arange(0, DB)
            b_mask = offs_b < HEAD_DIM
            kb = tl.load(k_base + rows_n[:, None] * stride_kt + offs_b[None, :],
                         mask=n_mask[:, None] & b_mask[None, :], other=0.0)
            if HAS_ROPE:
                kb = _rope_tile(kb, k_base, rows_n, n_mask, offs_b, b_mask, stride_kt, COS, SIN, stride_ct,
                                HEAD_DIM // 2, HEAD_DIM).to(qa.dtype)
            qk += tl.dot(qb, tl.trans(kb))
        if MASKED:
            qk = tl.where(n_mask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(qa.dtype)
        if MASKED:
            va = tl.load(v_base + rows_n[:, None] * stride_vt + offs_a[None, :],
                         mask=n_mask[:, None] & a_mask[None, :], other=0.0)
        else:
            va = tl.load(v_base + rows_n[:, None] * stride_vt + offs_a[None, :], mask=a_mask[None, :], other=0.0)
        acc_a = acc_a * alpha[:, None] + tl.dot(p, va)
        if HAS_B:
            vb = tl.load(v_base + rows_n[:, None] * stride_vt + offs_b[None, :],
                         mask=n_mask[:, None] & b_mask[None, :], other=0.0)
            acc_b = acc_b * alpha[:, None] + tl.dot(p, vb)
        return acc_a, acc_b, m_new, l_i

    @triton.jit
    def _varlen_attn_fwd(Q, K, V, O, COS, SIN, CU, BLOCKS,
                         stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                         stride_ot, stride_oh, stride_ct, qk_scale,
                         HEAD_DIM: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HAS_B: tl.constexpr,
                         HAS_ROPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid = tl.program_id(0)
        head = tl.program_id(1).to(tl.int64)
        seg = tl.load(BLOCKS + 2 * pid)
        if seg < 0:  # past the last real q block (the grid is an upper bound)
            return
        q_off = tl.load(BLOCKS + 2 * pid + 1)
        seg_start = tl.load(CU + seg)
        seqlen = tl.load(CU + seg + 1) - seg_start

        # ---- Q tile: load, rotate in fp32, back to the input dtype -----------------------
        offs_m = q_off + tl.arange(0, BLOCK_M)
        m_mask = offs_m < seqlen
        rows_m = (seg_start + offs_m).to(tl.int64)
        offs_a = tl.arange(0, DA)
        a_mask = offs_a < HEAD_DIM
        q_base = Q + head * stride_qh
        qa = tl.load(q_base + rows_m[:, None] * stride_qt + offs_a[None, :],
                     mask=m_mask[:, None] & a_mask[None, :], other=0.0)
        if HAS_ROPE:
            qa = _rope_tile(qa, q_base, rows_m, m_mask, offs_a, a_mask, stride_qt, COS, SIN, stride_ct,
                            HEAD_DIM // 2, HEAD_DIM).to(Q.dtype.element_ty)
        offs_b = DA + tl.arange(0, DB)
        b_mask = offs_b < HEAD_DIM
        if HAS_B:
            qb = tl.load(q_base + rows_m[:, None] * stride_qt + offs_b[None, :],
                         mask=m_mask[:, None] & b_mask[None, :], other=0.0)
            if HAS_ROPE:
                qb = _rope_tile(qb, q_base, rows_m, m_mask, offs_b, b_mask, stride_qt, COS, SIN, stride_ct,
                                HEAD_DIM // 2, HEAD_DIM).to(Q.dtype.element_ty)
        else:
            qb = qa  # unused

        # ---- stream K/V: unmasked full tiles, then the ragged tail ----------------------
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc_a = tl.zeros([BLOCK_M, DA], tl.float32)
        acc_b = tl.zeros([BLOCK_M, DB], tl.float32)
        k_base = K + head * stride_kh
        v_base = V + head * stride_vh
        n_full = (seqlen // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            acc_a, acc_b, m_i, l_i = _attn_tile(acc_a, acc_b, m_i, l_i, qa, qb, k_base, v_base, COS, SIN,
                                                start_n, seg_start, seqlen, stride_kt, stride_vt, stride_ct,
                                                qk_scale, HEAD_DIM, DA, DB, HAS_B, HAS_ROPE, False, BLOCK_N)
        if n_full < seqlen:
            acc_a, acc_b, m_i, l_i = _attn_tile(acc_a, acc_b, m_i, l_i, qa, qb, k_base, v_base, COS, SIN,
                                                n_full, seg_start, seqlen, stride_kt, stride_vt, stride_ct,
                                                qk_scale, HEAD_DIM, DA, DB, HAS_B, HAS_ROPE, True, BLOCK_N)

        # ---- normalise, store -------------------------------------------------------------
        inv_l = 1.0 / l_i
        o_base = O + head * stride_oh
        tl.store(o_base + rows_m[:, None] * stride_ot + offs_a[None, :],
                 (acc_a * inv_l[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None] & a_mask[None, :])
        if HAS_B:
            tl.store(o_base + rows_m[:, None] * stride_ot + offs_b[None, :],
                     (acc_b * inv_l[:, None]).to(O.dtype.element_ty), mask=m_mask[:, None] & b_mask[None, :])


# ------------------------------------------------------------------------------------------
# host side
# ------------------------------------------------------------------------------------------
def attention_config(head_dim: int, max_seqlen: int, device_type: str) -> dict:
    """Tile sizes and launch knobs (measured on H100, see benchmarks/NOTES.md)."""
    if device_type != "cuda":  # interpreter: big tiles = fewer numpy calls
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
    if max_seqlen <= 64:
        bm = max(16, 1 << (max(max_seqlen, 1) - 1).bit_length())
        return dict(BLOCK_M=max(bm, 64), BLOCK_N=32, num_warps=4, num_stages=2)
    if head_dim <= 80:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)


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


def _varlen_attention_triton(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map=None, config=None):
    T, H, D = q.shape
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    if T == 0:
        return out
    cfg = config or attention_config(D, max_seqlen, q.device.type)
    bm = cfg["BLOCK_M"]
    if block_map is None or config is not None:  # a caller's map is built for attention_config()'s BLOCK_M
        block_map = build_block_map(cu_seqlens, T, bm)
    da, db = split_head_dim(D)
    has_rope = cos is not None
    if has_rope:
        cos = cos.float() if cos.dtype != torch.float32 else cos
        sin = sin.float() if sin.dtype != torch.float32 else sin
    else:
        cos = sin = q  # never read
    grid = (block_map.shape[0], H)
    _varlen_attn_fwd[grid](
        q, k, v, out, cos, sin, cu_seqlens, block_map,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), cos.stride(0), float(scale) * 1.4426950408889634,
        HEAD_DIM=D, DA=da, DB=db if db else 16, HAS_B=db > 0, HAS_ROPE=has_rope,
        BLOCK_M=bm, BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out


# ---- torch custom op: torch.compile traces through it without a graph break ---------------
@torch.library.custom_op("qvdp::varlen_attention", mutates_args=())
def _varlen_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         max_seqlen: int, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor],
                         scale: float, block_map: Optional[torch.Tensor]) -> torch.Tensor:
    if triton_usable(q):
        return _varlen_attention_triton(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map)
    return _ref.varlen_attention_torch(q, k, v, cu_seqlens, cos, sin, scale).contiguous()


@_varlen_attention_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except Exception:
        return False


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, *, cos=None, sin=None, scale=None,
                     backend: str = "auto", validate: bool = True, block_map=None):
    """Bidirectional attention within each segment of cu_seqlens, RoPE fused.

    Args:
        q, k, v: [T, H, D] (may be strided views of a packed [T, 3, H, D] qkv; last dim contiguous).
        cu_seqlens: int32 [S + 1], 0 ... T.  max_seqlen: longest segment (host int).
        cos, sin: optional [T, D] rotary tables in HF's rotate-half layout, applied to q and k.
        scale: softmax scale, default D^-0.5.
        backend: "auto" (Triton on CUDA, else torch), "triton", "torch", "flash_attn".
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
        return _varlen_attention_op(q, k, v, cu_seqlens, max_seqlen, cos, sin, scale, block_map)
    if backend == "torch":
        return _ref.varlen_attention_torch(q, k, v, cu_seqlens, cos, sin, scale)
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func
        if cos is not None:
            q, k = _ref.apply_rope(q, cos, sin), _ref.apply_rope(k, cos, sin)
        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                      softmax_scale=scale, causal=False)
    raise ValueError(f"backend must be 'auto', 'triton', 'torch' or 'flash_attn', got {backend!r}")


def attention_flops(seqlens, num_heads: int, head_dim: int) -> float:
    """4 * sum(s^2) * H * D (QK^T and PV)."""
    return 4.0 * sum(int(s) ** 2 for s in seqlens) * num_heads * head_dim
