"""Diagnostic for the push gather (qvdp/dist/push.py): where its time goes.

    python benchmarks/diag_push.py [--worlds 2 4]

Per barrier kind (the CUDA flag barrier of csrc/push.cu, the Triton one, torch symmetric memory's
barrier): host µs per launch (200 launches, no sync) and device µs per barrier when the host is far
ahead (200 barriers queued behind a long sleep kernel, timed by events around them).
Per workload: one call after a barrier (as bench_gather times it) and 20 back-to-back calls per event
pair (steady state), and host µs per call, for push (CUDA; Triton; on relay plans, CUDA with the
pipelined and with the two-stage relay), the NCCL floor and the native gather. (Session 9's runs also
timed a destination-major chunk order and seven copy-kernel launch shapes, since removed from the
library: results/logs/h200x*-s9/diag_push-*.log.)
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import finish_worker, gpu_worlds, init_nccl_worker, slowest_rank_us, spawn_ranks

WIDTH = 16384
WORKLOADS = [("one 720p image", [[1, 44, 80]]), ("skewed 1280^2+3x256^2", [[1, 80, 80]] + [[1, 16, 16]] * 3),
             ("4x720p", [[1, 44, 80]] * 4)]


def _worker(rank, world, port, variants, flush, names, q):
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem
    import qvdp
    from qvdp import plan_shards
    from qvdp.dist import push
    dev = init_nccl_worker(rank, world, port, timeout_s=300)
    cap = max(plan_shards(g, world).total_rows for _, g in WORKLOADS)
    buf = push.symmetric_empty(cap, WIDTH, torch.bfloat16)
    st = push._state(None)
    hdl = symm_mem.rendezvous(buf, dist.group.WORLD.group_name)
    res = {}
    bars = {"flag barrier (CUDA)": lambda: push.flag_barrier(st, "auto"),
            "flag barrier (Triton)": lambda: push.flag_barrier(st, "triton"),
            "torch symm_mem barrier": lambda: hdl.barrier(channel=0)}
    if push._native() is None:
        del bars["flag barrier (CUDA)"]
    for name, fn in bars.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - t0) / 200 * 1e6
        torch.cuda.synchronize()
        dist.barrier()
        torch.cuda.synchronize()
        torch.cuda._sleep(int(2e8))  # ~0.1 s of GPU time: all 200 barriers are queued before the first runs
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(200):
            fn()
        b.record()
        b.synchronize()
        d = torch.tensor([host, a.elapsed_time(b) / 200 * 1e3], device=dev)
        dist.all_reduce(d, op=dist.ReduceOp.MAX)
        res[name] = d.tolist()
        if rank == 0:
            print(f"{world} GPUs {name:28s} host {d[0]:7.1f} us/launch   device {d[1]:7.1f} us/barrier", flush=True)
    try:
        from qvdp.dist.native import gather_rows_native
    except Exception:  # noqa: BLE001
        gather_rows_native = None
    for wname, grid in [w for w in WORKLOADS if not names or w[0] in names]:
        plan = plan_shards(grid, world)
        local = torch.randn(plan.rows(rank), WIDTH, device=dev).to(torch.bfloat16)
        per = -(-plan.total_rows // world)
        fl_in = torch.randn(per, WIDTH, device=dev).to(torch.bfloat16)
        fl_out = torch.empty(world * per, WIDTH, dtype=torch.bfloat16, device=dev)

        def with_impl(impl, **attrs):
            def f():  # push module settings for this call only (part of the fast paths' keys)
                old = {k: getattr(push, k) for k in ["IMPL", *attrs]}
                push.IMPL = impl
                for k, v in attrs.items():
                    setattr(push, k, v)
                try:
                    return qvdp.gather_rows([local], plan, layout="concat", backend="push", out=buf)
                finally:
                    for k, v in old.items():
                        setattr(push, k, v)
            return f
        fns = {"push (CUDA)": with_impl("auto"), "push (Triton)": with_impl("triton")}
        if push.use_relay(plan):
            fns["push (CUDA, relay in two stages)"] = with_impl("auto", PIPELINED_RELAY="0")
        if push._native() is None:
            fns = {k: v for k, v in fns.items() if "CUDA" not in k}
        for v in variants if push._native() is not None and push.pipelined_mode(plan) else ():
            r, b, m, o = (v.split(":") + ["", "", ""])[:4]  # --variants ROWS:BLOCKS_PER_SM[:MARK[:OWN]]
            m, o = m or push.MARK, o or push.OWN_COPY
            name = f"relay {r} rows, {b or 'max'}/SM, {m}, own {o}"
            name += f" #{sum(k.startswith(name) for k in fns) + 1}" if name in fns else ""  # a repeat, timed again
            fns[name] = with_impl(
                "auto", PIECE_ROWS=int(r), BLOCKS_PER_SM=int(b or 0), MARK=m, OWN_COPY=o)
        if gather_rows_native is not None:
            fns["qvdp native (auto)"] = lambda: gather_rows_native([local], plan, None, "concat", "auto")
            fns["qvdp native (auto) into out="] = lambda: gather_rows_native(
                [local], plan, None, "concat", "auto", outs=[buf[:plan.total_rows]])
        if flush:  # one-call figures with the L2 evicted before each call (the source rows cold)
            scratch = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
            for k in [k for k in fns if k.startswith(("push (CUDA)", "qvdp native (auto) into"))]:
                def cold(f=fns[k]):
                    return f()
                cold.pre = scratch.zero_
                fns[k + ", L2 evicted"] = cold
        fns["floor (equal all_gather_into_tensor)"] = lambda: dist.all_gather_into_tensor(fl_out, fl_in)
        one = slowest_rank_us(fns, dev)
        host = {}
        for k, f in fns.items():  # host µs per call: 50 calls enqueued without a sync
            torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(50):
                f()
            host[k] = (time.perf_counter() - t0) / 50 * 1e6
            torch.cuda.synchronize()

        def twenty(fn):
            return lambda: [fn() for _ in range(20)]
        steady = slowest_rank_us({k: twenty(f) for k, f in fns.items()}, dev, warm=2, rep=7)  # (pre dropped)
        res[wname] = {k: (one[k], steady[k] / 20) for k in fns}
        if rank == 0:
            fl = one["floor (equal all_gather_into_tensor)"]
            fls = steady["floor (equal all_gather_into_tensor)"] / 20
            print(f"--- {world} GPUs, {wname}, {plan.total_rows} rows, relay {push.use_relay(plan)}: one call "
                  f"(x floor) | per call of 20 back to back (x floor) | host us per call (rank 0)", flush=True)
            for k in fns:
                print(f"  {k:40s} {one[k]:8.1f} us {one[k] / fl:5.2f}x | {steady[k] / 20:8.1f} us "
                      f"{steady[k] / 20 / fls:5.2f}x | {host[k]:6.1f}", flush=True)
    finish_worker(rank, q, res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", nargs="*", type=int, default=[2, 4])
    ap.add_argument("--variants", nargs="*", default=[],
                    help="pipelined relay variants ROWS:BLOCKS_PER_SM[:MARK[:OWN]] (rows per piece 1-16, resident "
                         "blocks per SM, empty = as many as fit; MARK release or fence: push.MARK; OWN last or "
                         "mixed: push.OWN_COPY), e.g. 16: 4: 4::fence 4::release:last")
    ap.add_argument("--flush", action="store_true", help="also time push and NCCL-into-out with L2 evicted")
    ap.add_argument("--workloads", nargs="*", default=None, help="names of WORKLOADS to run (default all)")
    a = ap.parse_args()
    for w in gpu_worlds(a.worlds):
        spawn_ranks(_worker, w, tuple(a.variants), a.flush, tuple(a.workloads or ()), timeout_s=600)


if __name__ == "__main__":
    main()
