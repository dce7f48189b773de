"""Interpolated position embedding added to the patch-embed output in one pass (Triton).

Qwen3-VL adds, to every patch, a bilinear mix of four rows of a learned [side^2, H] table (the
taps and weights come from qvdp.tables). Eager torch materialises the four gathered rows in fp32
([N, 4, H]), reduces them, casts, and adds: ~8 passes over [N, H] and four launches (0.46 ms of an
H100 forward at 4 x 720p). Here one kernel reads x once, the table rows (a few MB, L2-resident) and
writes x once: x <- x + sum_k w_k * table[idx_k], in fp32, rounded once.
"""
from __future__ import annotations

import torch

from ._triton_utils import FP_FUSION, HAS_TRITON, next_pow2, triton_usable

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _pos_embed_add(X, TAB, IDX, WGT, n_rows, N, TAPS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        rmask = rows < n_rows
        cols = tl.arange(0, BLOCK)
        cmask = cols < N
        m = rmask[:, None] & cmask[None, :]
        off = rows[:, None] * N + cols[None, :]
        acc = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        for k in tl.static_range(TAPS):
            i = tl.load(IDX + rows * TAPS + k, mask=rmask, other=0).to(tl.int64)
            w = tl.load(WGT + rows * TAPS + k, mask=rmask, other=0.0).to(tl.float32)
            e = tl.load(TAB + i[:, None] * N + cols[None, :], mask=m, other=0.0).to(tl.float32)
            acc += w[:, None] * e
        tl.store(X + off, acc.to(X.dtype.element_ty), mask=m)


def pos_embed_add_(x: torch.Tensor, table: torch.Tensor, idx: torch.Tensor, wgt: torch.Tensor) -> torch.Tensor:
    """In place: x[n] += sum_k wgt[n, k] * table[idx[n, k]] (fp32 math). x [N, H] contiguous, table
    [R, H], idx [N, K] integer, wgt [N, K] float, all on x's device. Returns x."""
    for name, t in (("x", x), ("table", table), ("idx", idx), ("wgt", wgt)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.ndim != 2 or t.device != x.device:
            raise ValueError(f"{name} must be 2-D on {x.device}, got {tuple(t.shape)} on {t.device}")
    N, H = x.shape
    if table.shape[1] != H:
        raise ValueError(f"table must be [rows, {H}], got {tuple(table.shape)}")
    if idx.shape[0] != N or wgt.shape != idx.shape:
        raise ValueError(f"idx and wgt must both be [{N}, taps], got {tuple(idx.shape)} and {tuple(wgt.shape)}")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise TypeError(f"idx must be an integer tensor, got {idx.dtype}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous (it is updated in place)")
    if N == 0:
        return x
    if not triton_usable(x):
        pos = (table[idx].float() * wgt.float()[:, :, None]).sum(1)
        x.copy_((x.float() + pos).to(x.dtype))
        return x
    table, idx, wgt = table.contiguous(), idx.contiguous(), wgt.contiguous()
    block = next_pow2(H)
    rows = max(1, min(16, 4096 // block))
    _pos_embed_add[(triton.cdiv(N, rows),)](x, table, idx, wgt, N, H, TAPS=idx.shape[1], ROWS=rows, BLOCK=block,
                                            num_warps=8 if block >= 1024 else 4, **FP_FUSION)
    return x
