"""Patch merger: norm + 2x2 merge + Linear + GELU + Linear.

The torch path (used on CPU and as the reference) runs norm -> view -> addmm -> gelu -> addmm.
A fused Triton version (norm folded into the first GEMM's prologue, bias+GELU in its epilogue)
is tracked in issue 4; until it lands and beats cuBLAS, this op dispatches to torch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

NORMS = ("layernorm", "rmsnorm")


def _check(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size, postshuffle_norm,
           norm):
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a tensor [N, H], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    mu = merge_size * merge_size
    N, H = x.shape
    if N % mu:
        raise ValueError(f"x has {N} rows, not a multiple of merge_size^2 = {mu}")
    nw = mu * H if postshuffle_norm else H
    if norm_weight.shape != (nw,):
        raise ValueError(f"norm_weight must have shape [{nw}], got {tuple(norm_weight.shape)}")
    if norm == "layernorm" and (norm_bias is None or norm_bias.shape != (nw,)):
        raise ValueError(f"norm_bias must have shape [{nw}] for layernorm")
    if fc1_weight.ndim != 2 or fc1_weight.shape[1] != mu * H:
        raise ValueError(f"fc1_weight must have shape [inner, {mu * H}], got {tuple(fc1_weight.shape)}")
    if fc2_weight.ndim != 2 or fc2_weight.shape[1] != fc1_weight.shape[0]:
        raise ValueError(f"fc2_weight must have shape [out, {fc1_weight.shape[0]}], got {tuple(fc2_weight.shape)}")


def _patch_merger_torch(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                        postshuffle_norm, norm, eps):
    mu = merge_size * merge_size
    H = x.shape[-1]
    if norm == "layernorm":
        if postshuffle_norm:
            y = F.layer_norm(x.reshape(-1, mu * H), (mu * H,), norm_weight, norm_bias, eps)
        else:
            y = F.layer_norm(x, (H,), norm_weight, norm_bias, eps).reshape(-1, mu * H)
    else:
        width = mu * H if postshuffle_norm else H
        xv = x.reshape(-1, width)
        xf = xv.float()
        y = (norm_weight.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))).to(x.dtype)
        y = y.reshape(-1, mu * H)
    y = F.gelu(F.linear(y, fc1_weight, fc1_bias))
    return F.linear(y, fc2_weight, fc2_bias)


@torch.library.custom_op("qvdp::patch_merger", mutates_args=())
def _patch_merger_op(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: Optional[torch.Tensor],
                     fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor], fc2_weight: torch.Tensor,
                     fc2_bias: Optional[torch.Tensor], merge_size: int, postshuffle_norm: bool, norm: str,
                     eps: float) -> torch.Tensor:
    return _patch_merger_torch(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size,
                               postshuffle_norm, norm, eps).contiguous()


@_patch_merger_op.register_fake
def _(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size, postshuffle_norm, norm,
      eps):
    return x.new_empty((x.shape[0] // (merge_size * merge_size), fc2_weight.shape[0]))


def patch_merger(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, *, merge_size=2,
                 postshuffle_norm=False, norm="layernorm", eps=1e-6):
    """[N, H] patches in merge-window order -> [N / merge_size^2, out]."""
    _check(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, merge_size, postshuffle_norm,
           norm)
    return _patch_merger_op(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, int(merge_size),
                            bool(postshuffle_norm), norm, float(eps))
