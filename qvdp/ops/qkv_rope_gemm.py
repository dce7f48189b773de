"""The attention's qkv GEMM with the 2D rotary in its epilogue, as one CUTLASS Hopper kernel
(`csrc/qkv_rope_gemm.cu`): no separate RoPE pass over q and k.

    qkv_rope(x, w_perm, b_perm, freq, pos, num_heads)  ->  [T, 3*H*D]

`permuted_qkv(weight, bias, num_heads)` reorders the rows of q and k once (cache it): each rotate-half
pair (head dim j and j + D/2) becomes two adjacent output columns, which the kernel's epilogue
rotates inside one thread's registers. The output's q and k then have their head dims in that
(pair-interleaved) order - the same for both, so q . k and the attention are unchanged - and v is
in its usual place: view it as [T, 3, H, D] and hand q, k, v to the attention without cos/sin.
The rotation is the vision tower's 2D rotary: pair j of a head turns by pos_r[m] * inv[j] (j < D/4) or
pos_c[m] * inv[j - D/4], inv the rotary's inverse frequencies. The epilogue gets one signed frequency
per output column (`pair_freqs`: + row half, - column half, 0 for v) and the patch positions per row
(`qvdp.tables.patch_positions`), all as per-tile broadcasts, and takes sin/cos on the SFU.

Built on request with the merger's CUTLASS kernel: `QVDP_BUILD_CUTLASS=1 python setup.py build_ext
--inplace` or `python scripts/build_merger_gemm.py` (CUTLASS headers from `pip install nvidia-cutlass`);
bf16, Hopper (sm_90) only. Called through ctypes on torch's current stream.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional

import torch

from .. import reference as _ref
from ._cutlass_lib import CutlassLib

_LIB_NAME = "_qkv_rope_gemm.so"
VARIANTS = {
    0: "cooperative 128x256x64, cluster 1x2",
    1: "ping-pong 128x128x64, cluster 2x1",
}
# diagnostics only (D = acc, no bias, no rotation): variant 0's mainloop
DIAG_VARIANTS = {2: "cooperative 128x256x64, cluster 1x2, D = acc"}
DEFAULT_VARIANT = 1  # ping-pong: 0.75x cuBLAS + the RoPE pass at 4 x 720p on an H100 (benchmarks/NOTES.md)


def selected_variant(variant: Optional[int] = None) -> int:
    """`variant`, else QVDP_QKV_ROPE_VARIANT, else DEFAULT_VARIANT."""
    return int(variant if variant is not None else os.environ.get("QVDP_QKV_ROPE_VARIANT", DEFAULT_VARIANT))


_P, _I = ctypes.c_void_p, ctypes.c_int
_LIB = CutlassLib(_LIB_NAME, "QVDP_QKV_ROPE_LIB", "the CUTLASS qkv kernel",
                  {"qvdp_qkv_rope": (_I, [_P] * 3 + [_I] * 3 + [_P] * 5 + [_I, _P]),
                   "qvdp_qkv_rope_workspace": (ctypes.c_size_t, [_I] * 4)},
                  (*VARIANTS, *DIAG_VARIANTS))


unavailable_reason = _LIB.unavailable_reason  # None when qkv_rope can run on a device (default: current)
available = _LIB.available


def pair_order(num_heads: int, head_dim: int, parts: int = 3, rotated: int = 2, device=None) -> torch.Tensor:
    """Row order of the permuted weight: in each head of the first `rotated` parts (q, k), row 2i takes
    head dim i and row 2i + 1 head dim i + D/2; the other parts (v) keep their order."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    half = head_dim // 2
    i = torch.arange(half)
    within = torch.stack([i, i + half], 1).reshape(-1)  # [D]: 0, h, 1, h+1, ...
    heads = torch.arange(rotated * num_heads)[:, None] * head_dim
    rot = (heads + within[None, :]).reshape(-1)
    rest = torch.arange(rotated * num_heads * head_dim, parts * num_heads * head_dim)
    return torch.cat([rot, rest]).to(device)


def permuted_qkv(weight: torch.Tensor, bias: Optional[torch.Tensor], num_heads: int):
    """(weight with q's and k's rows in pair order, bias in the same order as fp32 or None)."""
    if weight.ndim != 2 or weight.shape[0] % (3 * num_heads):
        raise ValueError(f"weight must be [3 * num_heads * D, C], got {tuple(weight.shape)} for num_heads={num_heads}")
    D = weight.shape[0] // (3 * num_heads)
    order = pair_order(num_heads, D, device=weight.device)
    w = weight.detach()[order].contiguous()
    b = bias.detach()[order].float().contiguous() if bias is not None else None
    return w, b


def pair_freqs(num_heads: int, head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """[3*H*D] fp32, one per output column in pair order: +inv[j] where pair j turns with the patch row
    (j < D/4), -inv[j - D/4] where it turns with the column, 0 for v (the vision rotary: qvdp.reference)."""
    if head_dim % 4:
        raise ValueError(f"the 2D rotary needs a head dim divisible by 4, got {head_dim}")
    inv = _ref.rotary_inv_freq(head_dim, theta)  # [D/4]
    per_pair = torch.cat([inv, -inv])  # pairs j = 0 .. D/2 - 1
    per_col = per_pair.repeat_interleave(2)  # both columns of a pair
    rot = per_col.repeat(2 * num_heads)
    return torch.cat([rot, torch.zeros(num_heads * head_dim)]).float().to(device)


def rotary_tables(pos: torch.Tensor, head_dim: int, theta: float = 10000.0):
    """HF-layout cos/sin [T, D] of positions pos [2, T] (qvdp.reference.rotary_from_positions)."""
    return _ref.rotary_from_positions(pos[0], pos[1], head_dim, theta)


def unpermute_qk(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[..., D] in pair order -> HF's order (tests and diagnostics)."""
    half = head_dim // 2
    return torch.cat([t[..., 0::2], t[..., 1::2]], -1) if half else t


def reference(x, weight, bias, cos, sin, num_heads: int):
    """Reference in the kernel's output layout: linear, HF's RoPE (fp32) on q and k with the HF-layout
    tables cos/sin [T, D], then q's and k's head dims put in pair order."""
    T = x.shape[0]
    D = weight.shape[0] // (3 * num_heads)
    qkv = torch.nn.functional.linear(x, weight, bias).view(T, 3, num_heads, D)
    q, k, v = qkv.unbind(1)
    half = D // 2

    def pair(t):
        return torch.stack([t[..., :half], t[..., half:]], -1).reshape(t.shape)
    q, k = pair(_ref.apply_rope(q, cos, sin)), pair(_ref.apply_rope(k, cos, sin))
    return torch.stack([q, k, v], 1).reshape(T, -1)


def qkv_rope(x: torch.Tensor, w_perm: torch.Tensor, b_perm: Optional[torch.Tensor], freq: torch.Tensor,
             pos: torch.Tensor, num_heads: int, *, out: Optional[torch.Tensor] = None,
             variant: Optional[int] = None) -> torch.Tensor:
    """x [T, C] bf16 @ w_perm[3*H*D, C]^T + b_perm (fp32 [3*H*D] or None), q and k turned by the vision
    2D rotary in the epilogue: freq = pair_freqs(H, D, theta) (fp32 [3*H*D]), pos [2, T] fp32 patch rows
    and columns (qvdp.tables.patch_positions). w_perm/b_perm from permuted_qkv(). Returns [T, 3*H*D]
    bf16 with q's and k's head dims in pair order. variant: a key of VARIANTS (default DEFAULT_VARIANT or
    QVDP_QKV_ROPE_VARIANT) or of DIAG_VARIANTS."""
    if not isinstance(x, torch.Tensor) or not isinstance(w_perm, torch.Tensor):
        raise TypeError("x and w_perm must be tensors")
    if x.ndim != 2 or w_perm.ndim != 2 or x.shape[1] != w_perm.shape[1]:
        raise ValueError(f"x must be [T, C] and w_perm [3*H*D, C], got {tuple(x.shape)} and {tuple(w_perm.shape)}")
    if not isinstance(num_heads, int) or num_heads <= 0 or w_perm.shape[0] % (3 * num_heads):
        raise ValueError(f"w_perm's rows ({w_perm.shape[0]}) must be 3 * num_heads * D, num_heads={num_heads!r}")
    if x.dtype != torch.bfloat16 or w_perm.dtype != torch.bfloat16:
        raise ValueError(f"x and w_perm must be bfloat16, got {x.dtype} and {w_perm.dtype}")
    if not x.is_contiguous() or not w_perm.is_contiguous():
        raise ValueError("x and w_perm must be contiguous (row-major)")
    T, C = x.shape
    N = w_perm.shape[0]
    D = N // (3 * num_heads)
    if D % 4 or C % 8 or N % 8:
        raise ValueError(f"need a head dim divisible by 4 (the 2D rotary) and C, N multiples of 8 (16-byte TMA "
                         f"rows), got D={D} C={C} N={N}")
    if b_perm is not None and (b_perm.dtype != torch.float32 or tuple(b_perm.shape) != (N,)
                               or b_perm.device != x.device or not b_perm.is_contiguous()):
        raise ValueError(f"b_perm must be a contiguous float32 [{N}] tensor on {x.device}")
    if (not isinstance(freq, torch.Tensor) or freq.dtype != torch.float32 or tuple(freq.shape) != (N,)
            or not freq.is_contiguous() or freq.device != x.device):
        raise ValueError(f"freq must be a contiguous float32 [{N}] tensor on {x.device} (pair_freqs)")
    if (not isinstance(pos, torch.Tensor) or pos.dtype != torch.float32 or tuple(pos.shape) != (2, T)
            or pos.stride(1) != 1 or pos.device != x.device):
        raise ValueError(f"pos must be float32 [2, T={T}] with contiguous rows on {x.device} (patch_positions)")
    if not x.is_cuda or w_perm.device != x.device:
        raise ValueError(f"x and w_perm must be on one CUDA device, got {x.device} and {w_perm.device}")
    if out is None:
        out = torch.empty((T, N), dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (T, N) or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor [{T}, {N}] on {x.device}")
    v = selected_variant(variant)
    if v not in VARIANTS and v not in DIAG_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {v}")
    why = unavailable_reason(x.device)
    if why:
        raise RuntimeError(f"qkv_rope cannot run: {why}")
    if T == 0:
        return out
    workspace = _LIB.function("qvdp_qkv_rope_workspace", v)
    sms, ws, stream = _LIB.launch_context(x.device, (v, T, N, C), lambda sms: workspace(T, N, C, sms))
    rc = _LIB.function("qvdp_qkv_rope", v)(
        x.data_ptr(), w_perm.data_ptr(), out.data_ptr(), T, N, C,
        b_perm.data_ptr() if b_perm is not None else None, freq.data_ptr(), pos[0].data_ptr(), pos[1].data_ptr(),
        ws.data_ptr() if ws is not None else None, sms, stream)
    if rc:
        raise RuntimeError(f"qvdp_qkv_rope_v{v} failed (code {rc}: 1 unsupported shape, 2 initialise, 3 launch) "
                           f"for T={T} N={N} C={C}")
    return out
