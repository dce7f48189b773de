"""Shard planner: which rank encodes which images / video frames, and where every output
row lands in the original-order output.

Pure CPU, no communication: every rank computes the same plan from the same grid_thw.

Cost model (policy "flops", the default): one frame of N = h*w patches costs a*N + b*N^2
FLOPs with (a, b) from VisionGeometry.cost_coefficients (linear layers vs attention; attention
FLOPs weighted by VisionGeometry.attention_weight, 1.32 by default, fitted to measured times).
Videos (t > 1) may be split across ranks at frame boundaries: in Qwen3-VL every temporal
slice is its own attention segment through the whole tower, so the result is identical.

Policy "patches" reproduces what SGLang/vLLM do: whole items, balanced by patch count.
"""
from __future__ import annotations

import bisect
import hashlib
import heapq
from dataclasses import dataclass
from functools import lru_cache

from ..geometry import VisionGeometry
from ..validate import normalize_grid_thw

POLICIES = ("flops", "patches")


@dataclass(frozen=True)
class Piece:
    """A contiguous frame range [frame_start, frame_end) of one item, computed by one rank."""
    rank: int
    item: int
    frame_start: int
    frame_end: int
    patch_start: int      # first row in the global pixel_values
    patch_end: int
    out_start: int        # first row in the global (original-order) output
    out_end: int
    local_out_start: int  # first row in the rank's local output

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start

    @property
    def num_rows(self) -> int:
        return self.out_end - self.out_start


@dataclass(frozen=True)
class ShardPlan:
    world_size: int
    grid: tuple            # ((t, h, w), ...) of the whole batch, original order
    merge_unit: int        # spatial_merge_size ** 2
    policy: str
    pieces: tuple          # per rank: tuple[Piece, ...] sorted by item (so by output row)
    loads: tuple           # per rank: modelled cost (FLOPs for "flops", patches for "patches")

    # ---- sizes ------------------------------------------------------------------------
    @property
    def total_rows(self) -> int:
        return sum(t * h * w for t, h, w in self.grid) // self.merge_unit

    @property
    def total_patches(self) -> int:
        return sum(t * h * w for t, h, w in self.grid)

    def rows(self, rank: int) -> int:
        return sum(p.num_rows for p in self.pieces[rank])

    @property
    def rows_per_rank(self) -> tuple:
        return tuple(self.rows(r) for r in range(self.world_size))

    def patches(self, rank: int) -> int:
        return sum(p.patch_end - p.patch_start for p in self.pieces[rank])

    @property
    def makespan(self) -> float:
        return max(self.loads)

    @property
    def imbalance(self) -> float:
        """max load / mean load (1.0 is perfect)."""
        mean = sum(self.loads) / self.world_size
        return self.makespan / mean if mean > 0 else 1.0

    # ---- what one rank needs ------------------------------------------------------------
    def local_grid_thw(self, rank: int) -> list:
        return [[p.num_frames, self.grid[p.item][1], self.grid[p.item][2]] for p in self.pieces[rank]]

    def local_patch_ranges(self, rank: int) -> list:
        """[(start, end)] rows of the global pixel_values this rank needs, merged when adjacent."""
        out = []
        for p in self.pieces[rank]:
            if out and out[-1][1] == p.patch_start:
                out[-1] = (out[-1][0], p.patch_end)
            else:
                out.append((p.patch_start, p.patch_end))
        return out

    def memo(self, key, fn):
        """Per-plan cache of derived values (a plan is immutable): fn() once per key. The gather asks for
        the same runs on every call; re-deriving them costs ~30 µs of Python for 64 items on a slow host."""
        cache = self.__dict__.setdefault("_derived", {})
        if key not in cache:
            cache[key] = fn()
        return cache[key]

    def runs(self, rank: int) -> list:
        """[(local_start, out_start, num_rows)]: maximal contiguous runs of this rank's rows."""
        return list(self.memo(("runs", rank), lambda: tuple(self._runs(rank))))

    def all_runs(self) -> tuple:
        """((rank, local_start, out_start, num_rows), ...) over all ranks, cached."""
        return self.memo("all_runs", lambda: tuple((r, *run) for r in range(self.world_size) for run in self.runs(r)))

    def _runs(self, rank: int) -> list:
        out = []
        for p in self.pieces[rank]:
            if out and out[-1][1] + out[-1][2] == p.out_start:
                ls, os_, n = out[-1]
                out[-1] = (ls, os_, n + p.num_rows)
            else:
                out.append((p.local_out_start, p.out_start, p.num_rows))
        return out

    def uniform_block_rows(self) -> int | None:
        """n when the gather is a plain all-gather: every rank owns exactly one run of n > 0 rows,
        rank r's run landing at output rows [r*n, (r+1)*n). Else None. Cached."""
        return self.memo("uniform", self._uniform_block_rows)

    def _uniform_block_rows(self) -> int | None:
        n = None
        for r in range(self.world_size):
            runs = self.runs(r)
            if len(runs) != 1:
                return None
            ls, os_, m = runs[0]
            if n is None:
                n = m
            if m != n or m == 0 or ls != 0 or os_ != r * n:
                return None
        return n

    def fingerprint(self) -> int:
        """A 63-bit hash of everything the ranks must agree on (used for the cross-rank check). Cached."""
        return self.memo("fingerprint", self._fingerprint)

    def _fingerprint(self) -> int:
        h = hashlib.blake2b(repr((self.world_size, self.grid, self.merge_unit, self.policy,
                                  self.pieces)).encode(), digest_size=8)
        return int.from_bytes(h.digest(), "little") >> 1

    def describe(self, unit: str | None = None) -> str:
        unit = unit or ("GFLOP" if self.policy == "flops" else "patches")
        scale = 1e-9 if self.policy == "flops" else 1.0
        lines = [f"ShardPlan: {len(self.grid)} items, {self.total_patches} patches -> {self.total_rows} rows, "
                 f"world {self.world_size}, policy {self.policy}, imbalance {self.imbalance:.3f}"]
        for r in range(self.world_size):
            parts = []
            for p in self.pieces[r]:
                t = self.grid[p.item][0]
                parts.append(f"#{p.item}" + (f"[f{p.frame_start}:{p.frame_end}]" if t > 1 and p.num_frames < t else ""))
            lines.append(f"  rank {r}: load {self.loads[r] * scale:10.1f} {unit}, {self.rows(r):6d} rows, "
                         f"items {' '.join(parts) if parts else '(none)'}")
        return "\n".join(lines)


def _lpt(costs: list, world: int) -> list:
    """Longest-processing-time-first list scheduling. Returns the rank of each unit.

    Units are taken in decreasing cost (ties by index), each to the least-loaded rank
    (ties by lowest rank): deterministic, and within (4/3 - 1/(3W)) of the optimum.
    """
    order = sorted(range(len(costs)), key=lambda u: (-costs[u], u))
    heap = [(0.0, r) for r in range(world)]
    assign = [0] * len(costs)
    for u in order:
        load, r = heapq.heappop(heap)
        assign[u] = r
        heapq.heappush(heap, (load + costs[u], r))
    return assign


def _refine(costs: list, assign: list, world: int, max_iters: int = 200) -> list:
    """Local search on the most-loaded rank: the best single move or pairwise swap that lowers
    the larger of the two loads involved. The makespan never increases."""
    assign = list(assign)
    loads = [0.0] * world
    members = [[] for _ in range(world)]
    for u, r in enumerate(assign):
        loads[r] += costs[u]
        members[r].append(u)
    swaps_ok = len(costs) <= 512
    for _ in range(max_iters):
        rmax = max(range(world), key=lambda r: (loads[r], -r))
        best = None  # (new pair max, kind, u, s, v)
        cur = loads[rmax]
        for u in members[rmax]:
            cu = costs[u]
            for s in range(world):
                if s == rmax:
                    continue
                m = max(cur - cu, loads[s] + cu)
                if m < cur - 1e-9 * max(cur, 1.0) and (best is None or m < best[0]):
                    best = (m, "move", u, s, None)
                if swaps_ok:
                    for v in members[s]:
                        d = cu - costs[v]
                        if d <= 0:
                            continue
                        m = max(cur - d, loads[s] + d)
                        if m < cur - 1e-9 * max(cur, 1.0) and (best is None or m < best[0]):
                            best = (m, "swap", u, s, v)
        if best is None:
            break
        _, kind, u, s, v = best
        members[rmax].remove(u); members[s].append(u); assign[u] = s
        loads[rmax] -= costs[u]; loads[s] += costs[u]
        if kind == "swap":
            members[s].remove(v); members[rmax].append(v); assign[v] = rmax
            loads[s] -= costs[v]; loads[rmax] += costs[v]
        for lst in members:
            lst.sort()
    return assign


def _contiguous(costs: list, world: int) -> tuple:
    """The contiguous split of the units (in order) into at most `world` ranges that minimises the
    largest range cost: binary search on the bound, each probe a greedy fill with prefix sums.
    Returns (assign, makespan)."""
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    n = len(costs)

    def fill(bound):
        ends, start = [], 0
        for _ in range(world):
            # last end with prefix[end] - prefix[start] <= bound
            end = bisect.bisect_right(prefix, prefix[start] + bound, lo=start) - 1
            ends.append(end)
            start = end
            if start == n:
                break
        return ends if start == n else None

    lo, hi = max(max(costs), prefix[-1] / world), prefix[-1]
    for _ in range(64):
        if hi - lo <= 1e-12 * hi:
            break
        mid = 0.5 * (lo + hi)
        if fill(mid) is not None:
            hi = mid
        else:
            lo = mid
    ends = fill(hi)
    assign, start, span = [0] * n, 0, 0.0
    for r, end in enumerate(ends):
        for u in range(start, end):
            assign[u] = r
        span = max(span, prefix[end] - prefix[start])
        start = end
    return assign, span


# A contiguous plan (rank r holds one run of items/frames, in rank order) gathers as a plain
# all-gather when the runs are equal and needs no pixel cat; it is taken when its modelled
# makespan is within this fraction of the list-scheduling plan's.
CONTIGUOUS_SLACK = 0.005


def plan_shards(grid_thw, world_size: int, geometry: VisionGeometry | None = None, *,
                policy: str = "flops", split_videos: bool | None = None, refine: bool = True,
                contiguous: bool | None = None) -> ShardPlan:
    """Plan the DP shards of one batch.

    Args:
        grid_thw: list of (t, h, w) or an integer tensor [num_items, 3], in request order.
        world_size: number of ranks.
        geometry: model geometry (cost model and merge size); Qwen3-VL-8B by default.
        policy: "flops" (a*N + b*N^2 per frame) or "patches" (what SGLang/vLLM balance by).
        split_videos: allow splitting videos across ranks at frame boundaries. Default: True
            for "flops", False for "patches" (the engines' behaviour).
        refine: run the local-search refinement after LPT.
        contiguous: True: each rank gets one contiguous range of items (frames) in rank order, the
            best such split; False: list scheduling (LPT + refinement) only; None (default): the
            contiguous split when its modelled makespan is within CONTIGUOUS_SLACK of list
            scheduling's (equal items, video frames), since it gathers as a plain all-gather.
    """
    geometry = geometry or VisionGeometry()
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    grid = normalize_grid_thw(grid_thw, geometry.spatial_merge_size)
    if split_videos is None:
        split_videos = policy == "flops"
    if contiguous is not None and not isinstance(contiguous, bool):
        raise TypeError(f"contiguous must be True, False or None, got {contiguous!r}")
    return _plan_cached(grid, world_size, geometry, policy, bool(split_videos), bool(refine), contiguous)


@lru_cache(maxsize=256)
def _plan_cached(grid: tuple, world: int, geometry: VisionGeometry, policy: str, split: bool,
                 refine: bool, contiguous: bool | None = None) -> ShardPlan:
    mu = geometry.merge_unit
    # Work units: whole items, or single frames of videos when splitting.
    units = []  # (item, frame_start, frame_end, cost)
    for i, (t, h, w) in enumerate(grid):
        n = h * w
        fc = geometry.frame_flops(n) if policy == "flops" else float(n)
        if split and t > 1:
            units.extend((i, f, f + 1, fc) for f in range(t))
        else:
            units.append((i, 0, t, fc * t))
    costs = [u[3] for u in units]
    if world == 1:
        assign = [0] * len(units)
    elif contiguous:
        assign = _contiguous(costs, world)[0]
    else:
        assign = _lpt(costs, world)
        if refine:
            assign = _refine(costs, assign, world)
        if contiguous is None:
            loads = [0.0] * world
            for c, r in zip(costs, assign):
                loads[r] += c
            cassign, cspan = _contiguous(costs, world)
            if cspan <= max(loads) * (1.0 + CONTIGUOUS_SLACK):
                assign = cassign

    # Frames of one video are interchangeable: count how many each rank got and hand out
    # contiguous frame ranges in rank order, so each (rank, item) is one piece.
    frames = {}  # (item, rank) -> frame count
    whole = {}   # item -> rank  (unsplit items)
    for (i, f0, f1, _), r in zip(units, assign):
        if split and grid[i][0] > 1:
            frames[(i, r)] = frames.get((i, r), 0) + 1
        else:
            whole[i] = r
    patch_off, out_off = [0], [0]
    for t, h, w in grid:
        patch_off.append(patch_off[-1] + t * h * w)
        out_off.append(out_off[-1] + t * h * w // mu)
    per_rank = [[] for _ in range(world)]
    for i, (t, h, w) in enumerate(grid):
        n = h * w
        if i in whole:
            spans = [(whole[i], 0, t)]
        else:
            spans, f = [], 0
            for r in range(world):
                k = frames.get((i, r), 0)
                if k:
                    spans.append((r, f, f + k))
                    f += k
        for r, f0, f1 in spans:
            per_rank[r].append((i, f0, f1, patch_off[i] + f0 * n, patch_off[i] + f1 * n,
                                out_off[i] + f0 * n // mu, out_off[i] + f1 * n // mu))
    pieces, loads = [], []
    for r in range(world):
        local, lst = 0, []
        load = 0.0
        for (i, f0, f1, p0, p1, o0, o1) in per_rank[r]:
            lst.append(Piece(r, i, f0, f1, p0, p1, o0, o1, local))
            local += o1 - o0
            n = grid[i][1] * grid[i][2]
            fc = geometry.frame_flops(n) if policy == "flops" else float(n)
            load += fc * (f1 - f0)
        pieces.append(tuple(lst))
        loads.append(load)
    return ShardPlan(world, grid, mu, policy, tuple(pieces), tuple(loads))


def plan_makespan(plan: ShardPlan, geometry: VisionGeometry | None = None) -> float:
    """Modelled FLOP makespan of any plan (also of a "patches" plan), for comparisons."""
    geometry = geometry or VisionGeometry()
    loads = []
    for r in range(plan.world_size):
        loads.append(sum(geometry.frame_flops(plan.grid[p.item][1] * plan.grid[p.item][2]) * p.num_frames
                         for p in plan.pieces[r]))
    return max(loads)
