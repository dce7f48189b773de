"""The push gather (qvdp/dist/push.py) on CPU: its copy plans replayed on simulated ranks (every output
row written exactly once, in the right stage, from rows already there), the relay choice, the copy
kernel under the Triton interpreter (or on a GPU), and its bad-input errors on gloo."""
import random

import pytest
import torch

from _dist_util import run_ranks

import qvdp
from qvdp import QWEN3_VL_8B, plan_shards
from qvdp.dist import push
from qvdp.ops import _triton_utils

GRIDS = {
    "one image": [[1, 44, 80]],
    "skewed": [[1, 80, 80]] + [[1, 16, 16]] * 3,
    "4x720p": [[1, 44, 80]] * 4,
    "video": [[16, 44, 80]],
    "tiny items": [[1, 2, 2]] * 9,
    "one patch row": [[1, 2, 2]],
}


def _random_grid(rng):
    return [[rng.choice([1, 1, 3]), 2 * rng.randint(1, 40), 2 * rng.randint(1, 40)] for _ in range(rng.randint(1, 7))]


def _replay(plan, relay=None):
    """Run every rank's stage items on simulated buffers; return (outputs, write counts, relay)."""
    w = plan.world_size
    total = plan.total_rows
    full = torch.arange(total, dtype=torch.int64) + 1  # row ids, never zero
    local = [torch.cat([full[p.out_start:p.out_end] for p in plan.pieces[r]]) if plan.pieces[r]
             else full[:0] for r in range(w)]
    outs = [torch.zeros(total, dtype=torch.int64) for _ in range(w)]
    writes = [torch.zeros(total, dtype=torch.int64) for _ in range(w)]
    items = [push.push_items(plan, r, relay) for r in range(w)]
    assert len({it[0] for it in items}) == 1, "ranks disagree on the relay"
    for stage in (1, 2):
        before = [o.clone() for o in outs]  # a stage reads only what earlier stages wrote
        for r in range(w):
            for d, r0, d0, n in items[r][stage]:
                assert n > 0 and d0 + n <= total
                if stage == 1:
                    src = local[r][r0:r0 + n]
                else:
                    src = before[r][r0:r0 + n]
                    assert bool((src != 0).all()), "a forwarded share had not landed"
                outs[d][d0:d0 + n] = src
                writes[d][d0:d0 + n] += 1
    return outs, writes, items[0][0], full


@pytest.mark.parametrize("world", [2, 3, 4, 8])
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_push_plan_replay(world, name):
    plan = plan_shards(GRIDS[name], world, QWEN3_VL_8B)
    for relay in (None, True, False):
        outs, writes, used, full = _replay(plan, relay)
        for r in range(world):
            assert torch.equal(outs[r], full), (name, world, relay, r)
            assert bool((writes[r] == 1).all()), "every row lands exactly once on every rank"


def test_push_plan_replay_random():
    rng = random.Random(7)
    for _ in range(40):
        world = rng.randint(2, 6)
        plan = plan_shards(_random_grid(rng), world, QWEN3_VL_8B)
        outs, writes, _, full = _replay(plan)
        assert all(torch.equal(o, full) for o in outs)
        assert all(bool((c == 1).all()) for c in writes)


def _replay_units(plan, rows=push.ROWS, own="mixed"):
    """The pipelined gather's units on simulated buffers, run in any order the ready marks allow: a unit
    runs once the mark it waits for is set; a unit that reads an output buffer reads only rows already
    written there; units on each rank come in depth order (a waiting unit's producer has a lower depth)."""
    w, total = plan.world_size, plan.total_rows
    full = torch.arange(total, dtype=torch.int64) + 1
    local = [torch.cat([full[p.out_start:p.out_end] for p in plan.pieces[r]]) if plan.pieces[r]
             else full[:0] for r in range(w)]
    outs = [torch.zeros(total, dtype=torch.int64) for _ in range(w)]
    writes = [torch.zeros(total, dtype=torch.int64) for _ in range(w)]
    units = push.pipelined_units(plan, rows, own)
    producer = {}  # (rank notified, slot) -> depth of the unit that sets it
    depth = {}
    for r in range(w):
        for i, (d, r0, d0, n, src, wait, mask, slot) in enumerate(units[r]):
            dep = 0 if wait < 0 else None
            depth[(r, i)] = dep
    for _ in range(4):  # resolve depths: a waiting unit is one deeper than the unit that marks its slot
        for r in range(w):
            for i, u in enumerate(units[r]):
                if u[6] and depth[(r, i)] is not None:
                    for t in range(w):
                        if (u[6] >> t) & 1:
                            assert (t, u[7]) not in producer or producer[(t, u[7])] == depth[(r, i)]
                            producer[(t, u[7])] = depth[(r, i)]
                if u[5] >= 0 and (r, u[5]) in producer:
                    depth[(r, i)] = producer[(r, u[5])] + 1
    for r in range(w):
        ds = [depth[(r, i)] for i in range(len(units[r]))]
        assert None not in ds, "a unit waits for a mark nobody sets (it would time out)"
        assert ds == sorted(ds), "units must come in depth order"
    marks = [set() for _ in range(w)]
    done = [[False] * len(units[r]) for r in range(w)]
    progress = True
    while progress:
        progress = False
        for r in range(w):
            for i, (d, r0, d0, n, src, wait, mask, slot) in enumerate(units[r]):
                if done[r][i] or (wait >= 0 and wait not in marks[r]):
                    continue
                assert 0 < n <= rows
                if src < 0:
                    vals = local[r][r0:r0 + n]
                else:
                    assert bool((writes[src][r0:r0 + n] > 0).all()), "reads rows not yet written"
                    vals = outs[src][r0:r0 + n]
                outs[d][d0:d0 + n] = vals
                writes[d][d0:d0 + n] += 1
                for t in range(w):
                    if (mask >> t) & 1:
                        assert slot not in marks[t]
                        marks[t].add(slot)
                done[r][i] = progress = True
    assert all(all(x) for x in done)
    return outs, writes, full


@pytest.mark.parametrize("rows,own", [(16, "last"), (4, "last"), (1, "last"), (8, "mixed"), (4, "mixed"), (1, "mixed")])
@pytest.mark.parametrize("world", [3, 4, 8])
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_pipelined_relay_replay(world, name, rows, own):
    plan = plan_shards(GRIDS[name], world, QWEN3_VL_8B)
    outs, writes, full = _replay_units(plan, rows, own)
    for r in range(world):
        assert torch.equal(outs[r], full), (name, world, r)
        assert bool((writes[r] == 1).all())


def test_pipelined_relay_replay_random():
    rng = random.Random(9)
    for _ in range(30):
        world = rng.randint(2, 6)
        plan = plan_shards(_random_grid(rng), world, QWEN3_VL_8B)
        outs, writes, full = _replay_units(plan, 4, rng.choice(["last", "mixed"]))
        assert all(torch.equal(o, full) for o in outs) and all(bool((c == 1).all()) for c in writes)


def test_pipelined_choice(monkeypatch):
    one4, skew4 = plan_shards(GRIDS["one image"], 4, QWEN3_VL_8B), plan_shards(GRIDS["skewed"], 4, QWEN3_VL_8B)
    monkeypatch.setattr(push, "PIPELINED_RELAY", "1")
    assert push.pipelined_mode(one4) and push.pipelined_mode(skew4)
    assert not push.pipelined_mode(plan_shards(GRIDS["4x720p"], 4, QWEN3_VL_8B))  # direct plan
    # "auto" with out=: relay plans -> the pipelined relay (one buffer only), else NCCL
    assert push.prefer_push(one4) and push.prefer_push(skew4) and not push.prefer_push(skew4, False)
    # 2 GPUs: push, except where one rank owns every row (NCCL's single broadcast)
    assert push.prefer_push(plan_shards(GRIDS["skewed"], 2, QWEN3_VL_8B))
    assert not push.prefer_push(plan_shards(GRIDS["one image"], 2, QWEN3_VL_8B))
    monkeypatch.setattr(push, "PIPELINED_RELAY", "0")
    assert not push.pipelined_mode(one4) and not push.prefer_push(skew4)


def test_push_relay_choice():
    # one owner of everything (one image, skewed): relay cuts its egress from 3N to N
    assert push.use_relay(plan_shards(GRIDS["one image"], 4, QWEN3_VL_8B))
    assert push.use_relay(plan_shards(GRIDS["skewed"], 4, QWEN3_VL_8B))
    # balanced plans and two ranks send directly
    assert not push.use_relay(plan_shards(GRIDS["4x720p"], 4, QWEN3_VL_8B))
    assert not push.use_relay(plan_shards(GRIDS["video"], 4, QWEN3_VL_8B))
    assert not push.use_relay(plan_shards(GRIDS["one image"], 2, QWEN3_VL_8B))
    # "auto" with out=: push on 2 GPUs (unless one rank owns every row: session 20) and for direct plans;
    # relay plans: the pipelined relay (session 13)
    assert push.prefer_push(plan_shards(GRIDS["4x720p"], 2, QWEN3_VL_8B))
    assert push.prefer_push(plan_shards(GRIDS["4x720p"], 4, QWEN3_VL_8B))
    assert push.prefer_push(plan_shards(GRIDS["one image"], 4, QWEN3_VL_8B))
    plan = plan_shards(GRIDS["one image"], 4, QWEN3_VL_8B)
    relay, s1, s2 = push.push_items(plan, next(r for r in range(4) if plan.rows(r)))
    # the owner sends 880 rows out once (plus its own copy), not 3 x 880
    assert relay and sum(n for d, _, _, n in s1) == 2 * 880 and not s2


@pytest.fixture
def dev():
    if not (_triton_utils.interpreter_on() or torch.cuda.is_available()):
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("col", [0, 24, 3])
def test_copy_kernel_rows_to_peer_buffers(dev, dtype, col):
    # "peers" are three buffers of this process, addressed through the int64 table as on GPUs
    g = torch.Generator().manual_seed(3)
    rows, width, stride = 37, 40, 72
    src = torch.randn(rows, width, generator=g).to(dtype).to(dev)
    bufs = [torch.full((50, stride), float("nan"), dtype=dtype, device=dev) for _ in range(3)]
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64, device=dev)
    items = [(0, 0, 5, 37), (2, 3, 0, 20), (1, 30, 49, 1)]
    chunks = push._chunks(items, dev)
    push._launch(src, peers, chunks, stride, col, width)
    exp = [torch.full((50, stride), float("nan"), dtype=dtype) for _ in range(3)]
    for d, r0, d0, n in items:
        exp[d][d0:d0 + n, col:col + width] = src[r0:r0 + n].cpu()
    for b, e in zip(bufs, exp):
        assert torch.equal(b.cpu().view(torch.int16 if dtype != torch.float32 else torch.int32),
                           e.view(torch.int16 if dtype != torch.float32 else torch.int32))


def _bad_worker(rank, world):
    plan = plan_shards([[1, 4, 4], [1, 2, 2]], world, QWEN3_VL_8B)
    local = [torch.randn(plan.rows(rank), 8)]
    errs = {}
    out = torch.empty(plan.total_rows, 8)
    for name, kw in (("push, no out", {"backend": "push"}), ("push, plain out", {"backend": "push", "out": out}),
                     ("torch, out", {"backend": "torch", "out": out})):
        try:
            qvdp.gather_rows(local, plan, **kw)
            errs[name] = "no error"
        except ValueError as e:
            errs[name] = str(e)
    try:
        push.symmetric_empty(8, 8)
        errs["symmetric_empty"] = "no error"
    except ValueError as e:
        errs["symmetric_empty"] = str(e)
    return errs


def test_push_bad_input_on_gloo():
    res = run_ranks(_bad_worker, 2)
    for rr in res:
        assert rr["ok"], rr
        errs = rr["result"]
        assert "needs out=" in errs["push, no out"]
        assert "NCCL group" in errs["push, plain out"]  # (gloo)
        assert "not 'torch'" in errs["torch, out"]
        assert "NCCL group" in errs["symmetric_empty"]


def _world_one_worker(rank, world):
    plan = plan_shards([[1, 8, 8], [1, 4, 6]], 1, QWEN3_VL_8B)
    local = [torch.randn(plan.rows(0), w, device="cuda").to(torch.bfloat16) for w in (64, 32)]
    buf = push.symmetric_empty(plan.total_rows + 3, 96, torch.bfloat16)
    buf.fill_(float("nan"))
    got = qvdp.gather_rows(local, plan, layout="concat", out=buf)
    return bool(torch.equal(got, torch.cat(local, 1))) and got.data_ptr() == buf.data_ptr()


@pytest.mark.gpu
def test_push_world_one_copies_into_out():
    res = run_ranks(_world_one_worker, 1, backend="nccl", timeout_s=60, join_timeout_s=120)
    assert res[0]["ok"] and res[0]["result"] is True, res


def test_push_runner_replays_the_validated_call(monkeypatch):
    """gather_rows' fast path for push: push_runner rebuilds the remembered CUDA-form call (arguments in
    order, epoch threaded through) and returns the remembered result views."""
    import types
    plan = plan_shards(GRIDS["one image"], 4, QWEN3_VL_8B)
    calls = []

    class Nat:
        def push_gather_pipelined(self, *a):
            calls.append(("pipelined", a))
            return a[-5] + 2  # the epoch argument sits before (timeout, rows, blocks per SM, fence_sc)

        def push_gather(self, *a):
            calls.append(("items", a))
            return a[-2] + 3  # the epoch argument sits before the timeout

    st = types.SimpleNamespace(calls={}, epoch=5)
    monkeypatch.setitem(push._STATES, "world", st)
    local, out = [torch.randn(plan.rows(0), 8)], torch.randn(plan.total_rows + 3, 8)
    assert push.push_runner(local, plan, None, "concat", out, "push") is None  # nothing validated yet
    key = push._call_key(local, plan, None, "concat", out, "push")
    st.calls[key] = (plan, Nat(), ("pipelined", tuple(range(10, 19)), (19, 4, 0, False)), [out])
    res = push.push_runner(local, plan, None, "concat", out, "push")(local)
    assert calls[-1] == ("pipelined", (local[0], *range(10, 19), 5, 19, 4, 0, False)) and st.epoch == 7
    assert res.shape == (plan.total_rows, 8) and res.data_ptr() == out.data_ptr()
    st.calls[key] = (plan, Nat(), tuple(range(30, 43)), [out])
    push.push_runner(local, plan, None, "concat", out, "push")(local)
    assert calls[-1] == ("items", ([local[0]], *range(30, 42), 7, 42)) and st.epoch == 10
