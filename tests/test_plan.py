"""Shard planner properties (hypothesis)."""
import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from qvdp import QWEN3_VL_8B, VisionGeometry, plan_shards, plan_makespan

GEOM = QWEN3_VL_8B
grids = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 12).map(lambda x: 2 * x),
                           st.integers(1, 12).map(lambda x: 2 * x)), min_size=1, max_size=10)


def _check_cover(plan):
    grid = plan.grid
    seen = {}
    for r in range(plan.world_size):
        local = 0
        for p in plan.pieces[r]:
            assert p.rank == r
            assert p.local_out_start == local
            local += p.num_rows
            for f in range(p.frame_start, p.frame_end):
                assert (p.item, f) not in seen, "frame assigned twice"
                seen[(p.item, f)] = r
    for i, (t, h, w) in enumerate(grid):
        for f in range(t):
            assert (i, f) in seen, f"frame {f} of item {i} unassigned"
    # output offsets: a permutation covering every row exactly once
    rows = torch.zeros(plan.total_rows, dtype=torch.int64)
    for r in range(plan.world_size):
        for ls, os_, n in plan.runs(r):
            rows[os_:os_ + n] += 1
    assert bool((rows == 1).all())
    # pixel ranges are where the frames are
    off = [0]
    for t, h, w in grid:
        off.append(off[-1] + t * h * w)
    for r in range(plan.world_size):
        for p in plan.pieces[r]:
            n = grid[p.item][1] * grid[p.item][2]
            assert p.patch_start == off[p.item] + p.frame_start * n
            assert p.out_start * plan.merge_unit == p.patch_start


@settings(max_examples=150, deadline=None)
@given(grid=grids, world=st.integers(1, 6), policy=st.sampled_from(["flops", "patches"]),
       split=st.sampled_from([None, True, False]))
def test_cover_and_determinism(grid, world, policy, split):
    p1 = plan_shards(grid, world, GEOM, policy=policy, split_videos=split)
    _check_cover(p1)
    plan_shards.__wrapped__ if hasattr(plan_shards, "__wrapped__") else None
    from qvdp.dist.plan import _plan_cached
    _plan_cached.cache_clear()
    p2 = plan_shards(torch.tensor(grid), world, GEOM, policy=policy, split_videos=split)
    assert p1 == p2 and p1.fingerprint() == p2.fingerprint()


def _brute_force(costs, world):
    best = float("inf")
    for assign in itertools.product(range(world), repeat=len(costs)):
        loads = [0.0] * world
        for c, r in zip(costs, assign):
            loads[r] += c
        best = min(best, max(loads))
    return best


small_grids = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 40).map(lambda x: 2 * x),
                                 st.integers(1, 40).map(lambda x: 2 * x)), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(grid=small_grids, world=st.integers(2, 3), split=st.booleans())
def test_makespan_within_4_3_of_optimum(grid, world, split):
    units = []
    for t, h, w in grid:
        c = GEOM.frame_flops(h * w)
        units += [c] * t if (split and t > 1) else [c * t]
    if len(units) > 8:
        units = units[:8]
        grid = None
    if grid is None:
        return
    plan = plan_shards(grid, world, GEOM, split_videos=split)
    opt = _brute_force(units, world)
    assert plan.makespan <= 4 / 3 * opt * (1 + 1e-9)


def test_video_split_beats_whole_items():
    grid = [[16, 44, 80]]
    split = plan_shards(grid, 4, GEOM)
    whole = plan_shards(grid, 4, GEOM, policy="patches")
    assert split.imbalance == pytest.approx(1.0)
    assert plan_makespan(whole, GEOM) / plan_makespan(split, GEOM) == pytest.approx(4.0)
    assert [len(split.pieces[r]) for r in range(4)] == [1, 1, 1, 1]


def test_more_ranks_than_items_and_empty_ranks():
    plan = plan_shards([[1, 4, 4]], 4, GEOM)
    assert sum(1 for r in range(4) if not plan.pieces[r]) == 3
    assert plan.rows_per_rank == (4, 0, 0, 0)


def test_flops_policy_weights_big_images():
    # one 80x80 image vs. 25 16x16 images of equal patch count: attention makes the big one dearer
    g = VisionGeometry()
    assert g.frame_flops(6400) > 25 * g.frame_flops(256)


@pytest.mark.parametrize("bad,exc", [
    ([], ValueError), ([[1, 3, 4]], ValueError), ([[0, 2, 2]], ValueError), ([[1, 2]], ValueError),
    ([[1.0, 2, 2]], TypeError), ("abc", TypeError), (torch.ones(2, 3), TypeError), (torch.ones(2, 2, dtype=torch.long), ValueError),
])
def test_bad_grid(bad, exc):
    with pytest.raises(exc, match="grid_thw"):
        plan_shards(bad, 2, GEOM)


@pytest.mark.parametrize("world", [0, -1, 1.5, True])
def test_bad_world(world):
    with pytest.raises(ValueError, match="world_size"):
        plan_shards([[1, 2, 2]], world, GEOM)


def test_bad_policy():
    with pytest.raises(ValueError, match="policy"):
        plan_shards([[1, 2, 2]], 2, GEOM, policy="rows")


def _contiguous_brute(costs, world):
    n, best = len(costs), float("inf")
    for cuts in itertools.combinations_with_replacement(range(n + 1), world - 1):
        bounds = (0,) + cuts + (n,)
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])))
    return best


@settings(max_examples=80, deadline=None)
@given(grid=grids, world=st.integers(2, 4), split=st.booleans())
def test_contiguous_plans(grid, world, split):
    from qvdp.dist.plan import CONTIGUOUS_SLACK
    c = plan_shards(grid, world, GEOM, split_videos=split, contiguous=True)
    _check_cover(c)
    # every rank one run (or none), in rank order: rank r's rows all come before rank r+1's
    last = -1
    for r in range(world):
        runs = c.runs(r)
        assert len(runs) <= 1
        if runs:
            assert runs[0][1] > last
            last = runs[0][1]
    units = []
    for t, h, w in grid:
        fc = GEOM.frame_flops(h * w)
        units += [fc] * t if (split and t > 1) else [fc * t]
    if len(units) <= 12:
        assert c.makespan <= _contiguous_brute(units, world) * (1 + 1e-9)
    lpt = plan_shards(grid, world, GEOM, split_videos=split, contiguous=False)
    auto = plan_shards(grid, world, GEOM, split_videos=split)
    assert auto.makespan <= lpt.makespan * (1 + CONTIGUOUS_SLACK) * (1 + 1e-9)
    assert auto in (c, lpt)


def test_equal_items_and_split_video_gather_as_all_gather():
    for grid, world, n in (([[1, 44, 80]] * 4, 4, 880), ([[1, 16, 16]] * 64, 4, 1024), ([[16, 44, 80]], 4, 3520),
                           ([[1, 16, 16]] * 64, 2, 2048)):
        plan = plan_shards(grid, world, GEOM)
        assert plan.imbalance == pytest.approx(1.0)
        assert plan.uniform_block_rows() == n
    assert plan_shards([[1, 16, 16]] * 64, 4, GEOM, contiguous=False).uniform_block_rows() is None
    assert plan_shards([[1, 80, 80]] + [[1, 16, 16]] * 3, 4, GEOM).uniform_block_rows() is None


def test_bad_contiguous():
    with pytest.raises(TypeError, match="contiguous"):
        plan_shards([[1, 2, 2]], 2, GEOM, contiguous="yes")
