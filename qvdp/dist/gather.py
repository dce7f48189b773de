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

import math
import os
import time

import torch
import torch.distributed as dist

from .plan import ShardPlan
from . import push as _push
from .push import _group_key, _sig  # (push.py is plain Python; its CUDA pieces load on first use)


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
                out=None, tune: bool | None = None):
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
        tune: with backend "auto", measure instead of using the built-in rule (default: the environment
            variable QVDP_GATHER_TUNE=1). The first call of each plan class (tuning_key: world size, output
            count, total bytes within a factor sqrt(2), largest rank share in eighths, ...) times every
            backend available for it (push, NCCL broadcasts / send-recv / all-gather, torch) a few times,
            one call after a barrier each, takes the slowest rank's median per backend (all ranks agree:
            one all-reduce) and remembers the fastest for the class (tuned_choices()). Every rank must pass
            the same tune setting: the measurement is collective.
    """
    tuned = backend == "auto" and (os.environ.get("QVDP_GATHER_TUNE", "0") == "1" if tune is None else bool(tune))
    asked = "auto+tune" if tuned else backend  # tuned and rule-based "auto" may choose differently: own keys
    fkey = _fast_key(local_outputs, plan, group, layout, out, asked)
    hit = _FAST.get(fkey) if fkey is not None else None
    if hit is not None:  # a repeat of a validated call (NCCL or the push gather's CUDA form): enqueue it again
        return hit[1](local_outputs)
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
    runners = {}

    def native(choice, views=None):  # the NCCL gather for "native" or "native:<mode>", prepared once per call
        if choice not in runners:
            from .native import native_runner
            runners[choice] = native_runner(local_outputs, plan, group, layout, choice.partition(":")[2] or None,
                                            views)
        return runners[choice]

    def remember(runner):  # repeats of this call (same fkey) run runner(local_outputs) directly
        if fkey is not None and runner is not None:
            if len(_FAST) >= 64:
                _FAST.clear()
            _FAST[fkey] = (plan, runner)  # (the plan is kept alive: its id is part of the key)

    def finish(choice, views=None):  # run the chosen NCCL gather
        r = native(choice, views)
        remember(lambda _local: r())
        return r()
    if out is not None:
        if backend == "torch":
            raise ValueError("out= is for backends 'push', 'native' and 'auto' (symmetric buffers), not 'torch'")
        if group_backend(group) != "nccl":
            raise ValueError(f"out= (symmetric buffers) needs an NCCL group of GPUs of one host, got backend "
                             f"{group_backend(group)!r}")
        from .push import check_push_out, gather_rows_push, prefer_push, push_fast_path, push_runner, result_views
        if world == 1:  # nothing to exchange: the rows are copied into out
            bufs = [b for b, _ in check_push_out(out, local_outputs, plan, group, layout)]
            srcs = [torch.cat(list(local_outputs), 1)] if layout == "concat" else list(local_outputs)
            for b, t in zip(bufs, srcs):
                b[:plan.total_rows].copy_(t)
            return result_views(bufs, plan, layout)
        if backend == "auto" or backend == "native":  # validated before any communication
            views = [b[:plan.total_rows] for b, _ in check_push_out(out, local_outputs, plan, group, layout)]

        def trial(choice):  # one tuning run: repeated push calls take push's fast path, as users' calls do
            if choice == "push":
                res = push_fast_path(local_outputs, plan, group, layout, out, "push")
                return res if res is not None else gather_rows_push(local_outputs, plan, group, layout, out, "push")
            return native(choice, views)()
        if backend == "auto":
            nat = _native_available(group)
            if tuned and nat:
                backend = tune_choice(tuning_key(plan, local_outputs, layout, group, True),
                                      ["push"] + _native_candidates(plan), trial, group, local_outputs[0].device)
            else:  # the faster of the two for this plan (measured: qvdp/dist/push.py)
                one = layout == "concat" or len(local_outputs) == 1
                backend = "push" if prefer_push(plan, one) or not nat else "native"
        if backend == "push":
            res = gather_rows_push(local_outputs, plan, group, layout, out, asked)
            remember(push_runner(local_outputs, plan, group, layout, out, asked))
            return res
        return finish(backend, views)
    if world == 1:
        return list(local_outputs) if layout == "list" else torch.cat(list(local_outputs), 1)
    if backend == "auto":
        nat = _native_available(group)
        if tuned and nat:
            backend = tune_choice(tuning_key(plan, local_outputs, layout, group, False),
                                  _native_candidates(plan) + ["torch"],
                                  lambda c: (_gather_rows_torch(local_outputs, plan, group, rank, layout)
                                             if c == "torch" else native(c)()), group, local_outputs[0].device)
        else:
            backend = "native" if nat else "torch"
    if backend.startswith("native"):
        return finish(backend)
    return _gather_rows_torch(local_outputs, plan, group, rank, layout)


_FAST: dict = {}  # validated gathers by call signature (_fast_key) -> (plan, runner(local_outputs)); at most 64


def _fast_key(local_outputs, plan, group, layout, out, asked):
    """The key of a call for the fast path: group, plan object, layout, backend asked, gather mode setting, the
    push gather's settings (with out=), and the address, shape, strides, dtype and device of every local and
    out tensor. None when not hashable."""
    if not isinstance(local_outputs, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in local_outputs):
        return None
    outs = () if out is None else ((out,) if isinstance(out, torch.Tensor) else out)
    if not isinstance(outs, (list, tuple)) or not all(isinstance(o, torch.Tensor) for o in outs):
        return None
    try:
        mode = os.environ.get("QVDP_GATHER_MODE", "auto")
        if outs:
            mode = (mode, _push._settings())
        return (_group_key(group), id(plan), layout, asked, mode, tuple(_sig(t) for t in local_outputs),
                tuple(_sig(o) for o in outs))
    except TypeError:
        return None


_TUNED: dict = {}
TUNE_TIMES: dict = {}  # {tuning_key: {candidate: slowest rank's median us}} of each tuning run


def _native_candidates(plan: ShardPlan) -> list:
    """The NCCL gather's modes worth timing for a plan: its default (an all-gather for uniform plans, else
    grouped broadcasts), grouped send/recv, and broadcasts where the default is the all-gather."""
    return ["native:auto", "native:p2p"] + (["native:bcast"] if plan.uniform_block_rows() is not None else [])


def tuning_key(plan: ShardPlan, local_outputs, layout: str, group=None, with_out: bool = False) -> tuple:
    """The class of gathers a tuned "auto" choice is remembered for: group, world size, whether out= buffers
    are given, layout and output count, element size, whether every rank owns one equal run in rank order,
    total bytes (buckets of a factor sqrt(2)), the largest rank's share of the rows (eighths)."""
    row_bytes = sum(int(t.shape[1]) for t in local_outputs) * local_outputs[0].element_size()
    total = plan.total_rows * row_bytes
    share8 = plan.memo("largest_share8", lambda: min(int(8 * max(plan.rows_per_rank) / max(plan.total_rows, 1)), 7))
    return (_group_key(group), plan.world_size, with_out, layout, len(local_outputs), local_outputs[0].element_size(),
            plan.uniform_block_rows() is not None, round(2 * math.log2(max(total, 1))), share8)


def tuned_choices() -> dict:
    """{tuning_key: backend} chosen so far in this process by tuned "auto" gathers."""
    return dict(_TUNED)


def clear_tuning():
    _TUNED.clear()
    TUNE_TIMES.clear()
    _FAST.clear()


def tune_choice(key, cands: list, run, group, device, warm: int = 2, reps: int = 7) -> str:
    """The fastest of `cands` for this key: each run(c) `warm` times, then `reps` rounds of one call of each
    candidate in turn, each after a barrier, timed on this rank (CUDA events, or the host clock on CPU); the
    slowest rank's median per candidate decides (one all-reduce, so every rank picks the same). Remembered
    per key. Collective: every rank of the group calls it with the same key and candidates."""
    hit = _TUNED.get(key)
    if hit is not None:
        return hit
    cuda = device.type == "cuda"
    for c in cands:
        for _ in range(warm):
            run(c)
    ts = {c: [] for c in cands}
    for _ in range(reps):
        for c in cands:
            dist.barrier(group=group)
            if cuda:
                torch.cuda.synchronize(device)
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                run(c)
                e1.record()
                e1.synchronize()
                ts[c].append(e0.elapsed_time(e1) * 1e3)
            else:
                t0 = time.perf_counter()
                run(c)
                ts[c].append((time.perf_counter() - t0) * 1e6)
    med = [sorted(ts[c])[len(ts[c]) // 2] for c in cands]
    t = torch.tensor(med, dtype=torch.float64, device=device if cuda else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    best = cands[int(torch.argmin(t).item())]
    _TUNED[key] = best
    TUNE_TIMES[key] = dict(zip(cands, (round(x, 1) for x in t.tolist())))
    return best


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
