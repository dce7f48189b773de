"""Python side of the native NCCL gather (csrc/allgather_reorder.cpp): one communicator per
process group, created once (unique id broadcast over the torch.distributed group) and cached."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .plan import ShardPlan

_COMMS = {}


def native_extension():
    from .. import _C
    return _C


def _comm_for(group):
    key = id(group) if group is not None else "world"
    c = _COMMS.get(key)
    if c is not None:
        return c
    _C = native_extension()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dev = torch.cuda.current_device()
    buf = torch.zeros(128, dtype=torch.uint8, device=f"cuda:{dev}")
    if rank == 0:
        buf.copy_(torch.frombuffer(bytearray(_C.nccl_unique_id()), dtype=torch.uint8))
    src = 0 if group is None else dist.get_global_rank(group, 0)
    dist.broadcast(buf, src=src, group=group)
    c = _C.NcclComm(bytes(buf.cpu().tolist()), world, rank, dev)
    _COMMS[key] = c
    return c


def gather_rows_native(local_outputs, plan: ShardPlan, group, layout: str, mode: str | None = None, outs=None):
    """mode: "auto" (default: a plain NCCL all-gather when plan.uniform_block_rows() holds, else grouped
    broadcasts), "bcast", "p2p" (grouped send/recv), "allgather" (only for uniform plans).
    outs: validated contiguous [total_rows, width] destinations (one per output, or one for "concat");
    allocated when None."""
    return native_runner(local_outputs, plan, group, layout, mode, outs)()


def native_runner(local_outputs, plan: ShardPlan, group, layout: str, mode: str | None = None, outs=None):
    """gather_rows_native's work as a function of no arguments, everything derivable from the arguments'
    shapes prepared once: calling it enqueues the gather of the local tensors' current contents (new outputs
    each call when `outs` is None). For repeated calls with the same tensors (gather_rows' fast path)."""
    mode = mode or os.environ.get("QVDP_GATHER_MODE", "auto")
    if mode not in ("auto", "bcast", "p2p", "allgather"):
        raise ValueError(f"gather mode must be 'auto', 'bcast', 'p2p' or 'allgather', got {mode!r}")
    uniform = plan.uniform_block_rows()
    if mode == "allgather" and uniform is None:
        raise ValueError("gather mode 'allgather' needs a plan where every rank owns one equal run in rank order")
    comm = _comm_for(group)
    ref = local_outputs[0]
    srcs = list(local_outputs)
    cat = layout == "concat" and len(srcs) > 1
    widths = [sum(t.shape[1] for t in srcs)] if layout == "concat" else [t.shape[1] for t in srcs]
    runs = None if uniform is not None and mode in ("auto", "allgather") else \
        plan.memo("runs_tensor", lambda: torch.tensor(plan.all_runs(), dtype=torch.int64).reshape(-1, 4))
    p2p = mode == "p2p"

    def run():
        local = [torch.cat(srcs, 1)] if cat else [t.contiguous() for t in srcs]
        dst = outs if outs is not None else \
            [torch.empty((plan.total_rows, w), dtype=ref.dtype, device=ref.device) for w in widths]
        if runs is None:
            comm.all_gather(local, dst)
        else:
            comm.gather_runs(local, dst, runs, p2p)
        return dst if layout == "list" else dst[0]
    return run
