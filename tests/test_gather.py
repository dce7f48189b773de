"""gather_rows on gloo: random plans, world sizes 2-4, several outputs, empty ranks: exact equality
with a single-process reference gather."""
import random

import pytest
import torch

from _dist_util import run_ranks

import qvdp
from qvdp import QWEN3_VL_8B, plan_shards


def _random_grid(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    return [[rng.choice([1, 1, 2, 5]), 2 * rng.randint(1, 6), 2 * rng.randint(1, 6)] for _ in range(n)]


def _full_outputs(grid, widths, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    rows = sum(t * h * w for t, h, w in grid) // 4
    return [torch.randn(rows, w, generator=g).to(dtype) for w in widths]


def _gather_worker(rank, world, grid, widths, seed, dtype, layout):
    plan = plan_shards(grid, world, QWEN3_VL_8B)
    full = _full_outputs(grid, widths, seed, dtype)
    # this rank's local rows, in its local order (what its forward would have produced)
    local = [torch.cat([f[p.out_start:p.out_end] for p in plan.pieces[rank]]) if plan.pieces[rank]
             else f.new_empty((0, f.shape[1])) for f in full]
    out = qvdp.gather_rows(local, plan, layout=layout, backend="torch")
    return out


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_gather_random_plans(world, seed):
    grid = _random_grid(seed * 10 + world)
    widths = [8, 8, 5]
    layout = "list" if seed == 0 else "concat"
    dtype = torch.float32 if seed == 0 else torch.bfloat16
    full = _full_outputs(grid, widths, seed, dtype)
    expect = full if layout == "list" else torch.cat(full, 1)
    res = run_ranks(_gather_worker, world, grid, widths, seed, dtype, layout)
    for rr in res:
        assert rr["ok"], rr
        got = rr["result"]
        if layout == "list":
            assert all(torch.equal(a, b) for a, b in zip(got, expect))
        else:
            assert torch.equal(got, expect)


def test_gather_empty_ranks():
    grid = [[1, 2, 2]]  # one item, 4 ranks: three ranks send nothing
    res = run_ranks(_gather_worker, 4, grid, [4, 4], 3, torch.float32, "list")
    full = _full_outputs(grid, [4, 4], 3, torch.float32)
    for rr in res:
        assert rr["ok"], rr
        assert all(torch.equal(a, b) for a, b in zip(rr["result"], full))


def _bad_rows_worker(rank, world):
    plan = plan_shards([[1, 4, 4], [1, 2, 2]], world, QWEN3_VL_8B)
    local = [torch.randn(plan.rows(rank) + 1, 4)]
    qvdp.gather_rows(local, plan, backend="torch")


def test_gather_validates_before_communicating():
    res = run_ranks(_bad_rows_worker, 2, timeout_s=20)
    for rr in res:
        assert not rr["ok"] and "rows" in rr["error"] and "ValueError" in rr["error"]


def test_gather_world_one():
    plan = plan_shards([[1, 4, 4]], 1, QWEN3_VL_8B)
    x = torch.randn(4, 3)
    assert qvdp.gather_rows([x], plan)[0] is x
    with pytest.raises(ValueError, match="rows"):
        qvdp.gather_rows([torch.randn(5, 3)], plan)
    with pytest.raises(ValueError, match="world_size"):
        qvdp.gather_rows([x], plan_shards([[1, 4, 4]], 2, QWEN3_VL_8B))


@pytest.mark.parametrize("make,exc,match", [
    (lambda x: [x, x.double()], TypeError, r"local_outputs\[1\]"),
    (lambda x: [x[None]], ValueError, "2-D"),
    (lambda x: [x.t().contiguous().t()[:, :1].expand(4, 3)], ValueError, "contiguous"),
    (lambda x: "x", TypeError, "local_outputs"),
    (lambda x: [], TypeError, "local_outputs"),
])
def test_gather_bad_inputs(make, exc, match):
    plan = plan_shards([[1, 4, 4]], 1, QWEN3_VL_8B)
    with pytest.raises(exc, match=match):
        qvdp.gather_rows(make(torch.randn(4, 3)), plan)


@pytest.mark.parametrize("kw,match", [(dict(layout="rows"), "layout"), (dict(backend="mpi"), "backend")])
def test_gather_bad_options(kw, match):
    plan = plan_shards([[1, 4, 4]], 1, QWEN3_VL_8B)
    with pytest.raises(ValueError, match=match):
        qvdp.gather_rows([torch.randn(4, 3)], plan, **kw)


def _tune_worker(rank, world):
    import time

    from qvdp.dist.gather import clear_tuning, tune_choice, tuned_choices
    clear_tuning()
    calls = []

    def run(c):  # "a": fast on every rank but rank 0 (5 ms there); "b": 1 ms everywhere
        calls.append(c)
        time.sleep(0.005 if (c == "a" and rank == 0) else (0.001 if c == "b" else 0.0))
    first = tune_choice(("k",), ["a", "b"], run, None, torch.device("cpu"), warm=1, reps=3)
    n = len(calls)
    again = tune_choice(("k",), ["a", "b"], run, None, torch.device("cpu"))
    return first, again, n, len(calls), tuned_choices()


def test_gather_tune_agrees_on_slowest_rank():
    # per rank, ranks 1 and 2 would pick "a"; the slowest rank's median decides, so all pick "b", once
    for rr in run_ranks(_tune_worker, 3):
        assert rr["ok"], rr
        first, again, n, n2, chosen = rr["result"]
        assert first == again == "b" and n == 8 and n2 == 8 and chosen == {("k",): "b"}


def _tuned_gather_worker(rank, world, grid, widths, seed):
    plan = plan_shards(grid, world, QWEN3_VL_8B)
    full = _full_outputs(grid, widths, seed, torch.float32)
    local = [torch.cat([f[p.out_start:p.out_end] for p in plan.pieces[rank]]) if plan.pieces[rank]
             else f.new_empty((0, f.shape[1])) for f in full]
    return qvdp.gather_rows(local, plan, layout="concat", tune=True)  # gloo: no NCCL gather, the torch path


def test_gather_tuned_auto_on_gloo_is_exact():
    grid, widths = [[1, 4, 6], [2, 2, 2]], [6, 3]
    expect = torch.cat(_full_outputs(grid, widths, 5, torch.float32), 1)
    for rr in run_ranks(_tuned_gather_worker, 2, grid, widths, 5):
        assert rr["ok"], rr
        assert torch.equal(rr["result"], expect)
