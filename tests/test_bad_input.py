"""Bad input: a ValueError/TypeError naming the argument, on every rank, before any collective.
Fault injection: ranks that disagree, a rank that raises mid-forward, a rank that never arrives."""
import pytest
import torch

from _dist_util import fail_after_first_output, run_ranks
from conftest import tiny_vision_model

import qvdp

GRID = [[1, 4, 4], [2, 2, 2]]
N = 16 + 8


def _px(n=N, dtype=torch.float32):
    return torch.randn(n, 1536, dtype=dtype)


BAD = {
    "rows_mismatch": (lambda: (_px(N + 1), GRID), ValueError, "pixel_values"),
    "not_divisible": (lambda: (_px(12), [[1, 3, 4]]), ValueError, "grid_thw"),
    "empty_batch": (lambda: (_px(0), []), ValueError, "grid_thw"),
    "int_pixels": (lambda: (torch.ones(N, 1536, dtype=torch.int64), GRID), TypeError, "pixel_values"),
    "float_grid": (lambda: (_px(), [[1.0, 4, 4], [2, 2, 2]]), TypeError, "grid_thw"),
    "float_grid_tensor": (lambda: (_px(), torch.tensor(GRID, dtype=torch.float32)), TypeError, "grid_thw"),
    "wrong_patch_dim": (lambda: (torch.randn(N, 1000), GRID), ValueError, "pixel_values"),
    "pixels_not_tensor": (lambda: (N, GRID), TypeError, "pixel_values"),
    "grid_shape": (lambda: (_px(), torch.tensor([[1, 4, 4, 1]])), ValueError, "grid_thw"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_single_process(case):
    make, exc, name = BAD[case]
    m = tiny_vision_model(0)
    px, grid = make()
    with pytest.raises(exc, match=name):
        qvdp.run_dp_sharded_vision(m, px, grid)


def _bad_worker(rank, world, case):
    make, exc, name = BAD[case]
    m = tiny_vision_model(0)
    px, grid = make()
    try:
        qvdp.run_dp_sharded_vision(m, px, grid)
    except exc as e:
        assert name in str(e)
        return "raised"
    return "no error"


@pytest.mark.parametrize("case", ["rows_mismatch", "not_divisible", "float_grid"])
def test_bad_input_every_rank_raises_without_hanging(case):
    res = run_ranks(_bad_worker, 2, case, timeout_s=15, join_timeout_s=60)
    assert [r.get("result") for r in res] == ["raised", "raised"], res


def test_bad_chunk_budget():
    m = tiny_vision_model(0)
    with pytest.raises(ValueError, match="max_patches_per_chunk"):
        qvdp.run_dp_sharded_vision(m, _px(), GRID, max_patches_per_chunk=0)


# ---- fault injection on gloo -------------------------------------------------------------------
def _mismatch_worker(rank, world):
    m = tiny_vision_model(0)
    grid = GRID if rank == 0 else [[1, 4, 4], [1, 2, 2], [1, 2, 2]]  # same rows, different items
    torch.manual_seed(0)
    qvdp.run_dp_sharded_vision(m, _px(), grid)


def test_mismatched_grid_raises_on_every_rank():
    res = run_ranks(_mismatch_worker, 2, timeout_s=20, join_timeout_s=60)
    for r in res:
        assert not r["ok"] and "PlanMismatchError" in r["error"], r


class _Boom(RuntimeError):
    pass


def _raise_worker(rank, world):
    m = tiny_vision_model(0)
    fwd = qvdp.Qwen3VLVisionForward(m)

    def failing(px, grid, ret):
        if rank == 1:
            raise _Boom("simulated out of memory")
        return fwd(px, grid, ret)
    qvdp.run_dp_sharded_vision(m, _px(40), [[1, 4, 4], [1, 4, 4], [2, 2, 2]], forward=failing)


def test_rank_raising_mid_forward_fails_all_ranks():
    res = run_ranks(_raise_worker, 3, timeout_s=20, join_timeout_s=60)
    for r in res:
        assert not r["ok"] and "RankFailedError" in r["error"] and "[1]" in r["error"], r
    assert "simulated out of memory" in res[1]["error"]


def _absent_worker(rank, world):
    import time
    m = tiny_vision_model(0)
    if rank == 1:
        time.sleep(30)  # never arrives within the others' timeout
        return "late"
    qvdp.run_dp_sharded_vision(m, _px(), GRID, timeout_s=5)


def test_absent_rank_times_out():
    res = run_ranks(_absent_worker, 2, timeout_s=10, join_timeout_s=90)
    assert not res[0]["ok"], res[0]
    assert any(s in res[0]["error"].lower() for s in ("timeout", "timed out", "time out")), res[0]["error"]


# ---- the same faults with the gather overlapped with the forward (forced on gloo) ---------------
def _mismatch_overlap_worker(rank, world):
    m = tiny_vision_model(0)
    grid = GRID if rank == 0 else [[1, 4, 4], [1, 2, 2], [1, 2, 2]]
    torch.manual_seed(0)
    qvdp.run_dp_sharded_vision(m, _px(), grid, overlap_gather=True)


def test_mismatched_grid_raises_on_every_rank_overlapped():
    res = run_ranks(_mismatch_overlap_worker, 2, timeout_s=20, join_timeout_s=60)
    for r in res:
        assert not r["ok"] and "PlanMismatchError" in r["error"], r


def _raise_after_deepstack_worker(rank, world):
    # rank 1 fails after its first deepstack output has been handed to the gather
    m = tiny_vision_model(0)
    failing = fail_after_first_output(qvdp.Qwen3VLVisionForward(m), rank == 1,
                                      _Boom("simulated out of memory after deepstack 0"))
    qvdp.run_dp_sharded_vision(m, _px(40), [[1, 4, 4], [1, 4, 4], [2, 2, 2]], forward=failing,
                               overlap_gather=True)


def test_rank_raising_mid_forward_fails_all_ranks_overlapped():
    res = run_ranks(_raise_after_deepstack_worker, 3, timeout_s=20, join_timeout_s=60)
    for r in res:
        assert not r["ok"] and "RankFailedError" in r["error"] and "[1]" in r["error"], r
    assert "after deepstack 0" in res[1]["error"]
