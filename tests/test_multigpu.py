"""On 2+ GPUs with NCCL (-m multigpu): the DP runner equals the single-GPU run, the native gather
equals the reference gather bit for bit, and faults end with clear errors on every rank."""
import pytest
import torch

from _dist_util import fail_after_first_output, run_ranks

import qvdp
from qvdp import QWEN3_VL_8B, plan_shards

pytestmark = [pytest.mark.gpu, pytest.mark.multigpu]

GRID = [[1, 44, 80], [4, 16, 16], [1, 8, 10], [1, 80, 80], [3, 20, 32]]


def _model(device, depth=4):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel
    torch.manual_seed(0)
    cfg = Qwen3VLVisionConfig(depth=depth, hidden_size=1152, num_heads=16, intermediate_size=4304,
                              out_hidden_size=4096, deepstack_visual_indexes=[0, 1, 2])
    with torch.device(device):
        m = Qwen3VLVisionModel(cfg)
    return m.to(torch.bfloat16).eval()


def _pixels(grid):
    g = torch.Generator().manual_seed(1)
    return torch.randn(sum(t * h * w for t, h, w in grid), 1536, generator=g)


def _dp_worker(rank, world):
    dev = torch.device("cuda", rank)
    m = _model(dev)
    px = _pixels(GRID)  # CPU: each rank moves only its own rows
    res = {"backend_native": qvdp.dist.gather._native_available(None)}
    for bi in (False, True):
        fwd = qvdp.Qwen3VLVisionForward(m, batch_invariant=bi)
        out = qvdp.run_dp_sharded_vision(m, px, GRID, forward=fwd)
        if rank == 0:
            single = fwd(px.to(dev), tuple(map(tuple, GRID)))
            res[bi] = []
            for a, b in zip([out.pooler_output] + out.deepstack_features, [single[0]] + single[1]):
                res[bi].append((bool(torch.equal(a, b)), ((a.float() - b.float()).norm() / b.float().norm()).item()))
    return res


def test_dp_nccl_equals_single_gpu():
    world = 2
    res = run_ranks(_dp_worker, world, backend="nccl", timeout_s=120, join_timeout_s=600)
    for r in res:
        assert r["ok"], r
    out = res[0]["result"]
    for bi in (False, True):
        print(f"\nDP on {world} GPUs (NCCL, native gather {out['backend_native']}), batch_invariant={bi}: "
              f"(bit-identical, rel err) per output = {out[bi]}")
    for bi in (False, True):
        for same, err in out[bi]:
            assert err < 1e-2
            if bi:
                assert same


def _gather_worker(rank, world):
    import os
    grid = [[1, 44, 80], [1, 80, 80], [16, 16, 16], [1, 2, 2]] + [[1, 4, 4]] * 9
    out = {}
    # a uniform plan (equal items: one equal run per rank) takes the plain all-gather in auto mode
    uplan = plan_shards([[1, 8, 12]] * (2 * world), world, QWEN3_VL_8B)
    assert uplan.uniform_block_rows() == 48
    g = torch.Generator().manual_seed(6)
    ufull = [torch.randn(uplan.total_rows, w, generator=g).to(torch.bfloat16).cuda(rank) for w in (64, 32)]
    ulocal = [f[rank * 48:(rank + 1) * 48] for f in ufull]
    for mode in ("auto", "allgather", "bcast"):
        os.environ["QVDP_GATHER_MODE"] = mode
        try:
            got = qvdp.gather_rows(ulocal, uplan, backend="native")
            gc = qvdp.gather_rows(ulocal, uplan, backend="native", layout="concat")
            out[f"native/uniform-{mode}"] = all(torch.equal(a, b) for a, b in zip(got, ufull)) and \
                torch.equal(gc, torch.cat(ufull, 1))
        except ImportError as e:
            out[f"native/uniform-{mode}"] = f"unavailable: {e}"
    got = qvdp.gather_rows(ulocal, uplan, backend="torch")
    out["torch/uniform"] = all(torch.equal(a, b) for a, b in zip(got, ufull))
    plan = plan_shards(grid, world, QWEN3_VL_8B)
    assert plan.uniform_block_rows() is None
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        g = torch.Generator().manual_seed(5)
        full = [torch.randn(plan.total_rows, w, generator=g).to(dtype).cuda(rank) for w in (64, 64, 32)]
        local = [torch.cat([f[p.out_start:p.out_end] for p in plan.pieces[rank]]) if plan.pieces[rank]
                 else f[:0] for f in full]
        for backend, mode in (("native", "bcast"), ("native", "p2p"), ("torch", "-")):
            os.environ["QVDP_GATHER_MODE"] = mode
            key = f"{backend}/{mode}/{str(dtype)[6:]}"
            try:
                got = qvdp.gather_rows(local, plan, backend=backend)
                gc = qvdp.gather_rows(local, plan, backend=backend, layout="concat")
                out[key] = all(torch.equal(a, b) for a, b in zip(got, full)) and torch.equal(gc, torch.cat(full, 1))
            except ImportError as e:
                out[key] = f"unavailable: {e}"
    return out


def test_native_gather_exact():
    world = min(torch.cuda.device_count(), 4)
    res = run_ranks(_gather_worker, world, backend="nccl", timeout_s=120, join_timeout_s=300)
    for r in res:
        assert r["ok"], r
    print(f"\ngather on {world} GPUs, exact equality per backend/mode/dtype: {res[0]['result']}")
    for r in res:
        for k, v in r["result"].items():
            assert v is True or (k.startswith("native") and isinstance(v, str)), (k, v)


def _fault_worker(rank, world, kind, timeout_s):
    dev = torch.device("cuda", rank)
    m = _model(dev, depth=3)  # deepstack after blocks 0, 1, 2
    px = _pixels(GRID)
    grid = GRID
    fwd = qvdp.Qwen3VLVisionForward(m)
    if kind == "mismatch" and rank == 1:
        grid = [[1, 44, 80], [4, 16, 16], [1, 8, 10], [1, 80, 80], [1, 20, 32], [2, 20, 32]]
    if kind == "raise":  # a plain callable: the gather runs after the forward
        def failing(p, g, r):
            if rank == 1:
                raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory")
            return fwd(p, g, r)
        qvdp.run_dp_sharded_vision(m, px, grid, forward=failing, timeout_s=timeout_s)
    elif kind == "raise overlapped":  # fails after its first deepstack output was handed to the gather
        failing = fail_after_first_output(fwd, rank == 1,
                                          torch.cuda.OutOfMemoryError("simulated CUDA out of memory mid-forward"))
        qvdp.run_dp_sharded_vision(m, px, grid, forward=failing, timeout_s=timeout_s)
    else:
        qvdp.run_dp_sharded_vision(m, px, grid, forward=fwd, timeout_s=timeout_s)


@pytest.mark.parametrize("kind,err,timeout_s", [("mismatch", "PlanMismatchError", 60),
                                                ("mismatch", "PlanMismatchError", None),
                                                ("raise", "RankFailedError", 60),
                                                ("raise overlapped", "RankFailedError", None)])
def test_faults_nccl(kind, err, timeout_s):
    res = run_ranks(_fault_worker, 2, kind, timeout_s, backend="nccl", timeout_s=90, join_timeout_s=300)
    print(f"\n{kind}: " + " | ".join(f"rank {i}: {r.get('error', r)}"[:300] for i, r in enumerate(res)))
    for r in res:
        assert not r["ok"] and err in r["error"], r
