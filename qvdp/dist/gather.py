"""All-gather-with-reorder: every rank's variable-size rows land directly at their final
rows of the original-order output. No padding, no staging buffer, no second pass.

Backends behind one entry point (gather_rows):
- "push": SM stores over NVLink into caller-held symmetric-memory outputs (qvdp/dist/push.py), for
  the GPUs of one host;
- "native": the NCCL extension in csrc/ (grouped broadcasts from each rank's local buffer
  straight into the output slices; a plain ncclAllGather when every rank owns one equal run in
  rank order, which contiguous plans give for equal items and split videos), when built and the
  group is NCCL;
- "torch": torch.distributed broadcasts of each contiguous run, from the owner's local rows
  into views of the output, on any backend (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .plan import ShardPlan


def group_info(group=None) -> tuple:
    """(world_size, rank) of the group; (1, 0) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def group_backend(group=None) -> str:
    if not (dist.is_available() and dist.is_initialized()):
        return "none"
    return str(dist.get_backend(group)).lower()


def _global_rank(group, r: int) -> int:
    if group is None or group is dist.group.WORLD:
        return r
    return dist.get_global_rank(group, r)


def check_local_outputs(local_outputs, plan: ShardPlan, rank: int, name: str = "local_outputs"):
    if not isinstance(local_outputs, (list, tuple)) or len(local_outputs) == 0:
        raise TypeError(f"{name} must be a non-empty list of [rows, width] tensors")
    rows = plan.rows(rank)
    ref = local_outputs[0]
    for i, t in enumerate(local_outputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{name}[{i}] must be 2-D [rows, width], got shape {tuple(t.shape)}")
        if t.shape[0] != rows:
            raise ValueError(f"{name}[{i}] has {t.shape[0]} rows but the plan gives rank {rank} {rows} rows")
        if t.dtype != ref.dtype or t.device != ref.device:
            raise TypeError(f"{name}[{i}] is {t.dtype} on {t.device}; all outputs must match {name}[0] "
                            f"({ref.dtype} on {ref.device})")
        if t.shape[0] > 0 and t.stride(1) != 1:
            raise ValueError(f"{name}[{i}] must have a contiguous last dim, got strides {t.stride()}")


def _native_available(group) -> bool:
    if group_backend(group) != "nccl":
        return False
    try:
        from .. import _C  # noqa: F401
        return True
    except Exception:
        return False


def gather_rows(local_outputs, plan: ShardPlan, group=None, *, layout: str = "list", backend: str = "auto",
                out=None):
    """Gather every rank's rows into original item order on every rank.

    Args:
        local_outputs: list of k tensors [plan.rows(rank), width_i] (e.g. main + deepstack features).
        plan: the ShardPlan every rank computed.
        layout: "list" -> k tensors [total_rows, width_i]; "concat" -> one [total_rows, sum(width_i)].
        backend: "auto" | "native" | "torch" | "push".
            "push" (GPUs of one host): SM stores over NVLink into `out`, buffers from
            qvdp.dist.symmetric_empty (see qvdp/dist/push.py). With `out`, "auto" takes push or the
            native NCCL gather into `out`, whichever the measurements favour for the plan (push.prefer_push).
        out: buffers from qvdp.dist.symmetric_empty (backends "push", "native", "auto"): one
            [>= total_rows, sum(width_i)] ("concat") or a list of k [>= total_rows, width_i] ("list");
            the result is views of their first total_rows rows.
    """
    if out is not None and backend in ("auto", "push") and os.environ.get("QVDP_PUSH_IMPL", "auto") != "triton":
        from .push import push_fast_path
        res = push_fast_path(local_outputs, plan, group, layout, out, backend)  # a repeat of a validated call
        if res is not None:
            return res
    world, rank = group_info(group)
    if world != plan.world_size:
        raise ValueError(f"plan was made for world_size {plan.world_size} but the group has {world} ranks")
    if layout not in ("list", "concat"):
        raise ValueError(f"layout must be 'list' or 'concat', got {layout!r}")
    check_local_outputs(local_outputs, plan, rank)
    if backend not in ("auto", "native", "torch", "push"):
        raise ValueError(f"backend must be 'auto', 'native', 'torch' or 'push', got {backend!r}")
    if backend == "push" and out is None:
        raise ValueError("backend 'push' needs out= buffers from qvdp.dist.symmetric_empty")
    if out is not None:
        if backend == "torch":
            raise ValueError("out= is for backends 'push', 'native' and 'auto' (symmetric buffers), not 'torch'")
        if group_backend(group) != "nccl":
            raise ValueError(f"out= (symmetric buffers) needs an NCCL group of GPUs of one host, got backend "
                             f"{group_backend(group)!r}")
        from .push import check_push_out, gather_rows_push, prefer_push, result_views
        if world == 1:  # nothing to exchange: the rows are copied into out
            bufs = [b for b, _ in check_push_out(out, local_outputs, plan, group, layout)]
            srcs = [torch.cat(list(local_outputs), 1)] if layout == "concat" else list(local_outputs)
            for b, t in zip(bufs, srcs):
                b[:plan.total_rows].copy_(t)
            return result_views(bufs, plan, layout)
        asked = backend
        if backend == "auto":  # the faster of the two for this plan (measured: qvdp/dist/push.py)
            one = layout == "concat" or len(local_outputs) == 1
            backend = "push" if prefer_push(plan, one) or not _native_available(group) else "native"
        if backend == "push":
            return gather_rows_push(local_outputs, plan, group, layout, out, asked)
        views = [b[:plan.total_rows] for b, _ in check_push_out(out, local_outputs, plan, group, layout)]
        from .native import gather_rows_native
        return gather_rows_native(local_outputs, plan, group, layout, outs=views)
    if world == 1:
        return list(local_outputs) if layout == "list" else torch.cat(list(local_outputs), 1)
    if backend == "auto":
        backend = "native" if _native_available(group) else "torch"
    if backend == "native":
        from .native import gather_rows_native
        return gather_rows_native(local_outputs, plan, group, layout)
    return _gather_rows_torch(local_outputs, plan, group, rank, layout)


def _gather_rows_torch(local_outputs, plan, group, rank, layout):
    ref = local_outputs[0]
    if layout == "concat":
        srcs = [torch.cat(list(local_outputs), 1) if len(local_outputs) > 1 else local_outputs[0]]
    else:
        srcs = list(local_outputs)
    outs = [torch.empty((plan.total_rows, s.shape[1]), dtype=ref.dtype, device=ref.device) for s in srcs]
    if plan.uniform_block_rows() is not None and group_backend(group) == "nccl":
        for src, out in zip(srcs, outs):  # a plain all-gather: rank r's rows are rows [r*n, (r+1)*n)
            dist.all_gather_into_tensor(out, src.contiguous(), group=group)
        return outs if layout == "list" else outs[0]
    for r in range(plan.world_size):
        gsrc = _global_rank(group, r)
        for (ls, os_, n) in plan.runs(r):
            for src, out in zip(srcs, outs):
                view = out[os_:os_ + n]
                if r == rank:
                    view.copy_(src[ls:ls + n])
                dist.broadcast(view, src=gsrc, group=group)
    return outs if layout == "list" else outs[0]
