"""The attention's qkv projection with the 2D rotary applied in the GEMM's epilogue (Triton).

    out[T, 3*H*D] = x @ W^T + b, q's and k's columns rotated (HF's rotate-half form) before the store.

This replaces cuBLAS's qkv GEMM + the separate RoPE pass over q and k (which reads and writes q and k
once more: ~130 MB per layer at 4 x 720p, ~70 us on an H100). The output keeps the packed
[T, 3, H, D] layout, so q, k, v are the same strided views as before and any attention kernel
(FA3, flash-attn, qvdp's own with cos=None) takes them unchanged.

How the pairs meet in one program: rotary pair p (0 <= p < 3*H*D/2; the first 2*H*D/2 pairs are q's
and k's) is the columns a(p) = (p // (D/2)) * D + p % (D/2) and a(p) + D/2. A program owns
BLOCK_M rows x BLOCK_P pairs; it gathers the weight rows of both halves straight from W (whole
K-contiguous rows: no permuted copy of the weight), accumulates the two halves in two fp32
accumulators (or, ONE_DOT, in one [BLOCK_M, 2*BLOCK_P] accumulator whose columns interleave the
halves, split in the epilogue), adds the bias, rotates in fp32 with cos/sin [T, D] (fp32) and stores
both halves to their own columns. v's pairs are stored unrotated.

HF rounds the qkv output to bf16 and then rotates in fp32; here the fp32 accumulator is rotated and
rounded once (slightly more accurate; tests compare with an fp64 reference of linear + RoPE).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ._triton_utils import HAS_TRITON, triton_usable
from .. import reference as _ref

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _qkv_rope_gemm(X, W, B, COS, SIN, OUT, M, K, NP, NROT, stride_xm, stride_wn, stride_om, stride_cm,
                       HALF: tl.constexpr, HAS_BIAS: tl.constexpr, SAME_HALVES: tl.constexpr,
                       EVEN_K: tl.constexpr, ONE_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_p = tl.cdiv(NP, BLOCK_P)
        per_group = GROUP_M * num_p  # grouped tile order: GROUP_M row tiles share the weight tiles in L2
        first_m = (pid // per_group) * GROUP_M
        gsz = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % gsz
        pid_p = (pid % per_group) // gsz

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rm < M
        rm_ld = tl.minimum(rm, M - 1).to(tl.int64)  # clamped: the main loop's loads need no row mask
        rk = tl.arange(0, BLOCK_K)
        xp = X + rm_ld[:, None] * stride_xm + rk[None, :]
        if ONE_DOT:  # column c of the tile: pair c // 2, half c % 2
            pc = pid_p * BLOCK_P + tl.arange(0, 2 * BLOCK_P) // 2
            pc = tl.minimum(pc, NP - 1)
            wrow = (pc // HALF) * (2 * HALF) + pc % HALF + (tl.arange(0, 2 * BLOCK_P) % 2) * HALF
            wp = W + wrow.to(tl.int64)[None, :] * stride_wn + rk[:, None]  # [BLOCK_K, 2 * BLOCK_P]
            acc = tl.zeros([BLOCK_M, 2 * BLOCK_P], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                if EVEN_K:
                    xt = tl.load(xp)
                    wt = tl.load(wp)
                else:
                    km = rk < K - k0
                    xt = tl.load(xp, mask=km[None, :], other=0.0)
                    wt = tl.load(wp, mask=km[:, None], other=0.0)
                acc = tl.dot(xt, wt, acc)
                xp += BLOCK_K
                wp += BLOCK_K
            acc_a, acc_b = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_P, 2]))
        else:
            pl = tl.minimum(pid_p * BLOCK_P + tl.arange(0, BLOCK_P), NP - 1)
            wrow = (pl // HALF) * (2 * HALF) + pl % HALF
            wa = W + wrow.to(tl.int64)[None, :] * stride_wn + rk[:, None]  # [BLOCK_K, BLOCK_P]
            wb = wa + HALF * stride_wn
            acc_a = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32)
            acc_b = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                if EVEN_K:
                    xt = tl.load(xp)
                    ta = tl.load(wa)
                    tb = tl.load(wb)
                else:
                    km = rk < K - k0
                    xt = tl.load(xp, mask=km[None, :], other=0.0)
                    ta = tl.load(wa, mask=km[:, None], other=0.0)
                    tb = tl.load(wb, mask=km[:, None], other=0.0)
                acc_a = tl.dot(xt, ta, acc_a)
                acc_b = tl.dot(xt, tb, acc_b)
                xp += BLOCK_K
                wa += BLOCK_K
                wb += BLOCK_K

        # epilogue: bias, rotation (q/k pairs), two stores
        pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = pp < NP
        col_a = (pp // HALF) * (2 * HALF) + pp % HALF
        if HAS_BIAS:
            acc_a += tl.load(B + col_a, mask=pmask, other=0.0).to(tl.float32)[None, :]
            acc_b += tl.load(B + col_a + HALF, mask=pmask, other=0.0).to(tl.float32)[None, :]
        j = pp % HALF
        rot = pmask & (pp < NROT)
        rows64 = rm.to(tl.int64)
        cm = rmask[:, None] & rot[None, :]
        cp = COS + rows64[:, None] * stride_cm + j[None, :]
        sp = SIN + rows64[:, None] * stride_cm + j[None, :]
        c_a = tl.load(cp, mask=cm, other=1.0)
        s_a = tl.load(sp, mask=cm, other=0.0)
        if SAME_HALVES:  # cos[:, j] == cos[:, j + D/2] (the vision rotary's cat(freqs, freqs))
            c_b = c_a
            s_b = s_a
        else:
            c_b = tl.load(cp + HALF, mask=cm, other=1.0)
            s_b = tl.load(sp + HALF, mask=cm, other=0.0)
        o_a = acc_a * c_a - acc_b * s_a
        o_b = acc_b * c_b + acc_a * s_b
        om = rmask[:, None] & pmask[None, :]
        op = OUT + rows64[:, None] * stride_om + col_a[None, :]
        tl.store(op, o_a.to(OUT.dtype.element_ty), mask=om)
        tl.store(op + HALF, o_b.to(OUT.dtype.element_ty), mask=om)


# (BLOCK_M, BLOCK_P, BLOCK_K, num_warps, num_stages, GROUP_M, ONE_DOT); chosen by
# benchmarks/diag_qkv_rope.py on an H100 (see benchmarks/NOTES.md); QVDP_QKV_ROPE_CONFIG overrides it
DEFAULT_CONFIG = (128, 64, 64, 8, 3, 8, 0)
INTERPRETER_CONFIG = (16, 16, 32, 4, 1, 4, 0)


def _config(x) -> tuple:
    raw = os.environ.get("QVDP_QKV_ROPE_CONFIG", "")
    if raw:
        vals = tuple(int(v) for v in raw.split(","))
        if len(vals) != 7:
            raise ValueError(f"QVDP_QKV_ROPE_CONFIG must be 7 comma-separated ints "
                             f"(BLOCK_M,BLOCK_P,BLOCK_K,warps,stages,GROUP_M,ONE_DOT), got {raw!r}")
        return vals
    return DEFAULT_CONFIG if x.is_cuda else INTERPRETER_CONFIG


def qkv_rope_reference(x, weight, bias, cos, sin, num_heads: int, rotate: int = 2):
    """Linear, then HF's RoPE (fp32) on the first `rotate` of the three [T, H, D] parts."""
    T = x.shape[0]
    D = weight.shape[0] // (3 * num_heads)
    qkv = F.linear(x, weight, bias).view(T, 3, num_heads, D)
    parts = [(_ref.apply_rope(p, cos, sin) if i < rotate else p) for i, p in enumerate(qkv.unbind(1))]
    return torch.stack(parts, 1).reshape(T, -1)


def qkv_rope(x: torch.Tensor, weight: torch.Tensor, bias, cos: torch.Tensor, sin: torch.Tensor,
             num_heads: int, *, halves_equal: bool = False, out: torch.Tensor | None = None,
             config: tuple | None = None) -> torch.Tensor:
    """x [T, C] @ weight[3*H*D, C]^T + bias, q and k (the first two thirds) rotated by cos/sin [T, D]
    (rotate-half form) in the GEMM's epilogue. Returns [T, 3*H*D] in x's dtype (view it as
    [T, 3, H, D]). halves_equal: the caller guarantees cos[:, :D/2] == cos[:, D/2:] (and sin), as for
    the vision rotary tables, so the epilogue loads one half. CUDA, or CPU under TRITON_INTERPRET=1;
    elsewhere the torch reference."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a [T, C] tensor, got {getattr(x, 'shape', type(x))}")
    T, C = x.shape
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if weight.ndim != 2 or weight.shape[1] != C or weight.shape[0] % (3 * num_heads):
        raise ValueError(f"weight must be [3 * num_heads * D, {C}] for x [T, {C}] and num_heads={num_heads}, "
                         f"got {tuple(weight.shape)}")
    N = weight.shape[0]
    D = N // (3 * num_heads)
    if D % 2:
        raise ValueError(f"RoPE needs an even head dim, got D={D}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"bias must be [{N}], got {tuple(bias.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.ndim != 2 or t.shape[0] != T or t.shape[1] < D or t.stride(1) != 1:
            raise ValueError(f"{name} must be [T={T}, D={D}] with a contiguous last dim, got {tuple(t.shape)}")
    if cos.stride(0) != sin.stride(0):
        raise ValueError("cos and sin must have the same row stride")
    for name, t in (("weight", weight), ("bias", bias), ("cos", cos), ("sin", sin)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"weight and bias must have x's dtype {x.dtype}, got {weight.dtype}"
                        f"{'' if bias is None else ' / ' + str(bias.dtype)}")
    if out is not None and (tuple(out.shape) != (T, N) or out.dtype != x.dtype or out.stride(1) != 1
                            or out.device != x.device):
        raise ValueError(f"out must be [{T}, {N}] {x.dtype} on {x.device} with a contiguous last dim")
    if not triton_usable(x):
        ref = qkv_rope_reference(x, weight, bias, cos, sin, num_heads)
        return ref if out is None else out.copy_(ref)
    if out is None:
        out = torch.empty((T, N), dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    if x.stride(1) != 1:
        x = x.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    cos = cos if cos.dtype == torch.float32 else cos.float()
    sin = sin if sin.dtype == torch.float32 else sin.float()
    bm, bp, bk, warps, stages, group, one_dot = config or _config(x)
    half = D // 2
    NP = N // 2
    grid = (triton.cdiv(T, bm) * triton.cdiv(NP, bp),)
    _qkv_rope_gemm[grid](x, weight, bias if bias is not None else x, cos, sin, out, T, C, NP, 2 * num_heads * half,
                         x.stride(0), weight.stride(0), out.stride(0), cos.stride(0),
                         HALF=half, HAS_BIAS=bias is not None, SAME_HALVES=bool(halves_equal),
                         EVEN_K=C % bk == 0, ONE_DOT=bool(one_dot), BLOCK_M=bm, BLOCK_P=bp, BLOCK_K=bk,
                         GROUP_M=group, num_warps=warps, num_stages=stages)
    return out
