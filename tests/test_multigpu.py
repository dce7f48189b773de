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
    os.environ.pop("QVDP_GATHER_MODE", None)
    try:  # repeated calls with the same tensors take the fast path: new contents must be sent each time
        for i in range(3):
            got = qvdp.gather_rows(local, plan, backend="native", layout="concat")
        for t in local:
            t.mul_(-1)
        again = qvdp.gather_rows(local, plan, backend="native", layout="concat")
        out["native/repeat, new contents"] = torch.equal(again, -torch.cat(full, 1)) and \
            torch.equal(got, torch.cat(full, 1))
    except ImportError as e:
        out["native/repeat, new contents"] = f"unavailable: {e}"
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


def _push_worker(rank, world):
    """The push backend: exact on every rank for random plans, dtypes and layouts, with one buffer per
    dtype and layout reused across calls (poisoned before each), and relay and direct plans."""
    import random
    from qvdp.dist import push
    torch.cuda.set_device(rank)
    rng = random.Random(11)
    grids = [[[1, 44, 80]], [[1, 80, 80]] + [[1, 16, 16]] * 3, [[1, 44, 80]] * 4, [[16, 44, 80]],
             [[1, 2, 2]], [[1, 2, 2]] * 9]
    grids += [[[rng.choice([1, 1, 3]), 2 * rng.randint(1, 40), 2 * rng.randint(1, 40)]
               for _ in range(rng.randint(1, 7))] for _ in range(6)]
    widths = (256, 130, 64)  # 130: rows of 260 bytes, not 16-byte multiples
    cap = max(plan_shards(g, world, QWEN3_VL_8B).total_rows for g in grids) + 5
    res, relays = {"impls": [push._native() is not None]}, set()
    for impl, dtype in [(i, d) for i in ("auto", "triton") for d in (torch.bfloat16, torch.float16, torch.float32)]:
        push.IMPL = impl  # auto: the CUDA form when the extension is built
        bufc = push.symmetric_empty(cap, sum(widths), dtype)
        bufl = [push.symmetric_empty(cap, w, dtype) for w in widths]
        for gi, grid in enumerate(grids):
            plan = plan_shards(grid, world, QWEN3_VL_8B)
            relays.add(push.use_relay(plan))
            g = torch.Generator().manual_seed(100 + gi)
            full = [torch.randn(plan.total_rows, w, generator=g).to(dtype).cuda() for w in widths]
            local = [torch.cat([f[p.out_start:p.out_end] for p in plan.pieces[rank]]) if plan.pieces[rank]
                     else f[:0] for f in full]
            for b in [bufc] + bufl:
                b.fill_(float("nan"))
            got = qvdp.gather_rows(local, plan, layout="list", backend="push", out=bufl)
            gc = qvdp.gather_rows(local, plan, layout="concat", backend="push", out=bufc)
            torch.cuda.synchronize()
            ok = all(torch.equal(a, b) for a, b in zip(got, full)) and torch.equal(gc, torch.cat(full, 1))
            bufc.fill_(float("nan"))
            ga = qvdp.gather_rows(local, plan, layout="concat", out=bufc)  # auto: push or NCCL into out
            torch.cuda.synchronize()
            ok = ok and torch.equal(ga, torch.cat(full, 1))
            if impl == "auto":  # tuned "auto": timed choice (first call of a class), then the remembered one
                for _ in range(2):
                    bufc.fill_(float("nan"))
                    gt = qvdp.gather_rows(local, plan, layout="concat", out=bufc, tune=True)
                    gl = qvdp.gather_rows(local, plan, layout="list", tune=True)  # no out=: NCCL modes, torch
                    torch.cuda.synchronize()
                    ok = ok and torch.equal(gt, torch.cat(full, 1)) and all(torch.equal(a, b) for a, b in zip(gl, full))
            # one output: the pipelined relay on 3+ GPUs (relay plans; pieces of 16, 8, 4 and 1 rows, 2 resident
            # blocks per SM, each way of marking a piece ready, the owner's copy last or mixed in), and without it
            names = ("PIPELINED_RELAY", "PIECE_ROWS", "BLOCKS_PER_SM", "MARK", "OWN_COPY")
            settings = [getattr(push, k) for k in names]
            for pipe, rows, bps, mark, own in (
                    ("1", 16, 0, "fence", "last"), ("1", 4, 0, "fence", "last"), ("1", 1, 2, "fence", "mixed"),
                    ("1", 4, 0, "release", "last"), ("1", 8, 0, "release", "mixed"), ("1", 1, 2, "release", "last"),
                    ("0", 4, 0, "release", "last")):
                for k, v in zip(names, (pipe, rows, bps, mark, own)):
                    setattr(push, k, v)
                bufl[0].fill_(float("nan"))
                g1 = qvdp.gather_rows(local[:1], plan, layout="list", backend="push", out=bufl[:1])
                torch.cuda.synchronize()
                ok = ok and torch.equal(g1[0], full[0])
                if pipe == "1" and push.pipelined_mode(plan):
                    relays.add("pipelined")
            for k, v in zip(names, settings):
                setattr(push, k, v)
            res[f"{impl}/{str(dtype)[6:]}/{gi}"] = ok
    push.IMPL = "auto"
    # the same gather called back to back without host syncs (epochs advance on the GPU only)
    plan = plan_shards(grids[0], world, QWEN3_VL_8B)
    full = [torch.randn(plan.total_rows, w, device="cuda").to(torch.float32) for w in widths]
    torch.distributed.broadcast(full[0], 0)
    torch.distributed.broadcast(full[1], 0)
    torch.distributed.broadcast(full[2], 0)
    local = [torch.cat([f[p.out_start:p.out_end] for p in plan.pieces[rank]]) if plan.pieces[rank]
             else f[:0] for f in full]
    for _ in range(20):
        got = qvdp.gather_rows(local, plan, backend="push", out=bufl)
    torch.cuda.synchronize()
    res["back to back"] = all(torch.equal(a, b) for a, b in zip(got, full))
    for t in local:  # the same tensors with new contents: the repeated (fast-path) call sends the new rows
        t.mul_(-1)
    got = qvdp.gather_rows(local, plan, backend="push", out=bufl)
    torch.cuda.synchronize()
    res["repeat, new contents"] = all(torch.equal(a, -b) for a, b in zip(got, full))
    for _ in range(20):  # one output: the pipelined relay back to back (ready marks reused across calls)
        g1 = qvdp.gather_rows(local[:1], plan, backend="push", out=bufl[:1])
    torch.cuda.synchronize()
    res["one output, back to back"] = torch.equal(g1[0], -full[0])
    from qvdp.dist.gather import tuned_choices
    res["tuned"] = sorted(map(str, tuned_choices().items()))
    res["errors"] = push.push_errors()
    res["relay used"] = sorted(map(str, relays))
    return res


def test_push_gather_exact():
    for world in sorted({2, min(torch.cuda.device_count(), 4)}):
        res = run_ranks(_push_worker, world, backend="nccl", timeout_s=120, join_timeout_s=400)
        for r in res:
            assert r["ok"], r
        out = res[0]["result"]
        print(f"\npush gather on {world} GPUs: {out}")
        for r in res:
            bad = {k: v for k, v in r["result"].items()
                   if k not in ("errors", "relay used", "impls", "tuned") and v is not True}
            assert not bad, bad
            assert r["result"]["errors"] == 0
            # every rank took the same tuned choices (the group's key part is the same on every rank: "world")
            assert r["result"]["tuned"] == out["tuned"] and out["tuned"]
        if world > 2:
            assert out["relay used"] == ["False", "True", "pipelined"]


def _push_timeout_worker(rank, world):
    import os
    from qvdp.dist import push
    os.environ["QVDP_PUSH_TIMEOUT_S"] = "2"
    plan = plan_shards([[1, 8, 8]] * world, world, QWEN3_VL_8B)
    buf = push.symmetric_empty(plan.total_rows, 64)
    local = [torch.randn(plan.rows(rank), 64, device="cuda").to(torch.bfloat16)]
    if rank != 0:  # rank 0 never arrives: the others wait 2 s per barrier, then count the timeout
        qvdp.gather_rows(local, plan, out=[buf])
    else:
        import time
        time.sleep(8)  # stays alive (its buffers mapped) while the others time out
    torch.cuda.synchronize()
    return push.push_errors()


def test_push_gather_missing_rank_times_out():
    res = run_ranks(_push_timeout_worker, 2, backend="nccl", timeout_s=60, join_timeout_s=200)
    for r in res:
        assert r["ok"], r
    print(f"\npush timeouts per rank: {[r['result'] for r in res]}")
    assert res[0]["result"] == 0 and res[1]["result"] >= 1
