"""run_dp_sharded_vision: plan -> local forward on this rank's share -> gather in original order."""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .dist.gather import gather_rows, group_backend, group_info
from .dist.plan import ShardPlan, plan_shards
from .geometry import VisionGeometry
from .validate import check_pixel_values, normalize_grid_thw


class RankFailedError(RuntimeError):
    """A rank's local forward raised; every rank raises this (the failing rank chains its own error)."""


class PlanMismatchError(ValueError):
    """Ranks disagree about the batch (grid_thw / world size / layout); raised on every rank."""


@dataclass
class DPVisionOutput:
    pooler_output: torch.Tensor              # [total_tokens, O] in original item order
    deepstack_features: list                 # k x [total_tokens, O]
    last_hidden_state: torch.Tensor | None   # [total_patches, H] when asked for, else None
    plan: ShardPlan = field(repr=False, default=None)

    def split_by_item(self):
        """pooler_output split per item (the shape engines expect)."""
        sizes = [t * h * w // self.plan.merge_unit for t, h, w in self.plan.grid]
        return torch.split(self.pooler_output, sizes)


def _forward_for(vision_model, forward):
    if forward is not None:
        return forward
    cached = getattr(vision_model, "_qvdp_forward", None)
    if cached is not None:
        return cached
    from .model import Qwen3VLVisionForward, find_vision_tower
    fwd = Qwen3VLVisionForward(find_vision_tower(vision_model))
    try:
        object.__setattr__(vision_model, "_qvdp_forward", fwd)
    except Exception:
        pass
    return fwd


def _geometry_for(vision_model, forward, geometry):
    if geometry is not None:
        return geometry
    g = getattr(forward, "geometry", None)
    if g is not None:
        return g
    from .model import find_vision_tower
    return VisionGeometry.from_config(find_vision_tower(vision_model).config)


def _model_device_dtype(vision_model, forward):
    for obj in (forward, vision_model):
        dev, dt = getattr(obj, "device", None), getattr(obj, "dtype", None)
        if isinstance(dev, torch.device) and isinstance(dt, torch.dtype):
            return dev, dt
    p = next(vision_model.parameters())
    return p.device, p.dtype


def _chunks(pieces, grid, budget):
    """Split this rank's pieces into chunks of at most `budget` patches (a frame is never split)."""
    if not budget:
        return [[(p.item, p.frame_start, p.frame_end, p.patch_start) for p in pieces]]
    chunks, cur, used = [], [], 0
    for p in pieces:
        t, h, w = grid[p.item]
        n = h * w
        f = p.frame_start
        while f < p.frame_end:
            room = max((budget - used) // n, 0)
            if room == 0 and cur:
                chunks.append(cur); cur, used = [], 0
                continue
            k = min(max(room, 1), p.frame_end - f)
            cur.append((p.item, f, f + k, p.patch_start + (f - p.frame_start) * n))
            used += k * n
            f += k
    if cur:
        chunks.append(cur)
    return chunks


class _StatusCheck:
    """One tiny all_gather of [plan fingerprint, ok] from every rank, enqueued at construction
    (on CUDA on `stream` with a pinned copy back, so the host does not wait); result() waits for it
    (at most timeout_s) and raises the same error on every rank."""

    def __init__(self, plan: ShardPlan, ok: bool, group, device, timeout_s, stream=None):
        self.timeout_s, self.event = timeout_s, None
        src = torch.tensor([plan.fingerprint(), 1 if ok else 0], dtype=torch.int64)
        if device.type != "cuda":
            self.allv = [torch.empty_like(src) for _ in range(plan.world_size)]
            self.work = dist.all_gather(self.allv, src, group=group, async_op=True)
            return
        stream = stream or torch.cuda.current_stream(device)
        with torch.cuda.stream(stream):
            mine = src.pin_memory().to(device, non_blocking=True)
            allv = [torch.empty_like(mine) for _ in range(plan.world_size)]
            self.work = dist.all_gather(allv, mine, group=group, async_op=True)
            self.work.wait()  # the stream waits for it, the host does not
            self.host = torch.empty((plan.world_size, 2), dtype=torch.int64, pin_memory=True)
            self.host.copy_(torch.stack(allv), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(stream)

    def result(self):
        if self.timeout_s is not None and hasattr(self.work, "wait"):
            self.work.wait(datetime.timedelta(seconds=self.timeout_s))
        elif self.event is None:
            self.work.wait()
        if self.event is not None:
            self.event.synchronize()
            vals = self.host.tolist()
        else:
            vals = torch.stack(self.allv).tolist()
        fps = [v[0] for v in vals]
        bad = [r for r, v in enumerate(vals) if not v[1]]
        if bad:
            raise RankFailedError(f"local vision forward failed on rank(s) {bad}; no outputs were gathered")
        if len(set(fps)) != 1:
            groups = {}
            for r, f in enumerate(fps):
                groups.setdefault(f, []).append(r)
            raise PlanMismatchError(f"ranks disagree about the batch (grid_thw, world size or policy): plan "
                                    f"fingerprints by rank group {sorted(groups.values())}; every rank must pass "
                                    f"the same grid_thw")


def _final_check(check: _StatusCheck, err, rank):
    """Wait for the status check after the local forward; the failing rank chains its own error."""
    try:
        check.result()
    except RankFailedError as e:
        if err is not None:
            raise RankFailedError(f"{e} (this is rank {rank}: {type(err).__name__}: {err})") from err
        raise


def _local_pixels(pixel_values, grid, chunk, device):
    """This chunk's pixel rows (one slice, no copy, when contiguous), moved to the device."""
    spans = []
    for (i, f0, f1, p0) in chunk:
        p1 = p0 + (f1 - f0) * grid[i][1] * grid[i][2]
        if spans and spans[-1][1] == p0:
            spans[-1] = (spans[-1][0], p1)
        else:
            spans.append((p0, p1))
    rows = [pixel_values[a:b] for a, b in spans]
    px = rows[0] if len(rows) == 1 else torch.cat(rows)
    lgrid = tuple((f1 - f0, grid[i][1], grid[i][2]) for (i, f0, f1, _) in chunk)
    return px.to(device=device, non_blocking=True), lgrid


def _can_overlap(forward, plan, grid, budget, device, group, forced=False) -> bool:
    """Overlap the gather of each output with the rest of the forward: NCCL on CUDA (or any backend when
    forced), a forward that reports outputs as they are produced, and one local call on every rank
    (decided from the plan, so every rank takes the same path and issues the same collectives)."""
    if not forced and (device.type != "cuda" or group_backend(group) != "nccl"):
        return False
    if not getattr(forward, "supports_output_callback", False):
        return False
    return all(len(_chunks(plan.pieces[r], grid, budget)) <= 1 for r in range(plan.world_size))


def _run_overlapped(forward, pixel_values, plan, grid, group, rank, device, dtype, widths, gather_backend,
                    return_last_hidden, check_ranks, timeout_s, geometry):
    """Every output is gathered on a side stream as soon as the forward has produced it (deepstack
    features after their layers, while the remaining layers run), in the fixed order 1..nd, 0 on every
    rank. The plan check is enqueued when the first output is ready and waited for (by the host, while
    the GPU runs the next layers) before the first gather, so mismatched plans never reach a gather; a
    rank whose forward fails still issues the remaining gathers (zeros) and every rank then raises
    RankFailedError at the final check, which is enqueued right behind the last gather."""
    nd = len(widths) - 1
    order = list(range(1, nd + 1)) + [0]
    rows = plan.rows(rank)
    cuda = device.type == "cuda"
    main = torch.cuda.current_stream(device) if cuda else None
    side = torch.cuda.Stream(device=device) if cuda else None
    # the plan check is built when the first output is ready, not before the forward: its host work
    # (pinned copies, the collective's launch, ~0.4 ms) then overlaps the first layers on the GPU instead
    # of delaying their launch. Built before the forward it cost ~0.8 ms more per call on 4 x H100
    # (session 8, benchmarks/diag_rank_check.py; the host waits were ~0.02 ms either way).
    plan_unchecked = [check_ranks]
    gathered = {}

    def issue(i, t):
        if plan_unchecked[0]:  # plans agree: the gathers below match up (raises PlanMismatchError otherwise)
            plan_unchecked[0] = False
            _StatusCheck(plan, True, group, device, timeout_s, stream=side).result()
        if i != order[len(gathered)]:
            raise RuntimeError(f"forward produced output {i} out of order (expected {order[len(gathered)]})")
        if tuple(t.shape) != (rows, widths[i]) or t.dtype != dtype:
            raise RuntimeError(f"forward output {i} is {tuple(t.shape)} {t.dtype}, the plan needs "
                               f"({rows}, {widths[i]}) {dtype}")
        if not cuda:
            gathered[i] = gather_rows([t], plan, group, layout="list", backend=gather_backend)[0]
            return
        side.wait_stream(main)
        with torch.cuda.stream(side):
            t.record_stream(side)
            gathered[i] = gather_rows([t], plan, group, layout="list", backend=gather_backend)[0]

    ok, err, hid = True, None, None
    try:
        pieces = plan.pieces[rank]
        if pieces:
            chunk = _chunks(pieces, grid, None)[0]
            px, lgrid = _local_pixels(pixel_values, grid, chunk, device)
            _, _, hid = forward(px, lgrid, return_last_hidden, on_output=issue)
        for i in order[len(gathered):]:  # a rank with no items: empty contributions
            issue(i, torch.empty((0, widths[i]), dtype=dtype, device=device))
    except Exception as e:  # keep the collectives matched, then report at the check below
        if not check_ranks or isinstance(e, PlanMismatchError):
            raise  # (a plan mismatch is raised on every rank before any gather)
        ok, err = False, e
        for i in order[len(gathered):]:
            issue(i, torch.zeros((rows, widths[i]), dtype=dtype, device=device))
    final = _StatusCheck(plan, ok, group, device, timeout_s, stream=side) if check_ranks else None
    if cuda:
        main.wait_stream(side)
        for t in gathered.values():
            t.record_stream(main)
    if final is not None:
        _final_check(final, err, rank)
    last = None
    if return_last_hidden:
        mu = geometry.merge_unit
        if hid is None:
            hid = torch.empty((0, geometry.hidden_size), dtype=dtype, device=device)
        hv = hid.reshape(-1, mu * geometry.hidden_size)
        last = gather_rows([hv], plan, group, layout="list", backend=gather_backend)[0]
        last = last.reshape(-1, geometry.hidden_size)
    return DPVisionOutput(gathered[0], [gathered[1 + k] for k in range(nd)], last, plan)


def run_dp_sharded_vision(vision_model, pixel_values, grid_thw, group=None, *, forward=None, plan=None,
                          policy: str = "flops", split_videos=None, geometry: VisionGeometry | None = None,
                          max_patches_per_chunk: int | None = None, gather_backend: str = "auto",
                          return_last_hidden: bool = False, check_ranks: bool = True,
                          timeout_s: float | None = None, output_widths: list | None = None,
                          device=None, dtype=None, overlap_gather: bool | None = None) -> DPVisionOutput:
    """Encode a batch data-parallel over `group`: each rank runs the vision tower on its share
    only, and every rank gets all outputs back in original item order.

    Args:
        vision_model: a transformers Qwen3-VL vision tower (or a model holding one as .visual).
        pixel_values: [sum t*h*w, patch_dim] rows of the whole batch, on CPU or on the device.
            Only this rank's rows are moved to the model's device.
        grid_thw: [num_items, 3] list or integer tensor, in request order, identical on every rank.
        group: torch.distributed process group (None: the default group, or no communication at all
            when torch.distributed is not initialised).
        forward: callable (pixels, grid) -> (pooled, [deepstack...], last_hidden|None); default qvdp's.
        plan / policy / split_videos: a precomputed ShardPlan, or how to make one (see plan_shards).
        max_patches_per_chunk: cap on patches per local forward call (memory); frames are never split.
        gather_backend: "auto" | "native" | "torch".
        return_last_hidden: also gather the pre-merger hidden states [N, H] (rows in patch units).
        check_ranks: confirm with one small collective that all ranks hold the same plan and that
            every local forward succeeded, before the gather (raises the same error on all ranks).
        timeout_s: wait at most this long for the other ranks at that check.
        output_widths: widths of (pooled, *deepstack) when `forward` is not qvdp's (default from geometry).
        device, dtype: of the outputs, when they cannot be read off the model.
        overlap_gather: None (default): on NCCL/CUDA, with qvdp's forward and one local call per rank,
            gather each deepstack output on a side stream while the later layers run (the plan check
            then runs before the forward); True: also on other backends (tests); False: never.
    """
    forward = _forward_for(vision_model, forward)
    geometry = _geometry_for(vision_model, forward, geometry)
    world, rank = group_info(group)
    grid = normalize_grid_thw(grid_thw, geometry.spatial_merge_size)
    check_pixel_values(pixel_values, grid, geometry.patch_dim)
    if max_patches_per_chunk is not None and (not isinstance(max_patches_per_chunk, int)
                                              or max_patches_per_chunk <= 0):
        raise ValueError(f"max_patches_per_chunk must be a positive int or None, got {max_patches_per_chunk!r}")
    if plan is None:
        plan = plan_shards(grid, world, geometry, policy=policy, split_videos=split_videos)
    elif not isinstance(plan, ShardPlan) or plan.grid != grid or plan.world_size != world:
        raise ValueError("plan does not match grid_thw / the group's world size")
    mdev, mdt = _model_device_dtype(vision_model, forward)
    device, dtype = torch.device(device) if device is not None else mdev, dtype or mdt
    if world > 1:
        backend = group_backend(group)
        if backend == "nccl" and device.type != "cuda":
            raise ValueError(f"an NCCL group needs the vision model on a CUDA device, it is on {device}")
        if backend == "gloo" and device.type != "cpu":
            raise ValueError("a gloo group gathers CPU tensors; put the model on CPU or use NCCL")

    # ---- local forward on this rank's share (chunked by the patch budget) --------------------
    widths = list(output_widths) if output_widths is not None else \
        [geometry.out_hidden_size] * (1 + len(geometry.deepstack_visual_indexes))
    O, nd = widths[0], len(widths) - 1
    pieces = plan.pieces[rank]
    if overlap_gather not in (None, True, False):
        raise TypeError(f"overlap_gather must be None, True or False, got {overlap_gather!r}")
    if world > 1 and overlap_gather is not False and _can_overlap(forward, plan, grid, max_patches_per_chunk, device,
                                                                  group, forced=overlap_gather is True):
        return _run_overlapped(forward, pixel_values, plan, grid, group, rank, device, dtype, widths,
                               gather_backend, return_last_hidden, check_ranks, timeout_s, geometry)
    ok, err = True, None
    pooled_parts, ds_parts, hid_parts = [], [[] for _ in range(nd)], []
    try:
        for chunk in (_chunks(pieces, grid, max_patches_per_chunk) if pieces else []):
            px, lgrid = _local_pixels(pixel_values, grid, chunk, device)
            pooled, ds, hid = forward(px, lgrid, return_last_hidden)
            if len(ds) != nd:
                raise RuntimeError(f"vision forward returned {len(ds)} deepstack features, geometry says {nd}")
            pooled_parts.append(pooled)
            for j in range(nd):
                ds_parts[j].append(ds[j])
            if return_last_hidden:
                hid_parts.append(hid)
    except Exception as e:  # keep the other ranks from waiting forever: report, then raise
        if world == 1 or not check_ranks:
            raise
        ok, err = False, e

    def cat(parts, width):
        if not parts:
            return torch.empty((0, width), dtype=dtype, device=device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    if world > 1 and check_ranks:
        sdev = device if group_backend(group) == "nccl" else torch.device("cpu")
        _final_check(_StatusCheck(plan, ok, group, sdev, timeout_s), err, rank)
    pooled = cat(pooled_parts, O)
    ds = [cat(p, widths[1 + j]) for j, p in enumerate(ds_parts)]
    outs = [pooled] + ds
    gathered = gather_rows(outs, plan, group, layout="list", backend=gather_backend)
    last = None
    if return_last_hidden:
        hid = cat(hid_parts, geometry.hidden_size)
        # hidden states are per patch: view each merge unit as one row so the plan's rows apply
        mu = geometry.merge_unit
        hv = hid.reshape(-1, mu * geometry.hidden_size)
        last = gather_rows([hv], plan, group, layout="list", backend=gather_backend)[0]
        last = last.reshape(-1, geometry.hidden_size)
    return DPVisionOutput(gathered[0], gathered[1:], last, plan)
