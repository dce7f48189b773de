"""Plain-torch references and the geometry helpers of the Qwen3-VL vision tower.

These are what tests and benchmarks compare against, and what the torch fallback path
runs. Nothing here launches custom kernels.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------------------
# per-patch geometry (row/col in merge-block order), cu_seqlens, rotary tables, pos-embed taps
# ------------------------------------------------------------------------------------------
def patch_rows_cols(grid: tuple, merge: int, device=None) -> tuple:
    """(row, col) of every patch, in the processor's merge-window order, frames repeated."""
    rows, cols = [], []
    for t, h, w in grid:
        r = torch.arange(h, device=device).view(h // merge, merge, 1, 1).expand(h // merge, merge, w // merge, merge)
        c = torch.arange(w, device=device).view(1, 1, w // merge, merge).expand(h // merge, merge, w // merge, merge)
        r = r.permute(0, 2, 1, 3).reshape(-1)
        c = c.permute(0, 2, 1, 3).reshape(-1)
        rows.append(r.repeat(t))
        cols.append(c.repeat(t))
    return torch.cat(rows), torch.cat(cols)


def cu_seqlens_for(grid: tuple, device=None) -> torch.Tensor:
    """int32 [num_frames + 1]: every temporal slice is its own attention segment."""
    lens = [h * w for t, h, w in grid for _ in range(t)]
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lens, dtype=torch.int64).cumsum(0).to(torch.int32)
    return cu.to(device) if device is not None else cu


def rotary_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    spatial = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial))


def rotary_from_positions(r: torch.Tensor, c: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple:
    """cos, sin [N, head_dim] fp32 for patch rows r and columns c: [row freqs | col freqs] twice."""
    inv = rotary_inv_freq(head_dim, theta).to(r.device)
    half = torch.cat([r[:, None].float() * inv, c[:, None].float() * inv], dim=-1)
    emb = torch.cat([half, half], dim=-1)
    return emb.cos(), emb.sin()


def bilinear_taps(r: torch.Tensor, c: torch.Tensor, h: torch.Tensor, w: torch.Tensor, side: int) -> tuple:
    """Bilinear (align_corners=True) taps into the side x side table for patch (r, c) of an h x w frame
    (all per patch): indices [N, 4] (long) and weights [N, 4] (fp32), as HF interpolates the table."""
    two = torch.arange(2, device=r.device)

    def axis(idx, size):
        src = idx.float() * (side - 1) / torch.clamp(size - 1, min=1)
        fl = torch.floor(src)
        taps = fl.long()[:, None] + two
        dist = (src[:, None] - fl[:, None] - two).abs()
        return taps.clamp(0, side - 1), (1 - dist).clamp(min=0)

    ht, hw_ = axis(r, h)
    wt, ww = axis(c, w)
    idx = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
    wgt = (hw_[:, :, None] * ww[:, None, :]).reshape(-1, 4)
    return idx, wgt


def rotary_cos_sin(grid: tuple, head_dim: int, merge: int, theta: float = 10000.0, device=None) -> tuple:
    """cos, sin [N, head_dim] fp32 in HF's rotate-half layout: [row freqs | col freqs] twice."""
    r, c = patch_rows_cols(grid, merge, device)
    return rotary_from_positions(r, c, head_dim, theta)


def pos_embed_taps(grid: tuple, side: int, merge: int, device=None) -> tuple:
    """Bilinear (align_corners=True) taps into the side x side learned table, per patch.

    Returns indices [N, 4] (long) and weights [N, 4] (fp32), matching HF's interpolation of
    the 48x48 table to each frame's h x w grid.
    """
    r, c = patch_rows_cols(grid, merge, device)
    hs = torch.cat([torch.full((t * h * w,), h, device=device) for t, h, w in grid])
    ws = torch.cat([torch.full((t * h * w,), w, device=device) for t, h, w in grid])
    return bilinear_taps(r, c, hs, ws, side)


# ------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------
def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x, cos, sin):
    """x [T, H, D]; cos/sin [T, D]; computed in fp32 like HF, returned in x's dtype."""
    xf = x.float()
    return (xf * cos[:, None].float() + rotate_half(xf) * sin[:, None].float()).to(x.dtype)


def attention_reference(q, k, v, cu_seqlens, cos=None, sin=None, scale=None, dtype=torch.float64):
    """Per-segment softmax attention in `dtype` (float64 by default). q,k,v [T, H, D]."""
    T, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if cos is not None:
        c, s = cos.to(dtype)[:, None], sin.to(dtype)[:, None]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
    out = torch.empty_like(q)
    cu = cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        if b == a:
            continue
        ks, vs = k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)
        step = max(1, (1 << 27) // max(1, H * (b - a)))  # bound the score matrix for long segments
        for c in range(a, b, step):
            e = min(b, c + step)
            p = torch.softmax((q[c:e].transpose(0, 1) @ ks.transpose(-1, -2)) * scale, dim=-1)
            out[c:e] = (p @ vs).transpose(0, 1)
    return out


def varlen_attention_torch(q, k, v, cu_seqlens, cos=None, sin=None, scale=None, cu_list=None):
    """The torch fallback of qvdp.varlen_attention: HF-style RoPE, SDPA per segment."""
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    cu = cu_list if cu_list is not None else cu_seqlens.tolist()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for a, b in zip(cu[:-1], cu[1:]):
        if b == a:
            continue
        qs, ks, vs = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        out[a:b] = o[0].transpose(0, 1)
    return out


# ------------------------------------------------------------------------------------------
# patch merger
# ------------------------------------------------------------------------------------------
def patch_merger_reference(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, *,
                           merge_size=2, postshuffle_norm=False, norm="layernorm", eps=1e-6, dtype=None):
    """norm -> [N, H] viewed as [N/m^2, m^2 H] -> fc1 -> GELU(erf) -> fc2, optionally upcast."""
    orig = x.dtype
    if dtype is not None:
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias = map(
            cast, (x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias))
    mu = merge_size * merge_size
    H = x.shape[-1]

    def do_norm(t, width):
        if norm == "layernorm":
            return F.layer_norm(t, (width,), norm_weight, norm_bias, eps)
        tf = t.float()
        y = tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + eps)
        return (norm_weight.float() * y).to(t.dtype)

    if postshuffle_norm:
        y = do_norm(x.reshape(-1, mu * H), mu * H)
    else:
        y = do_norm(x, H).reshape(-1, mu * H)
    y = F.gelu(F.linear(y, fc1_weight, fc1_bias))
    y = F.linear(y, fc2_weight, fc2_bias)
    return y if dtype is not None else y.to(orig)
