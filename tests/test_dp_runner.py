"""DP runner on gloo (spawned CPU ranks): outputs equal the single-process run exactly (fp32)."""
import pytest
import torch

from _dist_util import run_ranks
from conftest import tiny_vision_model

import qvdp

CASES = {
    "mixed": [[1, 4, 6], [3, 2, 2], [1, 8, 8], [2, 4, 4], [1, 2, 2]],
    "one_item": [[1, 6, 4]],
    "one_huge_video": [[8, 6, 8]],
    "video_and_small": [[6, 4, 4], [1, 2, 2], [1, 2, 4]],
}


def _dp_worker(rank, world, grid, seed, policy, chunk, overlap=None):
    torch.manual_seed(seed)
    m = tiny_vision_model(seed)
    N = sum(t * h * w for t, h, w in grid)
    px = torch.randn(N, 1536)
    fwd = qvdp.Qwen3VLVisionForward(m, batch_invariant=True)
    out = qvdp.run_dp_sharded_vision(m, px, grid, forward=fwd, policy=policy, max_patches_per_chunk=chunk,
                                     overlap_gather=overlap, return_last_hidden=overlap is True)
    res = [out.pooler_output] + list(out.deepstack_features)
    return res + ([out.last_hidden_state] if overlap is True else [])


def _single(grid, seed):
    torch.set_num_threads(1)  # the spawned ranks run single-threaded; CPU kernels round by thread count
    torch.manual_seed(seed)
    m = tiny_vision_model(seed)
    N = sum(t * h * w for t, h, w in grid)
    px = torch.randn(N, 1536)
    # reference: each item alone through HF's own forward, concatenated in order
    outs = None
    off = 0
    for t, h, w in grid:
        with torch.no_grad():
            o = m(px[off:off + t * h * w], grid_thw=torch.tensor([[t, h, w]]))
        off += t * h * w
        parts = [o.pooler_output] + list(o.deepstack_features)
        outs = parts if outs is None else [torch.cat([a, b]) for a, b in zip(outs, parts)]
    # and the single-process qvdp run of the whole batch (world 1: no communication)
    q = qvdp.run_dp_sharded_vision(m, px, grid, forward=qvdp.Qwen3VLVisionForward(m, batch_invariant=True))
    return outs, [q.pooler_output] + list(q.deepstack_features)


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dp_equals_single(world, case):
    grid = CASES[case]
    hf_ref, single = _single(grid, seed=world)
    res = run_ranks(_dp_worker, world, grid, world, "flops", None)
    for r, rr in enumerate(res):
        assert rr["ok"], rr
        for a, b in zip(rr["result"], single):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert torch.equal(a, b), f"rank {r}: DP output differs from the single-process run"
    for a, b in zip(single, hf_ref):
        assert ((a - b).norm() / b.norm()) < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_dp_overlapped_gather_equals_single(case):
    # each output gathered as soon as it is produced (forced on gloo): same bits, also for an empty rank
    grid = CASES[case]
    _, single = _single(grid, seed=11)
    res = run_ranks(_dp_worker, 3, grid, 11, "flops", None, True)
    for r, rr in enumerate(res):
        assert rr["ok"], rr
        assert len(rr["result"]) == len(single) + 1
        for a, b in zip(rr["result"], single):
            assert a.shape == b.shape and torch.equal(a, b), f"rank {r}"
        assert rr["result"][-1].shape[0] == sum(t * h * w for t, h, w in grid)


def test_dp_patch_policy_and_chunks():
    grid = CASES["mixed"]
    _, single = _single(grid, seed=7)
    res = run_ranks(_dp_worker, 2, grid, 7, "patches", 20)
    for rr in res:
        assert rr["ok"], rr
        for a, b in zip(rr["result"], single):
            assert torch.equal(a, b)


def test_world_size_one_no_dist():
    grid = CASES["mixed"]
    hf_ref, single = _single(grid, seed=3)
    for a, b in zip(single, hf_ref):
        assert ((a - b).norm() / b.norm()) < 1e-5
