"""Per-batch tables of the vision tower, built on the model's device in one vectorised pass.

For a batch of frames the tower needs, per patch: the 2D rotary cos/sin [N, D] (fp32), the four
bilinear taps into the learned position-embedding table and their weights [N, 4], and the
segment boundaries cu_seqlens (one segment per frame). qvdp.reference builds the same tables
item by item on the host (the readable reference); here the host only lists the frames (a few
ints each) and ~30 device ops find every patch's (row, col) and frame size, then the same
reference formulas (rotary_from_positions, bilinear_taps) run on them, whatever the number of items: no Python loop over
patches or items on the host, no large host->device copy, no device->host sync.
The values equal the reference's bit for bit on the same device (tests/test_tables.py).
"""
from __future__ import annotations

import torch

from . import reference as R


def _patches(grid: tuple, merge: int, device):
    """Per patch: row r, column c (merge-window order), its frame's h and w; plus the frame starts, the
    host list of cu_seqlens and the frame sizes."""
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
    return r, c, h, w, start_f, cu_list, sizes


def vision_tables(grid: tuple, head_dim: int, merge: int, side: int, theta: float, device) -> tuple:
    """(cos, sin, tap_index, tap_weight, cu_seqlens (int32, device), cu_seqlens (host list), max_seqlen)."""
    r, c, h, w, start_f, cu_list, sizes = _patches(grid, merge, device)
    n = cu_list[-1]
    cos, sin = R.rotary_from_positions(r, c, head_dim, theta)
    idx, wgt = R.bilinear_taps(r, c, h, w, side)
    cu = torch.cat([start_f, start_f.new_full((1,), n)]).to(torch.int32)  # frame starts + total: no second copy
    return cos, sin, idx, wgt, cu, cu_list, max(sizes)


def patch_positions(grid: tuple, merge: int, device) -> torch.Tensor:
    """[2, N] fp32: every patch's row and column (the rotary's positions), rows contiguous."""
    r, c = _patches(grid, merge, device)[:2]
    return torch.stack([r, c]).float()
