"""Per-batch tables of the vision tower, built on the model's device in one vectorised pass.

For a batch of frames the tower needs, per patch: the 2D rotary cos/sin [N, D] (fp32), the four
bilinear taps into the learned position-embedding table and their weights [N, 4], and the
segment boundaries cu_seqlens (one segment per frame). qvdp.reference builds the same tables
item by item on the host (the readable reference); here the host only lists the frames (a few
ints each) and ~30 device ops do the rest, whatever the number of items: no Python loop over
patches or items on the host, no large host->device copy, no device->host sync.
The values equal the reference's bit for bit on the same device (tests/test_tables.py).
"""
from __future__ import annotations

import torch

from . import reference as R


def vision_tables(grid: tuple, head_dim: int, merge: int, side: int, theta: float, device) -> tuple:
    """(cos, sin, tap_index, tap_weight, cu_seqlens (int32, device), cu_seqlens (host list), max_seqlen)."""
    hs, ws, sizes = [], [], []
    for t, h, w in grid:
        hs += [h] * t
        ws += [w] * t
        sizes += [h * w] * t
    n_frames, n = len(sizes), sum(sizes)
    cu_list = [0]
    for s in sizes:
        cu_list.append(cu_list[-1] + s)
    meta = torch.tensor([hs, ws, cu_list[:-1], sizes], dtype=torch.int64).to(device)
    h_f, w_f, start_f, size_f = meta.unbind(0)
    # frame of every patch, and the patch's position in its frame (merge-window order)
    frame = torch.repeat_interleave(torch.arange(n_frames, device=device), size_f, output_size=n)
    local = torch.arange(n, device=device) - start_f[frame]
    h, w = h_f[frame], w_f[frame]
    mu = merge * merge
    blk, within = local // mu, local % mu
    bw = w // merge
    r = (blk // bw) * merge + within // merge
    c = (blk % bw) * merge + within % merge
    # rotary: [row freqs | col freqs] twice, HF's rotate-half layout
    inv = R.rotary_inv_freq(head_dim, theta).to(device)
    half = torch.cat([r[:, None].float() * inv, c[:, None].float() * inv], dim=-1)
    emb = torch.cat([half, half], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    # bilinear taps (align_corners=True) of the side x side table, as HF interpolates it
    def axis(idx, size):
        src = idx.float() * (side - 1) / torch.clamp(size - 1, min=1)
        fl = torch.floor(src)
        two = torch.arange(2, device=device)
        taps = fl.long()[:, None] + two
        dist = (src[:, None] - fl[:, None] - two).abs()
        return taps.clamp(0, side - 1), (1 - dist).clamp(min=0)

    ht, hwt = axis(r, h)
    wt, wwt = axis(c, w)
    idx = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
    wgt = (hwt[:, :, None] * wwt[:, None, :]).reshape(-1, 4)
    cu = torch.tensor(cu_list, dtype=torch.int32).to(device)
    return cos, sin, idx, wgt, cu, cu_list, max(sizes)
