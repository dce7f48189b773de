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
    mode = mode or os.environ.get("QVDP_GATHER_MODE", "auto")
    if mode not in ("auto", "bcast", "p2p", "allgather"):
        raise ValueError(f"gather mode must be 'auto', 'bcast', 'p2p' or 'allgather', got {mode!r}")
    uniform = plan.uniform_block_rows()
    if mode == "allgather" and uniform is None:
        raise ValueError("gather mode 'allgather' needs a plan where every rank owns one equal run in rank order")
    comm = _comm_for(group)
    ref = local_outputs[0]
    if layout == "concat":
        local = [torch.cat(list(local_outputs), 1) if len(local_outputs) > 1 else local_outputs[0].contiguous()]
    else:
        local = [t.contiguous() for t in local_outputs]
    if outs is None:
        outs = [torch.empty((plan.total_rows, t.shape[1]), dtype=ref.dtype, device=ref.device) for t in local]
    if uniform is not None and mode in ("auto", "allgather"):
        comm.all_gather(local, outs)
        return outs if layout == "list" else outs[0]
    runs = plan.memo("runs_tensor", lambda: torch.tensor(plan.all_runs(), dtype=torch.int64).reshape(-1, 4))
    comm.gather_runs(local, outs, runs, mode == "p2p")
    return outs if layout == "list" else outs[0]
