"""Residual add + bias + LayerNorm in one pass (Triton).

In each pre-norm block the residual stream takes `x + proj(o)` and then `LN2` of it, and
`x + fc2(h)` followed by the next block's `LN1`. Eager torch spends five passes over [T, H] on each
(GEMM epilogue bias, add: read 2 write 1, LayerNorm: read 1 write 1). Here the GEMM runs without
bias and one kernel reads x and y once and writes both the new stream s = x + y + bias and
h = LayerNorm(s): four passes, one launch instead of two.

Rounding follows HF: s is rounded to the activation dtype and the LayerNorm statistics are taken
from the rounded s in fp32.

Deferred form (y=None, store_sum=False; the tower's default, Qwen3VLVisionForward(deferred_bias=True)):
proj and fc2 accumulate into the stream in place (cuBLAS beta=1), the stream carries no bias, and the
pass reads x once, adds the fp32 prefix sum of the biases so far in registers and writes only h: two
passes over [T, H] instead of four (benchmarks/diag_deferred_bias.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton_utils import FP_FUSION, HAS_TRITON, next_pow2, triton_usable

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _add_layernorm(X, Y, B, W, LB, S, H, n_rows, N, eps, HAS_Y: tl.constexpr, HAS_BIAS: tl.constexpr,
                       HAS_LN: tl.constexpr, STORE_S: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        cmask = cols < N
        m = (rows < n_rows)[:, None] & cmask[None, :]
        off = rows[:, None] * N + cols[None, :]
        s = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        if HAS_Y:
            s += tl.load(Y + off, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            s += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        s = s.to(X.dtype.element_ty)
        if STORE_S:
            tl.store(S + off, s, mask=m)
        if HAS_LN:
            sf = s.to(tl.float32)
            mean = tl.sum(sf, 1) / N
            d = tl.where(m, sf - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / N + eps)
            w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
            lb = tl.load(LB + cols, mask=cmask, other=0.0).to(tl.float32)
            h = d * rstd[:, None] * w[None, :] + lb[None, :]
            tl.store(H + off, h.to(H.dtype.element_ty), mask=m)


def _check(x, y, bias, weight, norm_bias):
    if not isinstance(x, torch.Tensor) or not (y is None or isinstance(y, torch.Tensor)):
        raise TypeError("x must be a tensor and y a tensor or None")
    if y is None:
        y = x
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be 2-D [rows, H] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype or x.device != y.device:
        raise TypeError(f"x and y must share dtype and device, got {x.dtype}/{x.device} and {y.dtype}/{y.device}")
    H = x.shape[1]
    for name, t in (("bias", bias), ("norm_weight", weight), ("norm_bias", norm_bias)):
        if t is not None and (t.ndim != 1 or t.shape[0] != H or t.device != x.device):
            raise ValueError(f"{name} must be [{H}] on {x.device}, got {tuple(t.shape)} on {t.device}")
    if (weight is None) != (norm_bias is None):
        raise ValueError("norm_weight and norm_bias go together (both or neither)")


def add_layernorm(x, y=None, bias=None, norm_weight=None, norm_bias=None, eps: float = 1e-6,
                  store_sum: bool = True):
    """s = x (+ y) (+ bias), and h = LayerNorm(s) over the last dim when norm_weight/norm_bias are given.

    x, y: [rows, H] of one dtype (the residual stream and a bias-free GEMM output); y None adds nothing.
    bias: [H], any float dtype (added in fp32; the tower's deferred biases are fp32 prefix sums).
    Returns (s, h): h None without a norm; s None when store_sum=False (only h is written: the
    deferred-bias path, where the stream itself stays bias-free and s exists only in registers).
    Triton on CUDA (or under TRITON_INTERPRET=1), torch otherwise.
    """
    _check(x, y, bias, norm_weight, norm_bias)
    has_ln = norm_weight is not None
    if not store_sum and not has_ln:
        raise ValueError("add_layernorm: store_sum=False needs norm_weight/norm_bias (nothing would be written)")
    if not triton_usable(x):
        s = x.float() + (y.float() if y is not None else 0.0)
        if bias is not None:
            s = s + bias.float()
        s = s.to(x.dtype)
        h = F.layer_norm(s.float(), (s.shape[1],), norm_weight.float(), norm_bias.float(), eps).to(x.dtype) \
            if has_ln else None
        return (s if store_sum else None), h
    x = x.contiguous()
    y = y.contiguous() if y is not None else None
    n, H = x.shape
    s = torch.empty_like(x) if store_sum else None
    h = torch.empty_like(x) if has_ln else s
    if n == 0:
        return s, (h if has_ln else None)
    block = next_pow2(H)
    rows = max(1, min(16, 4096 // block))
    _add_layernorm[(triton.cdiv(n, rows),)](
        x, y if y is not None else x, bias if bias is not None else x, norm_weight if has_ln else x,
        norm_bias if has_ln else x, s if store_sum else h, h, n, H, float(eps), HAS_Y=y is not None,
        HAS_BIAS=bias is not None, HAS_LN=has_ln, STORE_S=store_sum, ROWS=rows, BLOCK=block,
        num_warps=8 if block >= 1024 else 4, **FP_FUSION)
    return s, (h if has_ln else None)
